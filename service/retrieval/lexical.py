"""Lexical BM25 index on SQLite FTS5 (always a local file, whatever the main database).

Two FTS5 tables. `docs` is the English one (porter + unicode61), unchanged. unicode61 does
not segment Chinese or Japanese: a whole run of CJK characters becomes one token, so
"电饭煲" never matched "智能电饭煲". `docs_cjk` therefore holds each product's CJK text as
overlapping character bigrams (plus single characters), the n-gram indexing of Lucene's
CJKAnalyzer, and BM25 ranks over those. Bigrams rather than FTS5's trigram tokenizer: most
Chinese words are two characters ("铁锅", "绿茶"), which a trigram MATCH cannot find at all,
and a query with a particle in the middle ("西湖的龙井") shares no trigram with "西湖龙井"
but does share the bigrams "西湖" and "龙井". A query's English words are scored on `docs`,
its CJK runs on `docs_cjk`, and the two scores add (BM25 is a sum over terms anyway).

The file carries a format version (PRAGMA user_version); an older file is dropped and
rebuilt: `rebuilt` tells the indexer to refill it from the store (no re-encoding).

A write replaces rows by rowid: `keys` (id TEXT PRIMARY KEY) gives each product a stable
integer that both FTS5 tables use as their rowid. Before it (format 2) a write deleted by the
UNINDEXED id column, which FTS5 can only do by reading every row: 24 ms per single-product
upsert at 20k products, linear in the catalogue. Durability: WAL with synchronous=NORMAL
(see `LexicalIndex.__init__`).
"""

from __future__ import annotations

import re
import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path

from service.catalog.models import Product

_WORD = re.compile(r"\w+", re.UNICODE)
# Hiragana/katakana, CJK extension A, unified ideographs, compatibility ideographs, Hangul.
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af]+")
# Column weights for bm25(): a word in the title says more than one deep in the description.
_WEIGHTS = (0.0, 6.0, 2.0, 2.0, 1.0, 3.0)
FORMAT_VERSION = 3  # 1: docs only (no CJK table, no user_version); 2: no `keys` (rowids)
_COLUMNS = "id UNINDEXED, title, brand, category, description, tags"
_INSERT = "INSERT INTO {table} (rowid, id, title, brand, category, description, tags) "
_INSERT += "VALUES (?, ?, ?, ?, ?, ?, ?)"


def cjk_index_text(text: str) -> str:
    """Every CJK character and every pair of neighbours, space-separated."""
    out: list[str] = []
    for run in _CJK.findall(text):
        out.extend(run)
        out.extend(run[i : i + 2] for i in range(len(run) - 1))
    return " ".join(out)


def cjk_query_terms(text: str) -> list[str]:
    """A run's bigrams (its single character when it has one): what the query must share."""
    terms: list[str] = []
    for run in _CJK.findall(text):
        terms.extend([run] if len(run) == 1 else [run[i : i + 2] for i in range(len(run) - 1)])
    return list(dict.fromkeys(terms))


class LexicalIndex:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False)
        # WAL + synchronous=NORMAL: a commit appends to the WAL without an fsync (one happens
        # at each checkpoint). A committed write survives a crash of the process (the WAL is
        # in the OS's cache); only an OS crash or power loss may drop the last commits, and
        # the file stays consistent. FULL fsyncs every commit, a few ms per upsert for an
        # index that the indexer can refill from the store anyway.
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._lock = threading.Lock()
        self.rebuilt = False  # an older format was dropped: the caller must refill
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version != FORMAT_VERSION:
            had = self._db.execute(
                "SELECT count(*) FROM sqlite_master WHERE name IN ('docs', 'docs_cjk')"
            ).fetchone()[0]
            self._db.execute("DROP TABLE IF EXISTS docs")
            self._db.execute("DROP TABLE IF EXISTS docs_cjk")
            self._db.execute("DROP TABLE IF EXISTS keys")
            self.rebuilt = bool(had)
        self._db.execute(
            f"CREATE VIRTUAL TABLE IF NOT EXISTS docs USING fts5({_COLUMNS}, "
            "tokenize='porter unicode61 remove_diacritics 2')"
        )
        self._db.execute(
            f"CREATE VIRTUAL TABLE IF NOT EXISTS docs_cjk USING fts5({_COLUMNS}, "
            "tokenize='unicode61')"
        )
        self._db.execute("CREATE TABLE IF NOT EXISTS keys (id TEXT PRIMARY KEY)")
        self._db.execute(f"PRAGMA user_version = {FORMAT_VERSION}")
        self._db.commit()

    def _rowids(self, ids: list[str]) -> dict[str, int]:
        out: dict[str, int] = {}
        for i in range(0, len(ids), 500):  # well under SQLite's bound-variable limit
            chunk = ids[i : i + 500]
            q = f"SELECT id, rowid FROM keys WHERE id IN ({','.join('?' * len(chunk))})"
            out.update(self._db.execute(q, chunk).fetchall())
        return out

    def upsert(self, products: Iterable[Product]) -> None:
        """Replace the products' rows: one transaction, rows found by rowid (see above)."""
        latest = {p.id: p for p in products}  # last one wins, as in the store
        if not latest:
            return
        with self._lock:
            ids = list(latest)
            self._db.executemany("INSERT OR IGNORE INTO keys (id) VALUES (?)", [(i,) for i in ids])
            rowid = self._rowids(ids)
            rows = [
                (rowid[p.id], p.id, p.title, p.brand, p.category, p.description, " ".join(p.tags))
                for p in latest.values()
            ]
            cjk = [(r[0], r[1], *(cjk_index_text(c or "") for c in r[2:])) for r in rows]
            cjk = [r for r in cjk if any(r[2:])]
            old = [(r[0],) for r in rows]
            self._db.executemany("DELETE FROM docs WHERE rowid = ?", old)
            self._db.executemany("DELETE FROM docs_cjk WHERE rowid = ?", old)
            self._db.executemany(_INSERT.format(table="docs"), rows)
            self._db.executemany(_INSERT.format(table="docs_cjk"), cjk)
            self._db.commit()

    def remove(self, ids: Iterable[str]) -> None:
        with self._lock:
            keys = [(r,) for r in self._rowids(list(dict.fromkeys(ids))).values()]
            self._db.executemany("DELETE FROM docs WHERE rowid = ?", keys)
            self._db.executemany("DELETE FROM docs_cjk WHERE rowid = ?", keys)
            self._db.executemany("DELETE FROM keys WHERE rowid = ?", keys)
            self._db.commit()

    def _bm25(self, table: str, terms: list[str], k: int) -> list[tuple[str, float]]:
        # Quoted terms joined by OR: any may match, and user text is never FTS syntax.
        match = " OR ".join('"' + t.replace('"', '""') + '"' for t in terms)
        weights = ", ".join(str(w) for w in _WEIGHTS)
        sql = (
            f"SELECT id, bm25({table}, {weights}) AS s FROM {table} "
            f"WHERE {table} MATCH ? ORDER BY s LIMIT ?"
        )
        with self._lock:
            rows = self._db.execute(sql, (match, k)).fetchall()
        return [(pid, -float(s)) for pid, s in rows]

    def search(self, query: str, k: int) -> list[tuple[str, float]]:
        """Top-k (id, score) with score = -bm25 (higher is better); English words on `docs`,
        CJK text on `docs_cjk`, scores summed per product."""
        if k <= 0:
            return []
        cjk_terms = cjk_query_terms(query)
        rest = _CJK.sub(" ", query.lower()) if cjk_terms else query.lower()
        terms = [t for t in _WORD.findall(rest) if len(t) > 1 or not t.isascii()]
        terms = list(dict.fromkeys(terms))
        results = [self._bm25("docs", terms, k)] if terms else []
        if cjk_terms:
            results.append(self._bm25("docs_cjk", cjk_terms, k))
        if len(results) == 1:
            return results[0]
        total: dict[str, float] = {}
        for part in results:
            for pid, s in part:
                total[pid] = total.get(pid, 0.0) + s
        return sorted(total.items(), key=lambda x: (-x[1], x[0]))[:k]

    def count(self) -> int:
        with self._lock:
            return self._db.execute("SELECT count(*) FROM docs").fetchone()[0]
