"""Lexical BM25 index on SQLite FTS5 (always a local file, whatever the main database)."""

from __future__ import annotations

import re
import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path

from service.catalog.models import Product

_WORD = re.compile(r"\w+", re.UNICODE)
# Column weights for bm25(): a word in the title says more than one deep in the description.
_WEIGHTS = (0.0, 6.0, 2.0, 2.0, 1.0, 3.0)


class LexicalIndex:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE VIRTUAL TABLE IF NOT EXISTS docs USING fts5("
            "id UNINDEXED, title, brand, category, description, tags, "
            "tokenize='porter unicode61 remove_diacritics 2')"
        )
        self._lock = threading.Lock()

    def upsert(self, products: Iterable[Product]) -> None:
        rows = [
            (p.id, p.title, p.brand, p.category, p.description, " ".join(p.tags)) for p in products
        ]
        if not rows:
            return
        with self._lock:
            self._db.executemany("DELETE FROM docs WHERE id = ?", [(r[0],) for r in rows])
            self._db.executemany("INSERT INTO docs VALUES (?, ?, ?, ?, ?, ?)", rows)
            self._db.commit()

    def remove(self, ids: Iterable[str]) -> None:
        with self._lock:
            self._db.executemany("DELETE FROM docs WHERE id = ?", [(i,) for i in ids])
            self._db.commit()

    def search(self, query: str, k: int) -> list[tuple[str, float]]:
        """Top-k (id, score) with score = -bm25 (higher is better). Any word may match: the
        query is turned into quoted terms joined by OR, so user text is never FTS syntax."""
        terms = [t for t in _WORD.findall(query.lower()) if len(t) > 1 or not t.isascii()]
        if not terms or k <= 0:
            return []
        match = " OR ".join(f'"{t}"' for t in dict.fromkeys(terms))
        weights = ", ".join(str(w) for w in _WEIGHTS)
        sql = (
            f"SELECT id, bm25(docs, {weights}) AS s FROM docs WHERE docs MATCH ? ORDER BY s LIMIT ?"
        )
        with self._lock:
            rows = self._db.execute(sql, (match, k)).fetchall()
        return [(pid, -float(s)) for pid, s in rows]

    def count(self) -> int:
        with self._lock:
            return self._db.execute("SELECT count(*) FROM docs").fetchone()[0]
