"""MiniLM vs multilingual-e5-small, by the numbers: demo queries and the ML-100k content row.

    python -m eval.bench_encoders [--encoders default,e5-small] [--no-ml100k] [--out FILE]

(a) The demo catalogue (service/demo): 6 Chinese queries, each describing one of the 6
    Chinese products; 6 more in words that share no character pair with their product
    (only the encoder can find those); 3 Chinese queries for English-only products
    (cross-lingual); 22 English queries with an obvious right product set. Per encoder:
    hit@3 and MRR of the dense ranking alone and of the service's hybrid shortlist
    (dense + BM25, as `recsmith search` runs it), and BM25 alone (encoder-independent).
(b) MovieLens-100k, the "content only" baseline of eval/ranking.py (mean of the last 10
    item embeddings), run alone per encoder with the harness's own split and metrics.
Encode speed: texts/s of the demo product texts, no cache, this process's torch threads.
`e5-small` needs `recsmith models prepare --encoder e5-small` first.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from eval.baselines import ContentMean
from eval.ranking import evaluate_baseline, sample_rows
from service.catalog.ingest import ingest_file
from service.catalog.models import Product
from service.config import Settings
from service.offline.datasets import load
from service.offline.split import leave_last_two_out
from service.recsmith import Recsmith
from service.retrieval.encoder import get_encoder
from service.retrieval.lexical import LexicalIndex
from service.retrieval.retriever import RetrievalRequest

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "service" / "demo"

ZH = {  # query → the product it describes (no query copies its product's title)
    "煮米饭的电饭锅": {"kit-zh-01"},
    "炒菜用的铁锅": {"kit-zh-02"},
    "送礼用的功夫茶具": {"cof-zh-01"},
    "杭州的龙井绿茶": {"cof-zh-02"},
    "真丝枕套": {"bed-zh-01"},
    "学生看书用的护眼台灯": {"lig-zh-01"},
}
ZH_PARAPHRASE = {  # the same products in words that share no bigram with them: BM25 is blind
    "煮粥的锅具": {"kit-zh-01"},
    "中式炒菜锅": {"kit-zh-02"},
    "泡茶的瓷器礼物": {"cof-zh-01"},
    "春天采摘的新茶": {"cof-zh-02"},
    "丝绸枕头套": {"bed-zh-01"},
    "书桌照明灯": {"lig-zh-01"},
}
ZH_TO_EN = {  # Chinese queries for products described only in English
    "推荐一款咖啡机": {"cof-0001", "cof-0002", "cof-0003", "cof-0004", "cof-0011"},
    "防水登山夹克": {"out-0001", "out-0002", "out-0004", "out-0003"},
    "降噪耳机": {"aud-0001", "aud-0002", "aud-0003", "aud-0005"},
}
EN = {
    "a machine to make espresso at home": {"cof-0001", "cof-0002", "cof-0003", "cof-0004"},
    "grinder for coffee beans": {"cof-0007", "cof-0008"},
    "kettle for pour over coffee": {"cof-0009"},
    "loose leaf black tea for breakfast": {"cof-0013"},
    "cast iron skillet": {"kit-0001", "kit-0002"},
    "sharp japanese knife": {"kit-0007", "kit-0006"},
    "something to weigh flour": {"kit-0014"},
    "rain jacket for hiking": {"out-0001", "out-0002", "out-0003", "out-0004"},
    "tent for backpacking with a friend": {"out-0006"},
    "warm sleeping bag for winter camping": {"out-0010"},
    "shoes for running on trails": {"run-0005", "run-0006", "run-0007"},
    "watch that tracks my runs": {"run-0008"},
    "headphones that block out noise on a plane": {"aud-0001", "aud-0002", "aud-0003", "aud-0005"},
    "speaker for the beach": {"aud-0009"},
    "record player": {"aud-0011"},
    "microphone for podcasting": {"aud-0012"},
    "desk you can stand at": {"off-0001", "off-0002"},
    "comfortable chair for back pain while working": {"off-0003"},
    "bed for an old dog with sore joints": {"pet-0001", "pet-0002", "pet-0003"},
    "something to keep the cat drinking water": {"pet-0010"},
    "monitor for a baby's room": {"bab-0006", "bab-0007"},
    "pushchair for rough paths": {"bab-0004"},
}
GROUPS = {"zh": ZH, "zh-paraphrase": ZH_PARAPHRASE, "zh→en": ZH_TO_EN, "en": EN}
SAMPLES = [
    "煮米饭的电饭锅",
    "送礼用的功夫茶具",
    "春天采摘的新茶",
    "推荐一款咖啡机",
    "sharp japanese knife",
    "speaker for the beach",
    "comfortable chair for back pain while working",
]


def first_hit(ranked: list[str], relevant: set[str]) -> int:
    """1-based rank of the first relevant id; 0 when none."""
    return next((i + 1 for i, p in enumerate(ranked) if p in relevant), 0)


def scores(ranks: list[int]) -> dict[str, float]:
    return {
        "hit@3": round(float(np.mean([0 < r <= 3 for r in ranks])), 3),
        "mrr": round(float(np.mean([1 / r if r else 0.0 for r in ranks])), 3),
    }


def demo_run(encoder_model: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        rs = Recsmith(Settings(data_dir=Path(tmp), encoder_model=encoder_model))
        ingest_file(rs.store, DEMO / "products.jsonl", "products")
        ingest_file(rs.store, DEMO / "interactions.jsonl", "interactions")
        t0 = time.perf_counter()
        rs.sync_index()
        index_s = time.perf_counter() - t0
        enc = rs.encoder
        texts = [p.embedding_text() for p in rs.store.iter_products()]
        enc.encode_uncached(texts[:16])  # warm-up
        t0 = time.perf_counter()
        enc.encode_uncached(texts)
        speed = len(texts) / (time.perf_counter() - t0)
        out: dict[str, Any] = {
            "model_id": enc.model_id,
            "family": enc.spec.family,
            "texts_per_s": round(speed, 1),
            "index_s": round(index_s, 1),
            "groups": {},
            "samples": {},
        }
        titles = {p.id: p.title for p in rs.store.iter_products()}
        for group, queries in GROUPS.items():
            dense_r, hybrid_r, lex_r = [], [], []
            for q, rel in queries.items():
                qv = enc.encode_queries([q])[0]
                dense = [p for p, _ in rs.dense.search(qv, 20)]
                hybrid = [c.product_id for c in rs.candidates(RetrievalRequest(query=q, k=20))]
                lex = [p for p, _ in rs.lexical.search(q, 20)]
                dense_r.append(first_hit(dense, rel))
                hybrid_r.append(first_hit(hybrid, rel))
                lex_r.append(first_hit(lex, rel))
                if q in SAMPLES:
                    out["samples"][q] = {
                        "dense": [f"{p} {titles[p]}" for p in dense[:3]],
                        "hybrid": [f"{p} {titles[p]}" for p in hybrid[:3]],
                    }
            out["groups"][group] = {
                "n": len(queries),
                "dense": scores(dense_r),
                "hybrid": scores(hybrid_r),
                "bm25": scores(lex_r),
                "hybrid_ranks": hybrid_r,
            }
        return out


def lexical_before_after() -> dict[str, Any]:
    """BM25 alone, the format-1 index (unicode61 only, as before the CJK table) vs now,
    on the demo catalogue: no model involved."""
    products = [Product(**json.loads(x)) for x in (DEMO / "products.jsonl").open()]
    db = sqlite3.connect(":memory:")
    db.execute(
        "CREATE VIRTUAL TABLE docs USING fts5(id UNINDEXED, title, brand, category, "
        "description, tags, tokenize='porter unicode61 remove_diacritics 2')"
    )
    db.executemany(
        "INSERT INTO docs VALUES (?, ?, ?, ?, ?, ?)",
        [(p.id, p.title, p.brand, p.category, p.description, " ".join(p.tags)) for p in products],
    )

    def before(q: str) -> list[str]:  # the format-1 LexicalIndex.search, verbatim
        terms = [t for t in re.findall(r"\w+", q.lower()) if len(t) > 1 or not t.isascii()]
        if not terms:
            return []
        match = " OR ".join(f'"{t}"' for t in dict.fromkeys(terms))
        sql = (
            "SELECT id, bm25(docs, 0.0, 6.0, 2.0, 2.0, 1.0, 3.0) AS s FROM docs "
            "WHERE docs MATCH ? ORDER BY s LIMIT 20"
        )
        return [r[0] for r in db.execute(sql, (match,))]

    with tempfile.TemporaryDirectory() as tmp:
        lex = LexicalIndex(Path(tmp) / "lexical.sqlite")
        lex.upsert(products)
        out = {}
        for group, queries in GROUPS.items():
            old = {q: before(q) for q in queries}
            new = {q: [p for p, _ in lex.search(q, 20)] for q in queries}
            out[group] = {
                "before": scores([first_hit(old[q], r) for q, r in queries.items()]),
                "after": scores([first_hit(new[q], r) for q, r in queries.items()]),
                "identical_top20_lists": sum(old[q] == new[q] for q in queries),
                "n": len(queries),
            }
        return out


def content_row(encoder_model: str, kind: str = "passage") -> dict[str, Any]:
    """The ML-100k content-only baseline with one encoder (the harness's split, metrics)."""
    s = Settings()
    cache = s.data_dir / "cache" / "embeddings.sqlite"
    enc = get_encoder(
        encoder_model,
        s.encoder_batch_size,
        s.encoder_max_length,
        str(cache),
        s.encoder_small_batch,
        s.encoder_runtime,  # as served: "+int8" runs on ONNX Runtime's int8
        s.encoder_onnx_threads,
    )
    ds = load("ml-100k")
    split = leave_last_two_out(ds, "item_id")
    rows = sample_rows(len(split.users), None, 0)
    t0 = time.perf_counter()
    vecs = np.asarray(enc.encode([p.embedding_text() for p in ds.products], kind=kind))
    embed_s = time.perf_counter() - t0
    vecs /= np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
    label = f"{'MiniLM' if enc.spec.family == 'minilm' else 'e5-small'}, {kind}"
    label += ", int8" if "int8" in enc.model_id else ""
    res = evaluate_baseline(ContentMean(vecs, encoder=label), split, rows)
    return {"name": res.name, "users": res.users, "test": res.test, "embed_s": round(embed_s, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--encoders", default="default,e5-small")
    ap.add_argument("--no-ml100k", action="store_true")
    ap.add_argument("--no-demo", action="store_true")
    ap.add_argument("--out", type=Path, default=None, help="JSON result file")
    args = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    result: dict[str, Any] = {"uptime_before": load, "demo": {}, "ml100k": []}
    result["bm25_before_after"] = lexical_before_after()
    print(json.dumps(result["bm25_before_after"], ensure_ascii=False))
    for name in [] if args.no_demo else args.encoders.split(","):
        result["demo"][name] = demo_run(name)
        print(json.dumps({name: result["demo"][name]["groups"]}, ensure_ascii=False))
    if not args.no_ml100k:
        for name in args.encoders.split(","):
            kinds = ["passage", "query"] if "e5" in name else ["passage"]
            for kind in kinds:
                row = content_row(name, kind)
                result["ml100k"].append(row)
                print(json.dumps(row))
    result["uptime_after"] = subprocess.run(
        ["uptime"], capture_output=True, text=True
    ).stdout.strip()
    text = json.dumps(result, ensure_ascii=False, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    else:
        print(text)


if __name__ == "__main__":
    main()
