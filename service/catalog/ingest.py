"""Ingest products and interactions from CSV, JSONL or Parquet.

Every row is validated; good rows are upserted in batches (one transaction each, so a
crash half-way leaves whole batches stored and nothing half-written); every bad row is
reported with its line number and reason and written to a rejects file.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from service.catalog.models import Interaction, Product
from service.catalog.store import CatalogStore

Kind = Literal["products", "interactions"]
FORMATS = {
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
}


class IngestError(ValueError):
    """The file as a whole cannot be read (missing, unknown format, unreadable)."""


@dataclass
class Reject:
    line: int
    reason: str
    raw: str


@dataclass
class IngestReport:
    kind: str
    path: str
    rows: int = 0
    stored: int = 0  # new or changed
    unchanged: int = 0
    rejected: list[Reject] = field(default_factory=list)
    rejects_file: str | None = None
    changed_ids: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "path": self.path,
            "rows": self.rows,
            "stored": self.stored,
            "unchanged": self.unchanged,
            "rejected": len(self.rejected),
            "rejects_file": self.rejects_file,
            "errors": [{"line": r.line, "reason": r.reason} for r in self.rejected[:50]],
        }


def detect_format(path: Path, fmt: str | None = None) -> str:
    if fmt:
        if fmt not in {"csv", "jsonl", "parquet"}:
            raise IngestError(f"unknown format {fmt!r}: use csv, jsonl or parquet")
        return fmt
    found = FORMATS.get(path.suffix.lower())
    if not found:
        raise IngestError(
            f"cannot tell the format of {path.name!r} from its extension; "
            "use .csv, .jsonl or .parquet, or pass --format"
        )
    return found


def read_rows(path: Path, fmt: str) -> Iterator[tuple[int, dict[str, Any] | None, str]]:
    """(line number, row or None if unparsable, raw text). Line numbers are 1-based file
    lines for CSV (header = line 1) and JSONL, row numbers + 1 for Parquet."""
    if fmt == "jsonl":
        with path.open(encoding="utf-8", errors="replace") as f:
            for n, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    yield n, None, f"not valid JSON: {e.msg}\t{line.rstrip()}"
                    continue
                if not isinstance(obj, dict):
                    yield n, None, f"not a JSON object\t{line.rstrip()}"
                    continue
                yield n, obj, line.rstrip("\n")
    elif fmt == "csv":
        with path.open(encoding="utf-8", errors="replace", newline="") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames:
                raise IngestError(f"{path.name}: empty CSV (no header row)")
            for row in reader:
                n = reader.line_num
                if None in row:  # more cells than headers
                    yield n, None, f"more columns than the header has\t{row}"
                    continue
                clean = {k.strip(): v for k, v in row.items() if k and v is not None}
                yield n, clean, json.dumps(row, ensure_ascii=False)
    elif fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            pf = pq.ParquetFile(path)
        except Exception as e:  # noqa: BLE001 - pyarrow raises many types
            raise IngestError(f"{path.name}: not a readable Parquet file ({e})") from e
        n = 1
        for batch in pf.iter_batches(batch_size=2048):
            for row in batch.to_pylist():
                n += 1
                clean = {k: v for k, v in row.items() if v is not None}
                yield n, clean, json.dumps(row, ensure_ascii=False, default=str)


def _reason(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"]) or "row"
        parts.append(f"{loc}: {e['msg']}")
    return "; ".join(parts)


def ingest_file(
    store: CatalogStore,
    path: str | Path,
    kind: Kind,
    fmt: str | None = None,
    batch_size: int = 500,
    rejects_dir: Path | None = None,
    progress: Callable[[int], None] | None = None,
) -> IngestReport:
    path = Path(path)
    if not path.exists():
        raise IngestError(f"no such file: {path}")
    if not path.is_file():
        raise IngestError(f"not a file: {path}")
    fmt = detect_format(path, fmt)
    model: type[BaseModel] = Product if kind == "products" else Interaction
    report = IngestReport(kind=kind, path=str(path))
    batch: list[Any] = []
    known_products: set[str] | None = None

    def flush() -> None:
        nonlocal batch, known_products
        if not batch:
            return
        if kind == "products":
            ins, upd, changed = store.upsert_products(batch)
            report.stored += ins + upd
            report.unchanged += len({p.id for p in batch}) - ins - upd
            report.changed_ids.extend(changed)
        else:
            new = store.add_interactions(batch)
            report.stored += new
            report.unchanged += len(batch) - new
        batch = []

    for line, row, raw in read_rows(path, fmt):
        report.rows += 1
        if progress:
            progress(1)
        if row is None:
            reason, _, raw = raw.partition("\t")
            report.rejected.append(Reject(line, reason, raw))
            continue
        try:
            item = model.model_validate(row)
        except ValidationError as e:
            report.rejected.append(Reject(line, _reason(e), raw))
            continue
        except (ValueError, TypeError) as e:  # e.g. attributes that are not JSON
            report.rejected.append(Reject(line, str(e), raw))
            continue
        if kind == "interactions":
            if known_products is None:
                known_products = set(store.content_hashes())
            if item.product_id not in known_products:
                report.rejected.append(
                    Reject(line, f"product_id: unknown product {item.product_id!r}", raw)
                )
                continue
        batch.append(item)
        if len(batch) >= batch_size:
            flush()
    flush()

    if report.rejected and rejects_dir is not None:
        rejects_dir.mkdir(parents=True, exist_ok=True)
        out = rejects_dir / f"{path.stem}.{kind}.rejects.jsonl"
        with out.open("w", encoding="utf-8") as f:
            for r in report.rejected:
                f.write(json.dumps({"line": r.line, "reason": r.reason, "raw": r.raw}) + "\n")
        report.rejects_file = str(out)
    return report


def count_rows(path: Path, fmt: str) -> int | None:
    """Row count for a progress bar (cheap for the formats we read)."""
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            return pq.ParquetFile(path).metadata.num_rows
        with path.open("rb") as f:
            n = sum(1 for _ in f)
        return max(n - 1, 0) if fmt == "csv" else n
    except Exception:  # noqa: BLE001
        return None
