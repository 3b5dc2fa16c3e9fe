"""Keeps the vector and lexical indexes in step with the catalogue.

Two paths:
- `sync` (start-up, `recsmith index`): compares every product's content hash with what
  this process indexed (state.json) and encodes only the products whose text changed (the
  encoder's cache makes even those free when the text was seen before);
- `apply_changes` (after a write, here or in another process): reads the catalogue change
  log (service/catalog/store.py) since the last version applied and touches only those
  products: no full read of hashes or products, only changed texts encoded, rows appended
  or updated in place.

With pgvector the vectors are shared in the database, so a product another process already
encoded is not encoded again (its stored content hash matches); the lexical index is a
local file and follows the same log.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from service.catalog.models import Product
from service.catalog.store import CatalogStore
from service.retrieval.encoder import Encoder
from service.retrieval.lexical import LexicalIndex
from service.retrieval.vector_index import MemoryVectorIndex, VectorIndex

_BATCH = 512
# A write of up to this many products encodes them before its transaction (so a database
# index's vectors commit with the products); a larger one (an import) is encoded after it,
# where the change log says what really changed.
PREPARE_MAX = 64


@dataclass
class IndexReport:
    total: int
    encoded: int
    removed: int
    model_calls: int
    removed_ids: list[str] = field(default_factory=list, repr=False)

    def as_dict(self) -> dict[str, int]:
        return {
            "total": self.total,
            "encoded": self.encoded,
            "removed": self.removed,
            "model_calls": self.model_calls,
        }


class Indexer:
    def __init__(
        self,
        store: CatalogStore,
        encoder: Encoder,
        index: VectorIndex,
        lexical: LexicalIndex,
        directory: Path,
        save_below: int = 2_000,
        margin: int = 0,
    ) -> None:
        self.store, self.encoder, self.index, self.lexical = store, encoder, index, lexical
        self.directory = directory
        # Up to this many products an in-process index (and state.json) is saved after each
        # write (a few MB); beyond, and always for a database index (it holds the vectors),
        # at the full sync only: a restart compares hashes once and re-encodes nothing the
        # database or the embedding cache already holds.
        self.save_below = save_below
        # Change-log entries re-read below the newest applied: PostgreSQL can commit
        # sequence numbers out of order (re-applying a change is idempotent).
        self.margin = margin
        # Change-log seqs applied within that margin: re-read, they are skipped (else every
        # write re-read and re-indexed the previous `margin` changes' products).
        self._applied: set[int] = set()
        self.state_path = directory / "state.json"
        self.state: dict[str, str] = {}  # id -> content hash this process has indexed
        self.seq = 0  # the catalogue change applied last
        if self.state_path.exists() and (index.persistent or len(index)):
            saved = json.loads(self.state_path.read_text())
            if isinstance(saved.get("hashes"), dict):
                self.state, self.seq = saved["hashes"], int(saved.get("seq", 0))
            else:  # the format before the change log: hashes only
                self.state = saved

    @property
    def model_id(self) -> str:
        return self.encoder.model_id

    def prepare(self, products: Sequence[Product]) -> dict[str, np.ndarray]:
        """Vectors of a small write's products whose text differs from the one this process
        indexed (`state`: no database read), encoded before the write (no lock held), keyed
        by content hash; {} for a large write (encoded after it, see PREPARE_MAX). Where
        another process changed a text since, the write's own indexing step encodes what
        `state` missed, and a vector encoded in vain is only time."""
        by_id = {p.id: p for p in products}
        if not by_id or len(by_id) > PREPARE_MAX:
            return {}
        stored = self.state
        todo = {p.content_hash(): p for p in by_id.values() if stored.get(p.id) != p.content_hash()}
        if not todo:
            return {}
        vecs = self.encoder.encode([p.embedding_text() for p in todo.values()])
        return dict(zip(todo, vecs, strict=True))

    def in_transaction(
        self,
        products: Sequence[Product],
        fresh: Mapping[str, np.ndarray] | Future[dict[str, np.ndarray]],
    ) -> Callable[[Any, list[str]], None]:
        """The store's in-transaction step: waits for the write's vectors (`prepare`, maybe
        still running beside the transaction's statements: an encoding error rolls the
        write back, as when it ran first); a database index writes them with the products."""
        by_id = {p.id: p for p in products}

        def write(session: Any, written: list[str]) -> None:
            vectors = fresh.result() if isinstance(fresh, Future) else fresh
            if not vectors or not self.index.persistent:
                return
            todo = [by_id[i] for i in written if by_id[i].content_hash() in vectors]
            if todo:
                vecs = np.stack([vectors[p.content_hash()] for p in todo])
                self.index.write_in(session, todo, vecs, self.model_id)

        return write

    def _encode(
        self,
        todo: Sequence[Product],
        fresh: Mapping[str, np.ndarray] | None,
        progress: Callable[[int], None] | None,
    ) -> np.ndarray:
        """The todo's vectors: prepared ones where the text matches, the rest encoded."""
        if not fresh:
            return self.encoder.encode([p.embedding_text() for p in todo], progress)
        rest = [p for p in todo if p.content_hash() not in fresh]
        new = self.encoder.encode([p.embedding_text() for p in rest], progress) if rest else []
        made = dict(zip((p.content_hash() for p in rest), new, strict=True))
        return np.stack([fresh.get(p.content_hash(), made.get(p.content_hash())) for p in todo])

    def _index_products(
        self,
        products: Sequence[Product],
        progress: Callable[[int], None] | None = None,
        fresh: Mapping[str, np.ndarray] | None = None,
    ) -> int:
        """Encode the products whose vector is stale (or take `fresh`, their vectors prepared
        before the write), write them, refresh their lexical rows and filter columns;
        returns how many were encoded."""
        todo = self.index.stale(products, self.state, self.model_id)
        if todo:
            vecs = self._encode(todo, fresh, progress)
            self.index.upsert(todo, vecs, self.model_id)
        # Prepared vectors a database index took in the write's transaction count too.
        done = {p.id for p in todo}
        made = len(done) + sum(
            p.id not in done and p.content_hash() in (fresh or {}) for p in products
        )
        lex = [p for p in products if self.state.get(p.id) != p.content_hash()]
        if lex:
            self.lexical.upsert(lex)
        self.index.set_columns((p.id, p.category, p.price, p.in_stock) for p in products)
        for p in products:
            self.state[p.id] = p.content_hash()
        return made

    def _remove(self, ids: list[str]) -> None:
        if ids:
            self.index.remove(ids)
            self.lexical.remove(ids)
            for pid in ids:
                self.state.pop(pid, None)

    # -- the full path -------------------------------------------------------------------
    def sync(
        self,
        progress: Callable[[int], None] | None = None,
        on_total: Callable[[int], None] | None = None,
    ) -> IndexReport:
        seq, _ = self.store.versions()  # read first: changes during the scan are re-applied
        # Changes already committed are in the scan: the next write's step need not re-read
        # them (one that commits later, out of order, is not among them: it is applied).
        in_scan = [n for n, _ in self.store.change_rows(max(0, seq - self.margin))[0]]
        calls_before = self.encoder.model_calls
        hashes: dict[str, str] = {}
        columns = []
        for pid, h, category, price, in_stock in self.store.index_rows():
            hashes[pid] = h
            columns.append((pid, category, price, in_stock))
        todo = {pid for pid, h in hashes.items() if self.state.get(pid) != h}
        if self.index.persistent:
            todo.update(self.index.stale_ids(self.model_id))  # type: ignore[attr-defined]
        else:
            todo.update(set(hashes) - self.index.known(hashes))
        removed = [pid for pid in self.state if pid not in hashes]
        if isinstance(self.index, MemoryVectorIndex):
            removed += [pid for pid in self.index.row if pid not in hashes]
        removed = list(dict.fromkeys(removed))
        if self.lexical.rebuilt:  # a new lexical format: refill it from the store, no encoding
            unchanged = [pid for pid in hashes if pid not in todo]
            for start in range(0, len(unchanged), _BATCH):
                self.lexical.upsert(
                    self.store.get_products(unchanged[start : start + _BATCH]).values()
                )
            self.lexical.rebuilt = False
        if on_total:
            on_total(len(todo))
        ordered = sorted(todo)
        encoded = 0
        for start in range(0, len(ordered), _BATCH):
            ids = ordered[start : start + _BATCH]
            products = self.store.get_products(ids)
            encoded += self._index_products([products[i] for i in ids if i in products], progress)
        self._remove(removed)
        # Filter columns come from the store every time (a price changes without the text).
        self.index.set_columns(columns)
        self.seq = max(self.seq, seq)
        self._applied.update(n for n in in_scan if n > self.seq - self.margin)
        if todo or removed or not self.state_path.exists():
            self.save()
        return IndexReport(
            len(hashes), encoded, len(removed), self.encoder.model_calls - calls_before, removed
        )

    # -- the incremental path --------------------------------------------------------------
    def apply_changes(self, fresh: Mapping[str, np.ndarray] | None = None) -> IndexReport | None:
        """The products written or deleted since the last version applied (by any process).
        None when the log no longer reaches back that far (the caller runs `sync`).
        `fresh`: this process's write's vectors, prepared before it (by content hash: a
        product written again since by another process is encoded from what is stored)."""
        floor = max(0, self.seq - self.margin)
        rows, found, complete = self.store.changes_with_products(floor, self._applied)
        if not complete:
            return None
        newest = rows[-1][0] if rows else floor
        ids = list(dict.fromkeys(pid for _, pid in rows))
        calls_before = self.encoder.model_calls
        encoded = self._index_products([found[i] for i in ids if i in found], fresh=fresh)
        removed = [i for i in ids if i not in found and (i in self.state or i in self.index)]
        self._remove(removed)
        self.seq = max(self.seq, newest)
        self._applied = {n for n in self._applied if n > self.seq - self.margin}
        self._applied.update(n for n, _ in rows if n > self.seq - self.margin)
        if ids and not self.index.persistent and len(self.state) <= self.save_below:
            self.save()
        return IndexReport(
            len(self.state), encoded, len(removed), self.encoder.model_calls - calls_before, removed
        )

    def save(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.index.save(self.directory, self.model_id)
        tmp = self.directory / "state.tmp.json"
        tmp.write_text(json.dumps({"seq": self.seq, "hashes": self.state}))
        tmp.replace(self.state_path)
