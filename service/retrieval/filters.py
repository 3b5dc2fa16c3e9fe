"""Business filters, applied inside retrieval so every source returns only allowed items."""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, Field, model_validator

from service.catalog.models import Product


class Filters(BaseModel):
    categories: list[str] = Field(default_factory=list, max_length=50)
    min_price: float | None = Field(default=None, ge=0)
    max_price: float | None = Field(default=None, ge=0)
    in_stock_only: bool = False
    exclude_purchased: bool = True
    exclude_ids: list[str] = Field(default_factory=list, max_length=1000)

    @model_validator(mode="after")
    def _price_range(self) -> Filters:
        if (
            self.min_price is not None
            and self.max_price is not None
            and self.min_price > self.max_price
        ):
            raise ValueError("min_price must not be greater than max_price")
        return self


def filters_active(f: Filters | None) -> bool:
    """Whether a filter narrows the catalogue (exclusions aside)."""
    return bool(
        f
        and (f.categories or f.min_price is not None or f.max_price is not None or f.in_stock_only)
    )


class ProductMeta:
    """Per-product columns aligned to a bare DenseIndex's rows (eval/bench_retrieval.py).
    The served indexes filter themselves: MemoryVectorIndex keeps these columns beside its
    rows, pgvector reads its copies in product_vectors (service/retrieval/vector_index_pg.py)."""

    def __init__(self) -> None:
        self.category: dict[str, str] = {}
        self.price: dict[str, float | None] = {}
        self.in_stock: dict[str, bool] = {}
        self._aligned_key: tuple[int, int] | None = None
        self._cat_codes = np.zeros(0, dtype=np.int32)
        self._codes: dict[str, int] = {}
        self._price = np.zeros(0)
        self._stock = np.zeros(0, dtype=bool)
        self._row: dict[str, int] = {}

    def update(self, products: list[Product]) -> None:
        for p in products:
            self.category[p.id] = p.category.lower()
            self.price[p.id] = p.price
            self.in_stock[p.id] = p.in_stock
        self._aligned_key = None

    def remove(self, ids: list[str]) -> None:
        for i in ids:
            self.category.pop(i, None)
            self.price.pop(i, None)
            self.in_stock.pop(i, None)
        self._aligned_key = None

    def allowed(self, pid: str, f: Filters, excluded: set[str]) -> bool:
        if pid in excluded or pid not in self.category:
            return False
        if f.categories and self.category[pid] not in {c.lower() for c in f.categories}:
            return False
        price = self.price.get(pid)
        if f.min_price is not None and (price is None or price < f.min_price):
            return False
        if f.max_price is not None and (price is None or price > f.max_price):
            return False
        return not (f.in_stock_only and not self.in_stock.get(pid, False))

    def _align(self, ids: list[str]) -> None:
        key = (id(ids), len(ids))
        if self._aligned_key == key:
            return
        self._codes = {c: i for i, c in enumerate(sorted(set(self.category.values())))}
        self._cat_codes = np.array(
            [self._codes.get(self.category.get(pid, ""), -1) for pid in ids], dtype=np.int32
        )
        self._price = np.array(
            [np.nan if self.price.get(pid) is None else self.price[pid] for pid in ids],
            dtype=np.float64,
        )
        self._stock = np.array([self.in_stock.get(pid, False) for pid in ids], dtype=bool)
        self._row = {pid: r for r, pid in enumerate(ids)}
        self._aligned_key = key

    def mask(self, ids: list[str], f: Filters, excluded: set[str]) -> np.ndarray | None:
        """Boolean mask over `ids` (the dense index rows); None when nothing is filtered."""
        if not (filters_active(f) or excluded):
            return None
        self._align(ids)
        m = self._cat_codes >= 0
        if f.categories:
            codes = [self._codes[c.lower()] for c in f.categories if c.lower() in self._codes]
            m &= np.isin(self._cat_codes, codes)
        with np.errstate(invalid="ignore"):
            if f.min_price is not None:
                m &= self._price >= f.min_price
            if f.max_price is not None:
                m &= self._price <= f.max_price
        if f.in_stock_only:
            m &= self._stock
        for pid in excluded:
            r = self._row.get(pid)
            if r is not None:
                m[r] = False
        return m
