"""Dense vector index over normalised product embeddings, persisted in the data directory.

Exact search (one matrix-vector product with numpy/BLAS) is the default for small
catalogues: it never misses and costs well under a millisecond at 10k x 384. It reads the
whole matrix per query, so it grows linearly (~150 MB of memory traffic at 100k); past
`faiss_threshold` items (or with index_kind="faiss") FAISS scans 8-bit scalar-quantised
codes instead and re-scores the best few exactly (see _search_faiss); measured side by
side with exact search in eval/bench_retrieval.py. (HNSW was tried first: an hour-scale
build at 1M and recall that collapses on poorly clustered vectors.)
Filters are a boolean mask applied before the top-k, so a filtered query still returns k.
This is the engine of the in-process index (service/retrieval/vector_index.py); the
database one is pgvector (service/retrieval/vector_index_pg.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TypedDict, Unpack

import numpy as np
from threadpoolctl import ThreadpoolController

_threadpools = ThreadpoolController()  # introspected once; limit() is then cheap


def _one_blas_thread():  # noqa: ANN202 - a threadpoolctl context manager
    """A single query is one matrix-vector product: BLAS threads only add sync cost (measured
    on 2 cores: 2.4 ms vs 8 ms p50 at 10k items)."""
    return _threadpools.limit(limits=1, user_api="blas")


class IndexParams(TypedDict, total=False):
    """How the in-process index searches (defaults: DenseIndex's constructor). One bundle
    passed by keyword through MemoryVectorIndex and load() to the DenseIndex that uses it."""

    kind: str  # "auto" (exact, then FAISS past faiss_threshold) | "exact" | "faiss"
    faiss_threshold: int
    ivf_threshold: int
    ivf_nprobe: int


class DenseIndex:
    """Rows of normalised vectors, grown in place (capacity doubles, no vstack per write).

    A write never rebuilds anything: a new product is appended (and added to the FAISS
    codes when they exist); a changed or removed one leaves a dead row behind (masked out
    of every search) and the changed vector is appended. Dead rows are compacted away once
    they are a quarter of the rows, which is the only time the FAISS codes are rebuilt.
    Per-row filter columns (`columns`) live beside the vectors so a filter is a few
    vectorised comparisons over the same rows (service/retrieval/vector_index.py)."""

    COLUMNS: dict[str, np.dtype] = {}  # name -> dtype of per-row columns (a subclass adds)

    EXACT_SHARE = 0.05  # past the IVF threshold, filters this narrow are scored exactly
    TRAIN_SAMPLE = 64_000  # rows the IVF's centroids are trained on (bounded build time)

    def __init__(
        self,
        dim: int,
        kind: str = "auto",
        faiss_threshold: int = 50_000,
        ivf_threshold: int = 200_000,
        ivf_nprobe: int = 32,
    ) -> None:
        self.dim = dim
        self.kind = kind
        self.faiss_threshold = faiss_threshold
        self.ivf_threshold = ivf_threshold
        self.ivf_nprobe = ivf_nprobe
        self.ids: list[str | None] = []  # per row; None = a dead row
        self.row: dict[str, int] = {}
        self._buf = np.zeros((0, dim), dtype=np.float32)
        self._alive = np.zeros(0, dtype=bool)
        self.columns: dict[str, np.ndarray] = {
            name: np.zeros(0, dtype=dt) for name, dt in self.COLUMNS.items()
        }
        self._dead = 0
        self._faiss = None  # built lazily when used, then extended by appends
        self._ivf = False  # whether self._faiss is the IVF one
        self._quantizer = None  # the IVF's coarse quantizer (kept alive beside it)

    def __len__(self) -> int:
        return len(self.row)

    @property
    def vectors(self) -> np.ndarray:
        """Every row, dead ones included (a view, no copy)."""
        return self._buf[: len(self.ids)]

    # -- updates ----------------------------------------------------------------------
    def _reserve(self, extra: int) -> None:
        need = len(self.ids) + extra
        cap = len(self._buf)
        if need <= cap:
            return
        cap = max(need, 2 * cap, 1024)
        buf = np.zeros((cap, self.dim), dtype=np.float32)
        buf[: len(self.ids)] = self._buf[: len(self.ids)]
        self._buf = buf
        alive = np.zeros(cap, dtype=bool)
        alive[: len(self.ids)] = self._alive[: len(self.ids)]
        self._alive = alive
        for name, col in self.columns.items():
            grown = np.zeros(cap, dtype=col.dtype)
            grown[: len(self.ids)] = col[: len(self.ids)]
            self.columns[name] = grown

    def _kill(self, r: int) -> None:
        self.ids[r] = None
        self._alive[r] = False
        self._dead += 1

    def upsert(self, ids: list[str], vectors: np.ndarray) -> list[int]:
        """Write vectors; returns each id's row (its columns are carried over when the
        vector moves to a new row)."""
        if not ids:
            return []
        vectors = np.asarray(vectors, dtype=np.float32).reshape(len(ids), self.dim)
        self._reserve(len(ids))
        first_new = len(self.ids)
        rows: list[int] = []
        for pid, vec in zip(ids, vectors, strict=True):
            old = self.row.get(pid)
            if old is not None and self._faiss is None:
                self._buf[old] = vec  # no codes to keep in step: overwrite in place
                rows.append(old)
                continue
            r = len(self.ids)
            if old is not None:  # the FAISS codes hold the old vector: retire its row
                for col in self.columns.values():
                    col[r] = col[old]
                self._kill(old)
            self.ids.append(pid)
            self.row[pid] = r
            self._buf[r] = vec
            self._alive[r] = True
            rows.append(r)
        if self._faiss is not None and len(self.ids) > first_new:
            self._faiss.add(self._buf[first_new : len(self.ids)])
        if self._dead > max(1024, len(self.ids) // 4):
            self.compact()
            rows = [self.row[pid] for pid in ids]
        return rows

    def remove(self, ids: list[str]) -> None:
        for pid in ids:
            r = self.row.pop(pid, None)
            if r is not None:
                self._kill(r)
        if self._dead > max(1024, len(self.ids) // 4):
            self.compact()

    def compact(self) -> None:
        """Drop dead rows (renumbers rows; the FAISS codes are rebuilt on next use)."""
        keep = np.flatnonzero(self._alive[: len(self.ids)])
        self._buf = self._buf[keep].copy()
        self._alive = np.ones(len(keep), dtype=bool)
        self.columns = {name: col[keep].copy() for name, col in self.columns.items()}
        self.ids = [self.ids[r] for r in keep]
        self.row = {pid: r for r, pid in enumerate(self.ids)}  # type: ignore[misc]
        self._dead = 0
        self._faiss = None  # row numbers changed: the IVF too is rebuilt on next use

    def vector(self, pid: str) -> np.ndarray | None:
        r = self.row.get(pid)
        return None if r is None else self._buf[r]

    # -- search -----------------------------------------------------------------------
    def use_faiss(self) -> bool:
        return self.kind == "faiss" or (self.kind == "auto" and len(self) >= self.faiss_threshold)

    def use_ivf(self) -> bool:
        return self.use_faiss() and len(self) >= self.ivf_threshold

    def search(
        self, query: np.ndarray, k: int, mask: np.ndarray | None = None
    ) -> list[tuple[str, float]]:
        """Top-k (id, cosine) for a normalised query; mask[r] False excludes row r."""
        n = len(self.ids)
        if n == 0 or k <= 0:
            return []
        q = np.asarray(query, dtype=np.float32).reshape(-1)
        if self._dead:
            alive = self._alive[:n]
            mask = alive if mask is None else (mask & alive)
        if self.use_ivf():
            return self._search_ivf(q, k, mask)
        if self.use_faiss():
            return self._search_faiss(q, k, mask)
        with _one_blas_thread():
            scores = self.vectors @ q
        if mask is not None:
            scores = np.where(mask, scores, -np.inf)
        k = min(k, n)
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        return [(self.ids[r], float(scores[r])) for r in top if np.isfinite(scores[r])]

    def _search_faiss(
        self, q: np.ndarray, k: int, mask: np.ndarray | None
    ) -> list[tuple[str, float]]:
        """Scan 8-bit scalar-quantised codes (4x less memory traffic than float32), then
        re-score the best 3k exactly in float32: exact-search quality at a quarter of the
        cost, with no graph to build and no recall cliff on unclustered data."""
        # lazy: faiss (+0.04 s) loads its own OpenBLAS and OpenMP (threadpool_info: 1 -> 3
        # libraries); only large indexes use it, so small ones and _threadpools (introspected
        # at import) see numpy's BLAS alone
        import faiss

        if self._faiss is not None and self._ivf:  # shrank below the IVF threshold
            self._faiss = None
        if self._faiss is None:
            vectors = self.vectors
            index = faiss.IndexScalarQuantizer(
                self.dim, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
            )
            faiss.omp_set_num_threads(1)  # one query at a time: threads only add sync cost
            index.train(vectors)
            index.add(vectors)
            self._faiss = index
            self._ivf = False
        params = None
        if mask is not None:
            if not mask.any():
                return []
            bits = np.packbits(mask.astype(np.uint8), bitorder="little")
            sel = faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(bits))
            params = faiss.SearchParameters(sel=sel)  # `bits` stays alive until search returns
        fetch = min(max(3 * k, k + 20), len(self.ids))
        _, idx = self._faiss.search(q[None, :], fetch, params=params)
        return self._rescore(q, k, idx[0])

    def _rescore(self, q: np.ndarray, k: int, idx: np.ndarray) -> list[tuple[str, float]]:
        """The candidates' exact cosines (float32 rows), best k first."""
        rows = idx[idx >= 0]
        exact = self._buf[rows] @ q
        order = np.argsort(-exact, kind="stable")[:k]
        return [(self.ids[rows[i]], float(exact[i])) for i in order]  # type: ignore[misc]

    def _build_ivf(self) -> None:
        """IVF over 8-bit codes of the residuals: ~4*sqrt(n) lists, k-means on a seeded sample
        of <= TRAIN_SAMPLE rows (10 iterations), rows added in chunks. FAISS ids are row
        numbers (appends keep them in step); dead rows stay in the lists and are masked out."""
        import faiss  # lazy: as in _search_faiss

        vectors = self.vectors
        n = len(vectors)
        nlist = max(16, int(4 * np.sqrt(n)))
        quantizer = faiss.IndexFlatIP(self.dim)
        index = faiss.IndexIVFScalarQuantizer(
            quantizer, self.dim, nlist, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
        )
        index.cp.niter = 10
        index.cp.seed = 1234
        index.cp.max_points_per_centroid = max(1, self.TRAIN_SAMPLE // nlist + 1)
        index.cp.min_points_per_centroid = 1  # 64k rows for 4k lists at 1M: 16 each is enough
        faiss.omp_set_num_threads(1)  # shared cores; one query at a time
        alive = np.flatnonzero(self._alive[:n])
        rng = np.random.default_rng(0)
        sample = np.sort(rng.choice(alive, min(self.TRAIN_SAMPLE, len(alive)), replace=False))
        index.train(np.ascontiguousarray(vectors[sample]))
        for start in range(0, n, 65_536):
            index.add(np.ascontiguousarray(vectors[start : start + 65_536]))
        self._quantizer = quantizer  # SWIG: the index does not own it
        self._faiss = index
        self._ivf = True

    def _search_ivf(
        self, q: np.ndarray, k: int, mask: np.ndarray | None
    ) -> list[tuple[str, float]]:
        """Query plan by the filter's share of rows: a selective filter (<= EXACT_SHARE) is an
        exact float scan of just its rows (1M x 2 % = 20k rows: a few ms, exact answer);
        otherwise the IVF, reading nprobe/share lists so that enough allowed rows are seen,
        with the filter as a bitmap the scan checks per code (dead rows are never returned:
        they are out of the mask)."""
        import faiss  # lazy: as in _search_faiss

        share = 1.0 if mask is None else float(mask.mean())
        if mask is not None and share <= self.EXACT_SHARE:
            rows = np.flatnonzero(mask)
            if len(rows) == 0:
                return []
            scores = np.empty(len(rows), dtype=np.float32)
            with _one_blas_thread():  # in chunks: each gathered block is scored from cache
                for s in range(0, len(rows), 2048):
                    scores[s : s + 2048] = self._buf[rows[s : s + 2048]] @ q
            kk = min(k, len(rows))
            top = np.argpartition(-scores, kk - 1)[:kk]
            top = top[np.argsort(-scores[top], kind="stable")]
            return [(self.ids[rows[i]], float(scores[i])) for i in top]  # type: ignore[misc]
        if self._faiss is None or not self._ivf:
            self._build_ivf()
        index = self._faiss
        nprobe = min(index.nlist, int(np.ceil(self.ivf_nprobe / max(share, self.EXACT_SHARE))))
        bits = None
        if mask is not None:
            bits = np.packbits(mask.astype(np.uint8), bitorder="little")
            sel = faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(bits))
            params = faiss.SearchParametersIVF(sel=sel, nprobe=nprobe)
        else:
            params = faiss.SearchParametersIVF(nprobe=nprobe)
        fetch = min(max(5 * k, k + 40), len(self.ids))
        _, idx = index.search(q[None, :], fetch, params=params)
        del bits  # the bitmap had to outlive the search
        return self._rescore(q, k, idx[0])

    # -- persistence --------------------------------------------------------------------
    def save(self, directory: Path, model_id: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        if self._dead:
            self.compact()
        tmp = directory / "dense.tmp.npy"
        np.save(tmp, self.vectors)
        tmp.replace(directory / "dense.npy")  # atomic: a crash never leaves half a matrix
        meta = {"ids": self.ids, "dim": self.dim, "model_id": model_id}
        (directory / "dense.tmp.json").write_text(json.dumps(meta))
        (directory / "dense.tmp.json").replace(directory / "dense.json")

    @classmethod
    def load(
        cls, directory: Path, dim: int, model_id: str, **params: Unpack[IndexParams]
    ) -> DenseIndex:
        """The codes (flat or IVF) are not persisted: they are rebuilt on the first search."""
        index = cls(dim, **params)
        meta_path, vec_path = directory / "dense.json", directory / "dense.npy"
        if not (meta_path.exists() and vec_path.exists()):
            return index
        meta = json.loads(meta_path.read_text())
        vectors = np.load(vec_path)
        # A different encoder means different vector spaces: start again rather than mix.
        if (
            meta.get("model_id") != model_id
            or meta.get("dim") != dim
            or len(meta["ids"]) != len(vectors)
        ):
            return index
        index.ids = list(meta["ids"])
        index.row = {pid: r for r, pid in enumerate(index.ids)}
        index._buf = vectors.astype(np.float32)
        index._alive = np.ones(len(index.ids), dtype=bool)
        index.columns = {
            name: np.zeros(len(index.ids), dtype=dt) for name, dt in cls.COLUMNS.items()
        }
        return index
