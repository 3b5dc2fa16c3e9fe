"""The in-process dense index past `ivf_threshold`: an IVF over 8-bit codes whose answers
match exact search (recall@10 >= 0.95), selective filters scored exactly, never a
filtered-out or removed row, appends found, below the threshold the flat scan as before."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np

from service.config import Settings
from service.recsmith import Recsmith
from service.retrieval.dense import DenseIndex
from tests.eval.fakes import HashEncoder

DIM = 48
N = 5000


def clustered(n: int = N, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(40, DIM))
    vecs = centres[rng.integers(0, 40, n)] + 0.9 * rng.normal(size=(n, DIM))
    return (vecs / np.linalg.norm(vecs, axis=1, keepdims=True)).astype(np.float32)


def queries(vecs: np.ndarray, m: int = 40, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    qs = vecs[rng.integers(0, len(vecs), m)] + 0.05 * rng.normal(size=(m, DIM))
    return (qs / np.linalg.norm(qs, axis=1, keepdims=True)).astype(np.float32)


def exact(vecs: np.ndarray, q: np.ndarray, mask: np.ndarray | None, k: int = 10) -> list[str]:
    scores = vecs @ q
    if mask is not None:
        scores = np.where(mask, scores, -np.inf)
    top = np.argsort(-scores, kind="stable")[:k]
    return [f"p{i}" for i in top if np.isfinite(scores[i])]


def ivf_index(vecs: np.ndarray, **kw: int) -> DenseIndex:
    ix = DenseIndex(DIM, faiss_threshold=500, ivf_threshold=1000, ivf_nprobe=8, **kw)
    ix.upsert([f"p{i}" for i in range(len(vecs))], vecs)
    return ix


def recall(ix: DenseIndex, vecs: np.ndarray, mask: np.ndarray | None = None) -> float:
    got = []
    for q in queries(vecs):
        want = set(exact(vecs, q, mask))
        got.append(len(want & {h for h, _ in ix.search(q, 10, mask)}) / len(want))
    return float(np.mean(got))


def test_ivf_recall_against_exact_search() -> None:
    vecs = clustered()
    ix = ivf_index(vecs)
    assert recall(ix, vecs) >= 0.95
    assert isinstance(ix._faiss, faiss.IndexIVFScalarQuantizer)
    assert ix._faiss.nlist == int(4 * np.sqrt(N))
    # it reads a fraction of the lists: the answer is not the full scan's by construction
    assert ix.ivf_nprobe < ix._faiss.nlist // 4


def test_selective_filter_is_the_exact_answer_without_codes() -> None:
    vecs = clustered()
    ix = ivf_index(vecs)
    mask = np.zeros(N, dtype=bool)
    mask[np.random.default_rng(3).choice(N, 150, replace=False)] = True  # 3 %
    for q in queries(vecs):
        hits = ix.search(q, 10, mask)
        assert [h for h, _ in hits] == exact(vecs, q, mask)
        for h, score in hits:
            assert abs(score - float(vecs[int(h[1:])] @ q)) < 1e-5
    assert ix._faiss is None  # no IVF was needed for it


def test_broad_filter_on_the_ivf_respects_filter_and_removals() -> None:
    vecs = clustered()
    ix = ivf_index(vecs)
    ix.search(vecs[0], 10)  # the IVF is built before the removals
    removed = {f"p{i}" for i in range(0, N, 7)}
    ix.remove(sorted(removed))
    alive = np.array([f"p{i}" not in removed for i in range(N)])
    for share in (0.4, 0.1):
        mask = np.random.default_rng(4).random(N) < share
        allowed = {f"p{i}" for i in np.flatnonzero(mask & alive)}
        assert recall(ix, vecs, mask & alive) >= 0.95
        for q in queries(vecs):
            hits = [h for h, _ in ix.search(q, 10, mask)]
            assert len(hits) == 10 and set(hits) <= allowed
    assert isinstance(ix._faiss, faiss.IndexIVFScalarQuantizer)
    for q in queries(vecs):  # unfiltered, with dead rows in the lists
        assert not {h for h, _ in ix.search(q, 10)} & removed


def test_appends_and_moves_after_build_are_found() -> None:
    vecs = clustered()
    ix = ivf_index(vecs)
    ix.search(vecs[0], 10)
    built = ix._faiss
    new = clustered(20, seed=9)
    ix.upsert([f"n{i}" for i in range(20)], new)
    ix.upsert(["p5"], new[:1] * -1)  # p5 moves far from where it was
    assert ix._faiss is built and built.ntotal == N + 21  # added, not rebuilt
    for i in range(20):
        assert ix.search(new[i], 1)[0][0] == f"n{i}"
    assert ix.search(-new[0], 1)[0][0] == "p5"
    assert "p5" not in {h for h, _ in ix.search(vecs[5], 10)}


def test_below_the_ivf_threshold_the_flat_scan_is_unchanged() -> None:
    vecs = clustered(900)
    ix = ivf_index(vecs)  # 900 rows: past faiss_threshold, under ivf_threshold
    mask = np.zeros(900, dtype=bool)
    mask[::40] = True
    ix.search(vecs[0], 10, mask)
    assert type(ix._faiss) is faiss.IndexScalarQuantizer
    assert recall(ix, vecs) == 1.0


def test_the_ivf_is_rebuilt_after_load(tmp_path: Path) -> None:
    vecs = clustered()
    ivf_index(vecs).save(tmp_path, "m")
    ix = DenseIndex.load(tmp_path, DIM, "m", faiss_threshold=500, ivf_threshold=1000, ivf_nprobe=8)
    assert ix._faiss is None
    assert recall(ix, vecs) >= 0.95
    assert isinstance(ix._faiss, faiss.IndexIVFScalarQuantizer)


def test_the_service_passes_the_ivf_settings_to_its_index(tmp_path: Path) -> None:
    rs = Recsmith(
        Settings(data_dir=tmp_path, database_url="", index_ivf_threshold=1234, index_ivf_nprobe=7)
    )
    rs.__dict__["encoder"] = HashEncoder()
    rows = rs.dense.rows
    assert (rows.ivf_threshold, rows.ivf_nprobe) == (1234, 7)
