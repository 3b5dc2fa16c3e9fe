"""Pack what the GPU run needs into files small enough to travel (64 MiB per run).

    python -m eval.gpu.pack --cases var/ml-100k-pipeline/cases.json --out eval/gpu/.pack

writes (eval/gpu/.pack is git-ignored; each folder is one `carry` path):
- data/prompts.npz: every prompt tokenised exactly as the service's verbalizer sends it
  (service.training.lora.prompt_messages + encode_prompt over the prepared tokenizer),
  uint16 token ids back to back with offsets, the answer's label index (-1: not in the
  shortlist), the kind (0 train, 1 val, 2 test) and the pass (training prompts once per
  pass, each pass's candidates in a new seeded order, as the CPU trainer's passes);
- data/meta.json: label token ids, pad id, the GGUF's sha256 and parts' sha256;
- data/pylib/: the pure-Python `gguf` package transformers needs for gguf_file=;
- part1/, part2/: the Q4 GGUF of the ranker profile cut in two (~47 MiB each).

`unpack` (run on the GPU machine by run.sh) joins the parts under a folder and checks the
sha256. `--dry-run` keeps a few prompts of each kind (the same script end to end, on CPU).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np

from eval.ranking import RERANK_HISTORY
from service.config import get_settings
from service.llm.prepare import resolve_model_path
from service.offline.datasets import load, sha256_file
from service.prompts import library
from service.training.lora import (
    RankExample,
    encode_prompt,
    label_token_ids,
    prompt_messages,
    shuffled_pass,
)
from service.training.rerank_data import load_cases

PARTS = 2
KIND = {"train": 0, "val": 1, "test": 2}


def split_file(src: Path, out: Path, parts: int = PARTS) -> list[dict[str, Any]]:
    """src cut into `parts` files out/part<i>/<name>.<i>; their sizes and sha256."""
    size = src.stat().st_size
    step = -(-size // parts)
    info = []
    with src.open("rb") as f:
        for i in range(1, parts + 1):
            d = out / f"part{i}"
            d.mkdir(parents=True, exist_ok=True)
            p = d / f"{src.name}.{i}"
            p.write_bytes(f.read(step))
            info.append(
                {"file": f"part{i}/{p.name}", "bytes": p.stat().st_size, "sha256": sha256_file(p)}
            )
    return info


def join_parts(pack: Path, meta: dict[str, Any], dest: Path) -> Path:
    """The parts (found under `pack`) joined into dest/<gguf name>, sha256 checked;
    a complete copy already there is reused."""
    g = meta["gguf"]
    target = dest / g["name"]
    complete = target.exists() and target.stat().st_size == g["bytes"]
    if complete and sha256_file(target) == g["sha256"]:
        return target
    dest.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    with tmp.open("wb") as f:
        for part in g["parts"]:
            p = pack / part["file"]
            if not p.exists():
                p = dest / Path(part["file"]).name  # staged by an earlier run (run.sh --stage)
            if not p.exists():
                raise SystemExit(
                    f"missing GGUF part {part['file']}: carry it (see eval/gpu/README.md)"
                )
            if sha256_file(p) != part["sha256"]:
                raise SystemExit(f"GGUF part {p} does not match its sha256: pack again")
            with p.open("rb") as src:
                shutil.copyfileobj(src, f, 1 << 22)
    if sha256_file(tmp) != g["sha256"]:
        raise SystemExit(f"joined GGUF {tmp} does not match {g['sha256']}")
    tmp.replace(target)
    return target


def encode_cases(
    cases: dict[str, list[Any]], limits: dict[str, int | None], passes: int = 1, seed: int = 0
) -> dict[str, Any]:
    """Every prompt tokenised; the training prompts once per pass, pass e showing each
    prompt's candidates in the order `service.training.lora.shuffled_pass(train, e, seed)`
    gives (as `recsmith train reranker` trains: a new order every pass, against position
    bias). `pass` says which pass a training prompt belongs to (0 for val/test)."""
    # lazy: transformers takes ~3 s to import; only this path needs it
    from transformers import AutoTokenizer

    path = resolve_model_path(get_settings())
    tok = AutoTokenizer.from_pretrained(path)
    products = {p.id: p for p in load("ml-100k").products}
    tokens, offsets, labels, kinds, users, passes_of = [], [0], [], [], [], []
    for kind in ("train", "val", "test"):
        chosen = cases[kind][: limits.get(kind)]
        # The service shows the last RERANK_HISTORY items; the prompt keeps the last 8.
        base = [RankExample(c.history[-RERANK_HISTORY:], c.candidates, c.target) for c in chosen]
        for e in range(passes if kind == "train" else 1):
            for c, ex in zip(chosen, shuffled_pass(base, e, seed), strict=True):
                ids = encode_prompt(tok, prompt_messages(ex, products, 8))
                tokens.extend(ids)
                offsets.append(len(tokens))
                labels.append(ex.label_index if ex.target in ex.candidates else -1)
                kinds.append(KIND[kind])
                users.append(c.user)
                passes_of.append(e)
    if max(tokens) >= 1 << 16:
        raise SystemExit("token ids do not fit uint16")
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    return {
        "arrays": {
            "tokens": np.asarray(tokens, dtype=np.uint16),
            "offsets": np.asarray(offsets, dtype=np.int64),
            "label": np.asarray(labels, dtype=np.int16),
            "kind": np.asarray(kinds, dtype=np.int8),
            "pass": np.asarray(passes_of, dtype=np.int8),
        },
        "label_token_ids": label_token_ids(tok, 20),
        "pad_id": int(pad),
        "model_path": path,
        "users": users,
    }


def pack(cases_path: Path, out: Path, dry_run: bool = False, passes: int = 3) -> dict[str, Any]:
    cases, info = load_cases(cases_path)
    limits: dict[str, int | None] = (
        {"train": 8, "val": 4, "test": 12}
        if dry_run
        else {"train": None, "val": None, "test": None}
    )
    enc = encode_cases(cases, limits, passes)
    data = out / "data"
    shutil.rmtree(out, ignore_errors=True)
    data.mkdir(parents=True)
    np.savez_compressed(data / "prompts.npz", **enc["arrays"])
    man = json.loads((Path(enc["model_path"]) / "manifest.json").read_text())
    gguf = Path(man["gguf_path"])
    parts = split_file(gguf, out)
    # lazy: gguf only for packing the GPU run
    import gguf as gguf_pkg  # the pure-Python reader transformers uses for gguf_file=

    pkg = Path(gguf_pkg.__file__).parent
    shutil.copytree(pkg, data / "pylib" / "gguf", ignore=shutil.ignore_patterns("__pycache__"))
    for dist in pkg.parent.glob("gguf-*.dist-info"):  # transformers checks the version
        shutil.copytree(dist, data / "pylib" / dist.name)
    a = enc["arrays"]
    meta = {
        "dataset": info["dataset"],
        "cases": info,
        "dry_run": dry_run,
        "counts": {k: int(((a["kind"] == v) & (a["pass"] == 0)).sum()) for k, v in KIND.items()},
        "train_passes": passes,
        "hits": {
            k: int(((a["kind"] == v) & (a["label"] >= 0) & (a["pass"] == 0)).sum())
            for k, v in KIND.items()
        },
        "prompt_tokens_mean": float(np.mean(np.diff(a["offsets"]))),
        "label_token_ids": enc["label_token_ids"],
        "pad_id": enc["pad_id"],
        "shortlist": 20,
        "base_model": Path(enc["model_path"]).name,
        "gguf_sha256": man["gguf_sha256"],
        "gguf": {
            "name": gguf.name,
            "bytes": gguf.stat().st_size,
            "sha256": man["gguf_sha256"],
            "parts": parts,
        },
        "template_version": library().version("rank_verbalizer"),
        "pack_sha256": sha256_file(data / "prompts.npz"),
    }
    (data / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="pack / unpack the GPU run's files")
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("pack")
    a.add_argument("--cases", type=Path, default=Path("var/ml-100k-pipeline/cases.json"))
    a.add_argument("--out", type=Path, default=Path("eval/gpu/.pack"))
    a.add_argument("--dry-run", action="store_true")
    a.add_argument(
        "--passes", type=int, default=3, help="training passes packed (run.sh: EPOCHS=3)"
    )
    b = sub.add_parser("stage", help="copy one carried part to the staging folder")
    b.add_argument("--pack", type=Path, default=Path("eval/gpu/.pack"))
    b.add_argument("--part", type=int, required=True)
    b.add_argument("--dest", type=Path, required=True)
    c = sub.add_parser("unpack", help="join the parts into DEST/<name>.gguf (sha256 checked)")
    c.add_argument("--pack", type=Path, default=Path("eval/gpu/.pack"))
    c.add_argument("--dest", type=Path, required=True)
    args = p.parse_args(argv)
    if args.cmd == "pack":
        meta = pack(args.cases, args.out, args.dry_run, args.passes)
        print(json.dumps({k: meta[k] for k in ("counts", "hits", "prompt_tokens_mean")}))
    elif args.cmd == "stage":
        src_dir = args.pack / f"part{args.part}"
        files = list(src_dir.glob("*")) if src_dir.exists() else []
        if not files:
            raise SystemExit(f"nothing to stage in {src_dir}: carry eval/gpu/.pack/part{args.part}")
        args.dest.mkdir(parents=True, exist_ok=True)
        for f in files:
            shutil.copy(f, args.dest / f.name)
        print(f"staged {[f.name for f in files]} in {args.dest}")
    else:
        meta = json.loads((args.pack / "data" / "meta.json").read_text())
        print(join_parts(args.pack, meta, args.dest))
    return 0


if __name__ == "__main__":
    sys.exit(main())
