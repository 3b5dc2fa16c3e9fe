"""Keeps the dense and lexical indexes in step with the catalogue, incrementally.

The index directory holds state.json (product id -> content hash at indexing time); only
products whose hash changed are re-encoded, and the encoder's own cache means even those
cost no model call if their text was seen before.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from service.catalog.store import CatalogStore
from service.retrieval.dense import DenseIndex
from service.retrieval.encoder import Encoder
from service.retrieval.filters import ProductMeta
from service.retrieval.lexical import LexicalIndex


@dataclass
class IndexReport:
    total: int
    encoded: int
    removed: int
    model_calls: int

    def as_dict(self) -> dict[str, int]:
        return self.__dict__.copy()


class Indexer:
    def __init__(
        self,
        store: CatalogStore,
        encoder: Encoder,
        dense: DenseIndex,
        lexical: LexicalIndex,
        meta: ProductMeta,
        directory: Path,
    ) -> None:
        self.store, self.encoder, self.dense, self.lexical, self.meta = (
            store,
            encoder,
            dense,
            lexical,
            meta,
        )
        self.directory = directory
        self.state_path = directory / "state.json"
        self.state: dict[str, str] = {}
        if self.state_path.exists() and len(dense):
            self.state = json.loads(self.state_path.read_text())

    def sync(
        self,
        progress: Callable[[int], None] | None = None,
        on_total: Callable[[int], None] | None = None,
    ) -> IndexReport:
        hashes = self.store.content_hashes()
        changed = [
            pid
            for pid, h in hashes.items()
            if self.state.get(pid) != h or pid not in self.dense.row
        ]
        removed = [pid for pid in self.state if pid not in hashes]
        calls_before = self.encoder.model_calls
        if self.lexical.rebuilt:  # a new lexical format: refill it from the store, no encoding
            todo = set(changed)  # those are upserted below anyway
            unchanged = [pid for pid in hashes if pid not in todo]
            for start in range(0, len(unchanged), 512):
                self.lexical.upsert(
                    self.store.get_products(unchanged[start : start + 512]).values()
                )
            self.lexical.rebuilt = False
        if on_total:
            on_total(len(changed))
        for start in range(0, len(changed), 512):
            ids = changed[start : start + 512]
            products = self.store.get_products(ids)
            batch = [products[i] for i in ids if i in products]
            vecs = self.encoder.encode([p.embedding_text() for p in batch], progress)
            self.dense.upsert([p.id for p in batch], vecs)
            self.lexical.upsert(batch)
            for p in batch:
                self.state[p.id] = hashes[p.id]
        if removed:
            self.dense.remove(removed)
            self.lexical.remove(removed)
            self.meta.remove(removed)
            for pid in removed:
                self.state.pop(pid, None)
        if changed or removed:
            self.save()
        # Filter columns always come from the store (prices and stock change without text).
        self.meta.update(list(self.store.iter_products()))
        return IndexReport(
            len(hashes), len(changed), len(removed), self.encoder.model_calls - calls_before
        )

    def save(self) -> None:
        self.dense.save(self.directory, self.encoder.model_id)
        tmp = self.directory / "state.tmp.json"
        tmp.write_text(json.dumps(self.state))
        tmp.replace(self.state_path)
