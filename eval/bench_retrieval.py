"""Benchmark: encoder throughput vs sentence-transformers, and retrieval latency at 10k/100k.

    .venv/bin/python -m eval.bench_retrieval [--texts 512] [--queries 300]

Both encoders run side by side in one process on the same texts and batch size, so the
ratio is meaningful on a noisy machine. Retrieval latency uses random unit vectors (the
cost of exact search does not depend on what the vectors mean) and the real DenseIndex,
filters and fusion code.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import date
from pathlib import Path

import numpy as np

from service.catalog.models import Product
from service.retrieval.dense import DenseIndex
from service.retrieval.encoder import Encoder, default_encoder_path
from service.retrieval.filters import Filters, ProductMeta

RESULTS = Path(__file__).resolve().parent / "results"
DEMO = Path(__file__).resolve().parent.parent / "service" / "demo" / "products.jsonl"


def demo_texts(n: int) -> list[str]:
    products = [Product.model_validate_json(x) for x in DEMO.read_text().splitlines() if x.strip()]
    texts = [p.embedding_text() for p in products]
    return [texts[i % len(texts)] + ("" if i < len(texts) else f" (variant {i})") for i in range(n)]


def bench_encoder(n: int, batch_size: int = 64) -> dict[str, float]:
    # lazy: optional reference library, only for this benchmark
    from sentence_transformers import SentenceTransformer

    texts = demo_texts(n)
    ours = Encoder("default", batch_size=batch_size, max_length=256)
    st = SentenceTransformer(default_encoder_path(), device="cpu")
    st.max_seq_length = 256
    ours.encode(texts[:32])  # warm-up both
    st.encode(texts[:32], batch_size=batch_size)
    rounds: dict[str, list[float]] = {"recsmith": [], "sentence_transformers": []}
    for _ in range(2):  # alternate so drift on a shared machine hits both
        t = time.perf_counter()
        a = ours.encode(texts)
        rounds["recsmith"].append(time.perf_counter() - t)
        t = time.perf_counter()
        b = st.encode(texts, batch_size=batch_size, normalize_embeddings=True)
        rounds["sentence_transformers"].append(time.perf_counter() - t)
    cos = float((a * b).sum(1).min())
    ours_tps = n / min(rounds["recsmith"])
    st_tps = n / min(rounds["sentence_transformers"])
    return {
        "texts": n,
        "batch_size": batch_size,
        "recsmith_texts_per_s": round(ours_tps, 1),
        "sentence_transformers_texts_per_s": round(st_tps, 1),
        "ratio": round(ours_tps / st_tps, 3),
        "min_cosine_agreement": round(cos, 6),
    }


def bench_dense(
    n: int, queries: int, dim: int = 384, seed: int = 0, kinds: tuple[str, ...] = ("exact",)
) -> dict[str, object]:
    rng = np.random.default_rng(seed)
    vecs = rng.standard_normal((n, dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    ids = [f"p{i}" for i in range(n)]
    meta = ProductMeta()
    cats = [f"cat{i % 20}" for i in range(n)]
    meta.update(
        [
            Product(id=i, title="x", category=c, price=float(j % 300), in_stock=j % 10 != 0)
            for j, (i, c) in enumerate(zip(ids, cats, strict=True))
        ]
    )
    qs = rng.standard_normal((queries, dim)).astype(np.float32)
    qs /= np.linalg.norm(qs, axis=1, keepdims=True)
    f = Filters(categories=["cat3", "cat7"], max_price=150, in_stock_only=True)
    out: dict[str, object] = {"items": n}
    exact_top: dict[str, list[set[str]]] = {}
    for kind in kinds:  # "exact" first: the others are scored against it
        index = DenseIndex(dim, kind=kind)
        index.upsert(ids, vecs)
        t = time.perf_counter()
        index.search(vecs[0], 10)  # builds the HNSW graph on first use
        build_s = time.perf_counter() - t
        for name, filt in (("unfiltered", None), ("filtered", f)):
            lat, tops = [], []
            for q in qs:
                t = time.perf_counter()
                mask = meta.mask(index.ids, filt, set()) if filt else None
                hits = index.search(q, 60, mask)
                lat.append((time.perf_counter() - t) * 1000)
                tops.append({h for h, _ in hits})
            row: dict[str, float] = {
                "p50_ms": round(float(np.percentile(lat, 50)), 3),
                "p99_ms": round(float(np.percentile(lat, 99)), 3),
            }
            if kind == "exact":
                exact_top[name] = tops
            else:
                pairs = zip(exact_top[name], tops, strict=True)
                row["recall_at_60_vs_exact"] = round(
                    float(np.mean([len(a & b) / max(len(a), 1) for a, b in pairs])), 4
                )
                row["build_s"] = round(build_s, 1)
            out[f"{kind}_{name}"] = row
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--texts", type=int, default=512)
    ap.add_argument("--queries", type=int, default=300)
    args = ap.parse_args()
    result = {
        "command": f"python -m eval.bench_retrieval --texts {args.texts} --queries {args.queries}",
        "date": date.today().isoformat(),
        "encoder": bench_encoder(args.texts),
        "dense": [
            bench_dense(10_000, args.queries),
            bench_dense(100_000, args.queries, kinds=("exact", "faiss")),
        ],
    }
    print(json.dumps(result, indent=2))
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"{result['date']}-retrieval"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    e = result["encoder"]
    lines = [
        f"# Retrieval benchmark ({result['date']})",
        "",
        f"Command: `{result['command']}`",
        "",
        "| encoder | texts/s |",
        "|---|---|",
        f"| recsmith Encoder (mean pooling) | {e['recsmith_texts_per_s']} |",
        f"| sentence-transformers encode | {e['sentence_transformers_texts_per_s']} |",
        f"| **ratio** | **{e['ratio']}** (goal ≥ 1.0) |",
        "",
        f"Vectors agree: min cosine {e['min_cosine_agreement']}.",
        "",
        "| items | unfiltered p50 / p99 ms | filtered p50 / p99 ms |",
        "|---|---|---|",
    ]
    for d in result["dense"]:
        u, f = d["unfiltered"], d["filtered"]
        lines.append(
            f"| {d['items']:,} | {u['p50_ms']} / {u['p99_ms']} | {f['p50_ms']} / {f['p99_ms']} |"
        )
    lines += [
        "",
        "Exact search, top-60, 384-d float32, 2 CPU cores shared with other work. "
        "Goal: p50 ≤ 5 ms at 100k.",
    ]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
