"""LlamaRec LoRA tuning and evaluation of the verbalizer over a packed prompt set.

Standalone on purpose (torch, transformers, peft, numpy only; no recsmith imports): the
GPU machine has those and nothing else. The prompts arrive already tokenised exactly as the
service's verbalizer sends them (eval/gpu/pack.py over service.training.rerank_data), so
here they are only token ids, the answer's label index, and a kind (train/val/test).

Scoring is the verbalizer's with one window of 20 candidates and one pass: the label
tokens' logits at the position after the prompt, log-softmax over the labels shown, order
by score (ties: served order). Test prompts keep the served (retrieval) order; a user whose
test item is not in the shortlist scores 0 in NDCG@10/Recall@10 whatever the reranker does,
so only the others need the model, and the metrics over ALL users are exact.

Loss (as service.training.lora.label_loss, the CPU trainer's default): at that one
position, the cross-entropy of the answer's label over the labels shown (log-softmax of the
label tokens' logits, the served scoring); `--loss vocab`: full-vocabulary cross-entropy.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

KIND = {"train": 0, "val": 1, "test": 2}


def load_pack(data: Path) -> dict[str, Any]:
    z = np.load(data / "prompts.npz")
    meta = json.loads((data / "meta.json").read_text())
    return {k: z[k] for k in z.files} | {"meta": meta}


def seqs_of(pack: dict[str, Any], idx: np.ndarray) -> list[np.ndarray]:
    t, o = pack["tokens"], pack["offsets"]
    return [t[o[i] : o[i + 1]].astype(np.int64) for i in idx]


def left_pad(seqs: list[np.ndarray], pad: int, device: str) -> tuple[Any, Any, Any]:
    """Left padding, positions counting real tokens only (as the service's backend does)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s) :] = torch.from_numpy(s)
        mask[i, width - len(s) :] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids.to(device), mask.to(device), pos.to(device)


def answer_logits(model: Any, seqs: list[np.ndarray], pad: int, device: str) -> Any:
    ids, mask, pos = left_pad(seqs, pad, device)
    kw = {"input_ids": ids, "attention_mask": mask, "position_ids": pos, "use_cache": False}
    try:
        out = model(**kw, logits_to_keep=1)
    except TypeError:  # an older transformers: full logits (more memory, same answer)
        out = model(**kw)
    return out.logits[:, -1, :].float()


def length_batches(lengths: np.ndarray, idx: np.ndarray, size: int) -> list[np.ndarray]:
    """Prompts of similar length together: less padding per batch."""
    order = idx[np.argsort(lengths[idx], kind="stable")]
    return [order[i : i + size] for i in range(0, len(order), size)]


@torch.inference_mode()
def score(
    model: Any, pack: dict[str, Any], idx: np.ndarray, device: str, batch: int, amp: bool
) -> dict[int, np.ndarray]:
    """prompt index -> log-probabilities over the labels shown."""
    meta = pack["meta"]
    labels = torch.tensor(meta["label_token_ids"], device=device)
    lengths = np.diff(pack["offsets"])
    out: dict[int, np.ndarray] = {}
    model.eval()
    for b in length_batches(lengths, idx, batch):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            lg = answer_logits(model, seqs_of(pack, b), meta["pad_id"], device)
        lp = torch.log_softmax(lg[:, labels], dim=-1).cpu().numpy()
        for i, row in zip(b, lp, strict=True):
            out[int(i)] = row
    return out


def rank_of(scores: np.ndarray, label: int) -> int:
    """1-based rank of the answer; equal scores keep the prompt (served) order."""
    s = scores[label]
    return 1 + int((scores > s).sum()) + int((scores[:label] == s).sum())


def metrics(ranks: list[float], n_users: int) -> dict[str, float]:
    """NDCG@10, Recall@10/20 over n_users (users not listed: the target was missed)."""
    r = np.array(ranks, dtype=np.float64)
    return {
        "ndcg@10": float(np.sum(np.where(r <= 10, 1 / np.log2(r + 1), 0.0)) / n_users),
        "recall@10": float(np.sum(r <= 10) / n_users),
        "recall@20": float(np.sum(r <= 20) / n_users),
        "users": n_users,
    }


def train_passes(pack: dict[str, Any], limit: int = 0) -> list[np.ndarray]:
    """The training prompts' indexes per packed pass (pass e = the same examples with their
    candidates reshuffled, eval/gpu/pack.py); a pack without passes has one."""
    train = pack["kind"] == KIND["train"]
    passes = pack.get("pass", np.zeros(len(train), dtype=np.int8))
    out = []
    for e in range(int(passes[train].max()) + 1 if train.any() else 1):
        idx = np.flatnonzero(train & (passes == e))
        out.append(idx[:limit] if limit else idx)
    return out


def evaluate(
    model: Any | None,
    pack: dict[str, Any],
    kind: str,
    device: str,
    batch: int,
    amp: bool,
    limit: int | None = None,
) -> dict[str, Any]:
    """Test: all users of the pack (shortlist misses count 0); model None = served order.
    Val: ground truth among the candidates (accuracy, NDCG@10)."""
    k, lab = pack["kind"], pack["label"]
    users = np.flatnonzero(k == KIND[kind])
    if limit is not None:
        users = users[:limit]
    hits = users[lab[users] >= 0]
    t0 = time.perf_counter()
    if model is None:
        ranks = [float(lab[i] + 1) for i in hits]
    else:
        sc = score(model, pack, hits, device, batch, amp)
        ranks = [float(rank_of(sc[int(i)], int(lab[i]))) for i in hits]
    res = metrics(ranks, len(users))
    res.update(
        scored_prompts=0 if model is None else len(hits), seconds=round(time.perf_counter() - t0, 1)
    )
    if kind == "val" and ranks:
        res["accuracy"] = float(np.mean(np.array(ranks) == 1))
    return res


def load_model(args: argparse.Namespace, device: str) -> Any:
    # lazy: transformers takes ~3 s to import; only this path needs it
    from transformers import AutoModelForCausalLM

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    if args.gguf:
        g = Path(args.gguf)
        kw: dict[str, Any] = {"gguf_file": g.name}
        src = str(g.parent)
    else:
        kw, src = {}, args.model_dir
    try:
        model = AutoModelForCausalLM.from_pretrained(src, dtype=dtype, **kw)
    except TypeError:  # transformers < 4.56 names it torch_dtype
        model = AutoModelForCausalLM.from_pretrained(src, torch_dtype=dtype, **kw)
    return model.to(device)


def train(
    model: Any, pack: dict[str, Any], args: argparse.Namespace, device: str, log: Any
) -> tuple[Any, dict[str, Any]]:
    # lazy: peft pulls torch + transformers; only training/adapter loading needs it
    from peft import LoraConfig, get_peft_model

    meta = pack["meta"]
    n_layers = int(model.config.num_hidden_layers)
    layers = (
        None
        if not args.layers or args.layers >= n_layers
        else list(range(n_layers - args.layers, n_layers))
    )
    cfg = LoraConfig(
        r=args.rank,
        lora_alpha=2 * args.rank,
        lora_dropout=0.05,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        layers_to_transform=layers,
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, cfg)
    if device == "cuda":  # bf16 base, fp32 adapters: autocast does the mixing
        for p in model.parameters():
            if p.requires_grad:
                p.data = p.data.float()
    labels = torch.tensor(meta["label_token_ids"], device=device)
    per_pass = train_passes(pack, args.train_limit)
    idx = per_pass[0]
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    per_step = args.batch
    steps = args.epochs * math.ceil(len(idx) / per_step)
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / warm if s < warm else max(0.1, 1 - 0.9 * (s - warm) / max(1, steps - warm))
        ),
    )
    rng = np.random.default_rng(args.seed)
    t0, step, losses, stopped = time.perf_counter(), 0, [], "done"
    amp = device == "cuda"
    model.train()
    for epoch in range(args.epochs):
        # pass e's prompts: the same examples, candidates in that pass's shuffled order
        order = rng.permutation(per_pass[epoch % len(per_pass)])
        for s in range(0, len(order), per_step):
            batch = order[s : s + per_step]
            opt.zero_grad(set_to_none=True)
            total = 0.0
            for m in range(0, len(batch), args.micro):
                mb = batch[m : m + args.micro]
                tgt = labels[torch.tensor(pack["label"][mb].astype(np.int64), device=device)]
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                    lg = answer_logits(model, seqs_of(pack, mb), meta["pad_id"], device)
                if args.loss == "vocab":
                    loss = torch.nn.functional.cross_entropy(lg, tgt, reduction="sum")
                else:  # over the label tokens only, as the verbalizer scores
                    lab = torch.log_softmax(lg[:, labels], dim=-1)
                    ans = torch.tensor(pack["label"][mb].astype(np.int64), device=device)
                    loss = -lab[torch.arange(len(mb), device=device), ans].sum()
                (loss / len(batch)).backward()
                total += float(loss.detach())
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            step += 1
            losses.append(total / len(batch))
            el = time.perf_counter() - t0
            if step % max(1, steps // 20) == 0 or step == steps:
                log(f"step {step}/{steps} loss {np.mean(losses[-10:]):.4f} {el:.0f}s")
            if args.minutes and el > args.minutes * 60:
                stopped = "time"
                break
        if stopped == "time":
            break
    info = {
        "prompts": int(len(idx)),
        "epochs": args.epochs,
        "steps": step,
        "total_steps": steps,
        "stopped": stopped,
        "train_s": round(time.perf_counter() - t0, 1),
        "prompts_per_s": round(step * per_step / max(time.perf_counter() - t0, 1e-9), 2),
        "loss_first": losses[0] if losses else None,
        "loss_last": float(np.mean(losses[-10:])) if losses else None,
        "lr": args.lr,
        "loss": args.loss,
        "rank": args.rank,
        "layers": args.layers or "all",
        "batch": per_step,
        "micro": args.micro,
    }
    return model, info


def save_adapter(model: Any, out: Path, meta: dict[str, Any], info: dict[str, Any]) -> None:
    """The peft folder plus the manifest service/ranking/adapter.py checks (format 1, base
    fingerprint = the GGUF's sha256, file checksums): copy it to DATA_DIR/models/reranker-lora."""
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    files = ("adapter_config.json", "adapter_model.safetensors")
    man = {
        "format_version": 1,
        "base_model": meta["base_model"],
        "base_model_path": meta["base_model"],
        "base_fingerprint": f"gguf:{meta['gguf_sha256']}",
        "template": "rank_verbalizer",
        "template_version": meta.get("template_version"),
        "labels": meta["shortlist"],
        "fingerprint": meta["pack_sha256"],
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "sha256": {n: hashlib.sha256((out / n).read_bytes()).hexdigest() for n in files},
    }
    (out / "metrics.json").write_text(json.dumps(info, indent=2) + "\n")
    (out / "manifest.json").write_text(json.dumps(man, indent=2) + "\n")


def markdown(res: dict[str, Any]) -> str:
    rows = res["rows"]
    lines = [
        f"# LLM stage on {res['dataset']}: {res['title']}",
        "",
        f"Run {res['created_at']} on {res['device']}. Test target = each user's last item; "
        f"the shortlist is the served pipeline's top 20 (fitted fusion) in served order; "
        f"{res['test_users']} users, of whom {res['test_hits']} have the target in the shortlist "
        "(only those are scored by the model; the rest count 0, so the metrics are exact over "
        "all users).",
        "",
        "| method | users | NDCG@10 | Recall@10 | Recall@20 | minutes |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        m = r["test"]
        lines.append(
            f"| {r['name']} | {m['users']} | {m['ndcg@10']:.4f} | {m['recall@10']:.4f} | "
            f"{m['recall@20']:.4f} | {m['seconds'] / 60:.1f} |"
        )
    lines += ["", "## Training", "", "```", json.dumps(res.get("training"), indent=1), "```"]
    if res.get("val"):
        lines += ["", "Validation prompts (ground truth among the 20):", "", "```"]
        lines += [json.dumps(res["val"], indent=1), "```"]
    lines += ["", "## Verdict", "", res["verdict"], ""]
    lines += ["## Run", "", "```", " ".join(res["argv"]), "```", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="the pack's data folder (prompts.npz, meta.json)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--gguf", help="the base model as a GGUF file (transformers gguf_file=)")
    src.add_argument("--model-dir", help="the base model as a transformers folder")
    p.add_argument("--out", required=True, help="results folder")
    p.add_argument("--tag", default="gpu")
    p.add_argument("--device", default="auto")
    p.add_argument("--adapter", help="evaluate this saved adapter instead of training one")
    p.add_argument("--no-train", action="store_true", help="untuned and shortlist rows only")
    p.add_argument("--skip-untuned", action="store_true")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--loss", choices=("labels", "vocab"), default="labels")
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--layers", type=int, default=0, help="adapters in the top N blocks (0 = all)")
    p.add_argument("--batch", type=int, default=32, help="prompts per optimizer step")
    p.add_argument("--micro", type=int, default=32, help="prompts per forward pass")
    p.add_argument("--eval-batch", type=int, default=64)
    p.add_argument("--minutes", type=float, default=0, help="stop training after M minutes")
    p.add_argument("--train-limit", type=int, default=0)
    p.add_argument("--test-limit", type=int, default=0)
    p.add_argument("--val-limit", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)
    t_all = time.perf_counter()
    device = (
        args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    )
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t_all:6.0f}s] {msg}", flush=True)

    pack = load_pack(Path(args.data))
    meta = pack["meta"]
    amp = device == "cuda"
    test_limit, val_limit = args.test_limit or None, args.val_limit or None
    log(f"pack: {len(pack['kind'])} prompts; loading the model on {device}")
    t = time.perf_counter()
    model = load_model(args, device)
    load_s = round(time.perf_counter() - t, 1)
    log(f"model loaded in {load_s}s")
    rows = [
        {
            "name": "shortlist (served order)",
            "test": evaluate(None, pack, "test", device, 1, amp, test_limit),
        }
    ]
    if not args.skip_untuned:
        log("untuned verbalizer on the test users")
        rows.append(
            {
                "name": f"verbalizer, untuned ({meta['base_model']})",
                "test": evaluate(model, pack, "test", device, args.eval_batch, amp, test_limit),
            }
        )
    val: dict[str, Any] = {}
    training: dict[str, Any] | None = None
    if args.adapter or not args.no_train:
        if args.adapter:
            # lazy: peft pulls torch + transformers; only training/adapter loading needs it
            from peft import PeftModel

            tuned = PeftModel.from_pretrained(model, args.adapter).merge_and_unload()
            training = (
                json.loads((Path(args.adapter) / "metrics.json").read_text())
                if (Path(args.adapter) / "metrics.json").exists()
                else {"adapter": args.adapter}
            )
            name = f"verbalizer + LoRA ({args.adapter})"
        else:
            val["before"] = evaluate(model, pack, "val", device, args.eval_batch, amp, val_limit)
            passes = train_passes(pack, args.train_limit)
            log(
                f"training on {len(passes[0])} prompts x {args.epochs} epochs "
                f"({len(passes)} packed candidate orders)"
            )
            tuned, training = train(model, pack, args, device, log)
            training["model_load_s"] = load_s
            save_adapter(tuned, Path(args.out) / "reranker-lora", meta, training)
            name = "verbalizer + LoRA (trained in this run)"
        val["after"] = evaluate(tuned, pack, "val", device, args.eval_batch, amp, val_limit)
        log("tuned verbalizer on the test users")
        rows.append(
            {
                "name": name,
                "test": evaluate(tuned, pack, "test", device, args.eval_batch, amp, test_limit),
            }
        )
    base = rows[0]["test"]["ndcg@10"]
    verdicts = []
    for r in rows[1:]:
        d = r["test"]["ndcg@10"] - base
        verdicts.append(
            f"{r['name']}: NDCG@10 {r['test']['ndcg@10']:.4f} vs shortlist {base:.4f} "
            f"({'+' if d >= 0 else ''}{d:.4f}: {'does not lower it' if d >= 0 else 'LOWERS it'})"
        )
    test_users = rows[0]["test"]["users"]
    res = {
        "title": args.tag,
        "dataset": meta["dataset"],
        "device": device,
        "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "test_users": test_users,
        "test_hits": int(round(rows[0]["test"]["recall@20"] * test_users)),
        "rows": rows,
        "val": val,
        "training": training,
        "pack": meta,
        "verdict": "; ".join(verdicts) or "no model rows",
        "argv": [Path(sys.argv[0]).name, *(argv or sys.argv[1:])],
        "wall_s": round(time.perf_counter() - t_all, 1),
        "loadavg": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"{datetime.now(UTC):%Y-%m-%d}-rerank-lora-{args.tag}-{meta['dataset']}"
    stem.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(res))
    log(f"wrote {stem}.json/.md; {res['verdict']}")
    return 0


def paired_main(argv: list[str] | None = None) -> int:
    """CPU fallback when the full test set does not fit the time: the untuned and the tuned
    model score the SAME test users, batch by batch in a seeded random order of the users
    whose target is in the shortlist, one JSON line per user appended to --jsonl as it goes
    (shards --shard i/n split the users), so a run cut short is a random paired sample."""
    # lazy: peft pulls torch + transformers; only training/adapter loading needs it
    from peft import PeftModel

    p = argparse.ArgumentParser(description=paired_main.__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--model-dir", required=True)
    p.add_argument("--adapter", required=True)
    p.add_argument("--jsonl", required=True)
    p.add_argument("--shard", default="0/1")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    pack = load_pack(Path(args.data))
    i, n = (int(x) for x in args.shard.split("/"))
    users = np.flatnonzero(pack["kind"] == KIND["test"])
    hits = users[pack["label"][users] >= 0]
    order = np.random.default_rng(args.seed).permutation(hits)[i::n]
    ns = argparse.Namespace(gguf=None, model_dir=args.model_dir)
    base = load_model(ns, "cpu")
    tuned = PeftModel.from_pretrained(load_model(ns, "cpu"), args.adapter).merge_and_unload()
    done = set()
    out = Path(args.jsonl)
    if out.exists():
        done = {json.loads(line)["prompt"] for line in out.read_text().splitlines() if line}
    todo = [int(x) for x in order if int(x) not in done]
    with out.open("a") as f:
        for s in range(0, len(todo), args.batch):
            b = np.array(todo[s : s + args.batch])
            sc = {k: score(m, pack, b, "cpu", args.batch, False) for k, m in
                  (("untuned", base), ("tuned", tuned))}  # fmt: skip
            for x in b:
                lab = int(pack["label"][x])
                ranks = {k: rank_of(v[int(x)], lab) for k, v in sc.items()}
                f.write(json.dumps({"prompt": int(x), "shortlist": lab + 1, **ranks}) + "\n")
            f.flush()
    return 0


def summarize_paired(paths: list[str], data: str) -> dict[str, Any]:
    """Rows over the users scored so far (paired) and, when every hit is scored, all users."""
    pack = load_pack(Path(data))
    users = np.flatnonzero(pack["kind"] == KIND["test"])
    hits = int((pack["label"][users] >= 0).sum())
    rows = [json.loads(x) for p in paths for x in Path(p).read_text().splitlines() if x]
    seen = {r["prompt"]: r for r in rows}
    res: dict[str, Any] = {"test_users": len(users), "test_hits": hits, "scored": len(seen)}
    for k in ("shortlist", "untuned", "tuned"):
        ranks = [float(r[k]) for r in seen.values()]
        # Over the scored hits; extrapolated to all users by the hit rate (exact when all
        # hits are scored: the others count 0).
        on_hits = metrics(ranks, max(len(ranks), 1))
        res[k] = {
            "on_scored_hits": on_hits,
            "all_users_estimate": {m: v * hits / len(users) for m, v in on_hits.items()
                                   if m != "users"},
        }  # fmt: skip
    d = [
        (1 / np.log2(r["tuned"] + 1) if r["tuned"] <= 10 else 0)
        - (1 / np.log2(r["shortlist"] + 1) if r["shortlist"] <= 10 else 0)
        for r in seen.values()
    ]
    res["tuned_minus_shortlist_ndcg_on_hits"] = {
        "mean": float(np.mean(d)) if d else None,
        "se": float(np.std(d, ddof=1) / np.sqrt(len(d))) if len(d) > 1 else None,
    }
    return res


if __name__ == "__main__":
    if sys.argv[1:2] == ["paired"]:
        sys.exit(paired_main(sys.argv[2:]))
    if sys.argv[1:2] == ["summarize"]:
        print(json.dumps(summarize_paired(sys.argv[3:], sys.argv[2]), indent=2))
        sys.exit(0)
    sys.exit(main())
