"""The vector index behind dense retrieval: one interface, two implementations chosen by
`RECSMITH_VECTOR_INDEX`.

- `memory` (MemoryVectorIndex): the vectors in this process (numpy, or a FAISS 8-bit scan
  from `index_faiss_threshold` items; service/retrieval/dense.py), persisted in the data
  directory, with the filter columns (category, price, stock) beside them. Each process
  holds a copy and follows the catalogue change log to stay in step (service/index_state.py).
- `pgvector` (service/retrieval/vector_index_pg.py): the vectors in the database next to
  the products, an HNSW index, filters pushed into SQL. Every process reads the same rows.

Both take the same filters (service/retrieval/filters.py) with the same meaning.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Unpack

import numpy as np

from service.catalog.models import Product
from service.retrieval.dense import DenseIndex, IndexParams
from service.retrieval.filters import Filters, filters_active

Hits = list[tuple[str, float]]


@dataclass(frozen=True)
class VectorQuery:
    """One search as an implementation receives it: k > 0, the excluded ids unique and
    sorted (a stable SQL parameter)."""

    vector: np.ndarray
    k: int
    filters: Filters | None
    excluded: tuple[str, ...]


class VectorIndex(ABC):
    """Normalised product vectors searched by cosine, with the business filters inside."""

    dim: int
    persistent = False  # True: the database holds it (nothing to save, shared by processes)

    @abstractmethod
    def __len__(self) -> int: ...

    def __contains__(self, pid: object) -> bool:
        return isinstance(pid, str) and bool(self.known([pid]))

    @abstractmethod
    def known(self, ids: Iterable[str]) -> set[str]:
        """The ids that have a vector."""

    @abstractmethod
    def vectors(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        """The stored vectors of those ids that have one."""

    def vector(self, pid: str) -> np.ndarray | None:
        return self.vectors([pid]).get(pid)

    def search(
        self,
        query: np.ndarray,
        k: int,
        filters: Filters | None = None,
        excluded: Iterable[str] = (),
    ) -> Hits:
        """The k nearest allowed products, (id, cosine) best first; k of them whenever k
        allowed products exist."""
        if k <= 0:
            return []
        return self._search(VectorQuery(query, k, filters, tuple(sorted(set(excluded)))))

    @abstractmethod
    def _search(self, q: VectorQuery) -> Hits:
        """search() for an implementation, its arguments checked and bundled."""

    @abstractmethod
    def allowed(self, ids: Sequence[str], filters: Filters, excluded: Iterable[str]) -> set[str]:
        """The ids (of indexed products) that pass the filters: for the other sources."""

    def allows(self, filters: Filters, excluded: set[str]) -> Callable[[str], bool] | None:
        """A cheap per-id test when there is one (in-process), else None."""
        return None

    @abstractmethod
    def stale(
        self, products: Sequence[Product], hashes: Mapping[str, str], model_id: str
    ) -> list[Product]:
        """The products whose vector is missing or was encoded from other text or by another
        model (`hashes`: this process's id -> content hash of what it indexed)."""

    @abstractmethod
    def upsert(self, products: Sequence[Product], vectors: np.ndarray, model_id: str) -> None: ...

    def write_in(
        self, session: object, products: Sequence[Product], vectors: np.ndarray, model_id: str
    ) -> bool:
        """Write vectors inside the store's writing transaction (`session`); False when this
        index cannot (it is not in the database): the caller upserts after the commit."""
        return False

    @abstractmethod
    def set_columns(self, rows: Iterable[tuple[str, str, float | None, bool]]) -> None:
        """(id, category, price, in_stock) of indexed products: filters change without
        re-encoding (a price change)."""

    @abstractmethod
    def remove(self, ids: Sequence[str]) -> None: ...

    def save(self, directory: Path, model_id: str) -> None:  # noqa: B027 - optional
        """Persist (the in-process index); the database index has nothing to save."""


# -- in-process --------------------------------------------------------------------------
class _Rows(DenseIndex):
    """The dense rows plus filter columns aligned with them."""

    COLUMNS = {
        "cat": np.dtype(np.int32),  # code of the lower-cased category; -1 = unknown product
        "price": np.dtype(np.float64),  # NaN = no price (fails any price bound)
        "stock": np.dtype(bool),
    }


class MemoryVectorIndex(VectorIndex):
    def __init__(self, dim: int, **params: Unpack[IndexParams]) -> None:
        self.dim = dim
        self.rows = _Rows(dim, **params)
        self._codes: dict[str, int] = {}

    @classmethod
    def load(
        cls, directory: Path, dim: int, model_id: str, **params: Unpack[IndexParams]
    ) -> MemoryVectorIndex:
        index = cls(dim)
        index.rows = _Rows.load(directory, dim, model_id, **params)  # type: ignore[assignment]
        index.rows.columns["cat"][:] = -1  # filled by set_columns (the full sync)
        return index

    def save(self, directory: Path, model_id: str) -> None:
        self.rows.save(directory, model_id)

    # the engine, for benchmarks and the health route
    @property
    def ids(self) -> list[str | None]:
        return self.rows.ids

    @property
    def row(self) -> dict[str, int]:
        return self.rows.row

    def __len__(self) -> int:
        return len(self.rows)

    def known(self, ids: Iterable[str]) -> set[str]:
        return {i for i in ids if i in self.rows.row}

    def vectors(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        out = {}
        for pid in ids:
            r = self.rows.row.get(pid)
            if r is not None:
                out[pid] = self.rows.vectors[r]
        return out

    def _code(self, category: str) -> int:
        key = category.lower()
        code = self._codes.get(key)
        if code is None:
            code = self._codes[key] = len(self._codes)
        return code

    def set_columns(self, rows: Iterable[tuple[str, str, float | None, bool]]) -> None:
        cols = self.rows.columns
        for pid, category, price, in_stock in rows:
            r = self.rows.row.get(pid)
            if r is None:
                continue
            cols["cat"][r] = self._code(category)
            cols["price"][r] = np.nan if price is None else price
            cols["stock"][r] = in_stock

    def upsert(self, products: Sequence[Product], vectors: np.ndarray, model_id: str) -> None:
        self.rows.upsert([p.id for p in products], vectors)
        self.set_columns((p.id, p.category, p.price, p.in_stock) for p in products)

    def remove(self, ids: Sequence[str]) -> None:
        self.rows.remove(list(ids))

    def stale(
        self, products: Sequence[Product], hashes: Mapping[str, str], model_id: str
    ) -> list[Product]:
        # A loaded index of another model is discarded on load, so hashes are enough.
        row = self.rows.row
        return [p for p in products if p.id not in row or hashes.get(p.id) != p.content_hash()]

    # -- filters -------------------------------------------------------------------------
    def mask(self, filters: Filters | None, excluded: Iterable[str]) -> np.ndarray | None:
        """Boolean mask over the rows; None when nothing is filtered."""
        excluded = set(excluded)
        if not (filters_active(filters) or excluded):
            return None
        n = len(self.rows.ids)
        cols = {name: col[:n] for name, col in self.rows.columns.items()}
        m = cols["cat"] >= 0
        f = filters or Filters()
        if f.categories:
            codes = [self._codes[c.lower()] for c in f.categories if c.lower() in self._codes]
            m &= np.isin(cols["cat"], codes)
        with np.errstate(invalid="ignore"):  # NaN (no price) fails both bounds
            if f.min_price is not None:
                m &= cols["price"] >= f.min_price
            if f.max_price is not None:
                m &= cols["price"] <= f.max_price
        if f.in_stock_only:
            m &= cols["stock"]
        for pid in excluded:
            r = self.rows.row.get(pid)
            if r is not None:
                m[r] = False
        return m

    def allows(self, filters: Filters, excluded: set[str]) -> Callable[[str], bool]:
        cols, row = self.rows.columns, self.rows.row
        cats = {self._codes[c.lower()] for c in filters.categories if c.lower() in self._codes}

        def ok(pid: str) -> bool:
            r = row.get(pid)
            if r is None or pid in excluded or cols["cat"][r] < 0:
                return False
            if filters.categories and cols["cat"][r] not in cats:
                return False
            price = cols["price"][r]
            if filters.min_price is not None and not price >= filters.min_price:
                return False
            if filters.max_price is not None and not price <= filters.max_price:
                return False
            return not (filters.in_stock_only and not cols["stock"][r])

        return ok

    def allowed(self, ids: Sequence[str], filters: Filters, excluded: Iterable[str]) -> set[str]:
        ok = self.allows(filters, set(excluded))
        return {i for i in ids if ok(i)}

    def _search(self, q: VectorQuery) -> Hits:
        return self.rows.search(q.vector, q.k, self.mask(q.filters, q.excluded))  # type: ignore[misc]
