"""Is ONNX Runtime a faster float encoder than torch eager for ONE short text, on ONE thread?

    HF_HUB_OFFLINE=1 python -m eval.bench_encoder_runtime [--rounds 40] [--model e5-small]
        [--ids lig-0013,fit-0012,off-0004,bed-zh-01,cof-0014] [--out FILE.json]

The prepared multilingual-e5-small folder is exported once to ONNX (torch.onnx.export, the
TorchScript exporter: dynamo=False; dynamic batch and sequence axes) into a temporary folder,
and, where `onnxruntime.transformers.optimizer` imports, fused by it (model_type "bert",
12 heads, hidden 384) into a second file. Then, per round and per text, interleaved (the
variants' order rotates every round so the machine's load falls on all alike):

- torch: `Encoder.encode_uncached([text])`, the service's own path for a small batch (its
  thread pinned to one torch intra-op thread; tokenise, forward, masked mean, L2 normalise);
- ort / ort-fused: the same tokeniser call, `InferenceSession.run` (intra_op_num_threads=1,
  inter_op_num_threads=1, ORT_ENABLE_ALL, sequential), the same masked mean + normalise in
  numpy.

Texts are demo products' `Product.embedding_text()` with the e5 "passage: " prefix (70-89
tokens). Reports p50/p90 ms per variant and the vector agreement with torch (max |diff|,
minimum cosine) over the texts.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from service.catalog.models import Product
from service.retrieval import encoder_onnx
from service.retrieval.encoder import Encoder, resolve_encoder

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "service" / "demo" / "products.jsonl"
IDS = "lig-0013,fit-0012,off-0004,bed-zh-01,cof-0014"


def fuse(src: Path, out: Path, heads: int, hidden: int) -> Path | None:
    """ORT's transformer optimizer (attention, LayerNorm, GELU fusions); None if unavailable."""
    try:
        from onnxruntime.transformers.optimizer import optimize_model
    except Exception as e:  # noqa: BLE001 - report and go on without it
        print(f"onnxruntime.transformers.optimizer unavailable: {e!r}")
        return None
    opt = optimize_model(str(src), model_type="bert", num_heads=heads, hidden_size=hidden)
    print("fusions:", opt.get_fused_operator_statistics())
    opt.save_model_to_file(str(out))
    return out


def ort_encode(sess: Any, tokenizer: Any, texts: list[str], max_length: int) -> np.ndarray:
    """Encoder._forward_onnx's steps without the encoder's thread."""
    batch = tokenizer(
        texts, padding=True, truncation=True, max_length=max_length, return_tensors="np"
    )
    return encoder_onnx.forward(sess, batch)


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--model", default="e5-small")
    ap.add_argument("--ids", default=IDS, help="demo product ids whose texts are encoded")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--no-fused", action="store_true", help="skip the optimizer's variants")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    import onnxruntime as ort

    model_dir = resolve_encoder(args.model)
    products = {p.id: p for p in (Product(**json.loads(x)) for x in DEMO.open())}
    ids = args.ids.split(",")
    enc = Encoder(model_dir, small_batch=4)  # the service's small-batch path, one thread
    texts = [enc.spec.prefix("passage") + products[i].embedding_text() for i in ids]
    tokens = [len(enc.tokenizer(t)["input_ids"]) for t in texts]
    print(
        "texts:",
        dict(zip(ids, tokens, strict=True)),
        "tokens; torch threads on the encoder's thread:",
        enc.small_batch_threads(),
    )

    tmp = Path(tempfile.mkdtemp(prefix="enc-onnx-"))
    try:
        t0 = time.perf_counter()
        plain = encoder_onnx.export_onnx(model_dir, tmp / "model.onnx")
        export_s = time.perf_counter() - t0
        cfg = enc.model.config
        t0 = time.perf_counter()
        fused = fused_eager = None
        if not args.no_fused:
            heads, hidden = cfg.num_attention_heads, cfg.hidden_size
            fused = fuse(plain, tmp / "model-fused.onnx", heads, hidden)
            eager = encoder_onnx.export_onnx(model_dir, tmp / "eager.onnx", attention="eager")
            fused_eager = fuse(eager, tmp / "model-eager-fused.onnx", heads, hidden)
        fuse_s = time.perf_counter() - t0
        print(f"export {export_s:.1f} s, fuse {fuse_s:.1f} s")
        # The served path: RECSMITH_ENCODER_RUNTIME=onnx (exports into the model folder once).
        t0 = time.perf_counter()
        served = Encoder(model_dir, small_batch=4, runtime="onnx")
        served_load_s = time.perf_counter() - t0

        runners: dict[str, Any] = {"torch": lambda t: enc.encode_uncached([t])[0]}
        sessions = {"ort": encoder_onnx.session(plain)}
        if fused is not None:
            sessions["ort-fused"] = encoder_onnx.session(fused)
        if fused_eager is not None:
            sessions["ort-eager-fused"] = encoder_onnx.session(fused_eager)
        for name, sess in sessions.items():
            runners[name] = lambda t, s=sess: ort_encode(s, enc.tokenizer, [t], enc.max_length)[0]
        runners["encoder-onnx"] = lambda t: served.encode_uncached([t])[0]

        # Agreement with torch: each text alone, and all of them (plus one text past
        # max_length, truncated) as one padded batch.
        long_text = " ".join(texts * 3)
        batch = [*texts, long_text]
        ref = {t: runners["torch"](t) for t in texts}
        ref_batch = enc.encode_uncached(batch)
        agree: dict[str, dict[str, float]] = {}
        for name, sess in sessions.items():
            diffs, coss = [], []
            for t in texts:
                v = runners[name](t)
                diffs.append(float(np.abs(v - ref[t]).max()))
                coss.append(float(v @ ref[t]))
            vb = ort_encode(sess, enc.tokenizer, batch, enc.max_length)
            agree[name] = {
                "max_abs_diff": max(diffs),
                "min_cosine": min(coss),
                "padded_batch_max_abs_diff": float(np.abs(vb - ref_batch).max()),
                "padded_batch_min_cosine": float((vb * ref_batch).sum(1).min()),
            }
        served_v = [runners["encoder-onnx"](t) for t in texts]
        assert served.onnx_calls == len(texts), "the served encoder did not use ONNX Runtime"
        pairs = list(zip(served_v, texts, strict=True))
        agree["encoder-onnx"] = {
            "max_abs_diff": max(float(np.abs(v - ref[t]).max()) for v, t in pairs),
            "min_cosine": min(float(v @ ref[t]) for v, t in pairs),
        }
        print("agreement:", agree)

        names = list(runners)
        for _ in range(args.warmup):
            for name in names:
                for t in texts:
                    runners[name](t)
        times: dict[str, list[float]] = {n: [] for n in names}
        load = [os.getloadavg()[0]]
        for r in range(args.rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for t in texts:
                for name in order:
                    s = time.perf_counter()
                    runners[name](t)
                    times[name].append((time.perf_counter() - s) * 1000)
            if r % 10 == 9:
                load.append(os.getloadavg()[0])
        # Paired: torch's time over the variant's for the same text in the same round.
        paired = {
            n: round(statistics.median(a / b for a, b in zip(times["torch"], v, strict=True)), 2)
            for n, v in times.items()
            if n != "torch"
        }
        result = {
            "texts": dict(zip(ids, tokens, strict=True)),
            "rounds": args.rounds,
            "onnxruntime": ort.__version__,
            "load_1min": load,
            "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
            "export_s": round(export_s, 1),
            "served_encoder_load_s": round(served_load_s, 1),
            "agreement": agree,
            "ms": {
                n: {
                    "p50": round(statistics.median(v), 2),
                    "p90": round(pct(v, 0.9), 2),
                    "mean": round(statistics.fmean(v), 2),
                    "n": len(v),
                }
                for n, v in times.items()
            },
        }
        t50 = result["ms"]["torch"]["p50"]
        for n in paired:
            result["ms"][n]["speedup_p50"] = round(t50 / result["ms"][n]["p50"], 2)
            result["ms"][n]["speedup_paired_median"] = paired[n]
        print(json.dumps(result, indent=1, ensure_ascii=False))
        if args.out:
            args.out.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
