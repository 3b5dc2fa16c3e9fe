"""Ingest products and interactions from CSV, TSV, JSONL or Parquet.

Every row is validated; good rows are upserted in batches (one transaction each, so a
crash half-way leaves whole batches stored and nothing half-written); every bad row is
reported with its line number and reason and written to a rejects file. No single row
can stop an ingest: a row that cannot be parsed, validated or stored is rejected alone.

Column names are matched loosely (case, spaces, RecBole's `name:type` suffixes) and common
aliases are understood (`timestamp` for `ts`, `item_id` for `product_id`, `name` for
`title`, ...); `column_map` (the CLI's `--map SOURCE=FIELD`) names any other column.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pyarrow.parquet as pq
from pydantic import BaseModel, ValidationError
from sqlalchemy.exc import InterfaceError, OperationalError, SQLAlchemyError

from service.catalog.models import Interaction, Product
from service.catalog.store import CatalogStore

Kind = Literal["products", "interactions"]
FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".inter": "tsv",  # RecBole atomic files
    ".item": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
}
FORMAT_NAMES = ("csv", "tsv", "jsonl", "parquet")

# Python's csv module refuses fields over 128 KiB with an exception that used to end the
# whole ingest; a long field is the row's problem (validation rejects it), not the file's.
CSV_FIELD_LIMIT = 16 * 1024 * 1024

MODELS: dict[str, type[BaseModel]] = {"products": Product, "interactions": Interaction}

# Other names for our fields, as RecBole, shop exports and event logs spell them. Used only
# when the row does not have the field under its own name.
ALIASES: dict[str, dict[str, str]] = {
    "products": {
        "product_id": "id",
        "item_id": "id",
        "sku": "id",
        "name": "title",
        "product_name": "title",
        "item_name": "title",
        "movie_title": "title",
        "desc": "description",
        "manufacturer": "brand",
        "vendor": "brand",
        "tag": "tags",
        "keywords": "tags",
        "attrs": "attributes",
        "lang": "language",
        "available": "in_stock",
        "instock": "in_stock",
    },
    "interactions": {
        "user": "user_id",
        "userid": "user_id",
        "customer_id": "user_id",
        "visitor_id": "user_id",
        "visitorid": "user_id",
        "item_id": "product_id",
        "itemid": "product_id",
        "item": "product_id",
        "product": "product_id",
        "sku": "product_id",
        "event_type": "event",
        "action": "event",
        "type": "event",
        "behavior": "event",
        "rating": "value",
        "score": "value",
        "timestamp": "ts",
        "time": "ts",
        "datetime": "ts",
        "date": "ts",
        "event_time": "ts",
    },
}
# Event names other logs use (RetailRocket, Taobao, GA exports), read as ours.
EVENT_ALIASES = {
    "click": "view",
    "pv": "view",
    "page_view": "view",
    "detail": "view",
    "addtocart": "cart",
    "add_to_cart": "cart",
    "add-to-cart": "cart",
    "fav": "cart",
    "buy": "purchase",
    "order": "purchase",
    "transaction": "purchase",
    "checkout": "purchase",
    "rate": "rating",
    "review": "rating",
}
_RECBOLE_TYPE = re.compile(r":(token|token_seq|float|float_seq)$", re.IGNORECASE)
_SEPARATORS = re.compile(r"[\s\-]+")


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
        if fmt not in FORMAT_NAMES:
            raise IngestError(f"unknown format {fmt!r}: use {', '.join(FORMAT_NAMES)}")
        return fmt
    found = FORMATS.get(path.suffix.lower())
    if not found:
        raise IngestError(
            f"cannot tell the format of {path.name!r} from its extension; "
            "use .csv, .tsv, .jsonl or .parquet, or pass --format"
        )
    return found


def _csv_reader(f: Any, fmt: str) -> csv.DictReader:
    csv.field_size_limit(max(csv.field_size_limit(), CSV_FIELD_LIMIT))
    if fmt == "tsv":  # tab-separated files do not quote (RecBole's atomic files do not)
        return csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
    return csv.DictReader(f)


def read_rows(path: Path, fmt: str) -> Iterator[tuple[int, dict[str, Any] | None, str]]:
    """(line number, row or None if unparsable, raw text). Line numbers are 1-based file
    lines for CSV/TSV (header = line 1) and JSONL, row numbers + 1 for Parquet."""
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
                except RecursionError:
                    yield n, None, f"JSON nested too deeply\t{line.rstrip()}"
                    continue
                except ValueError as e:  # e.g. an integer beyond Python's digit limit
                    yield n, None, f"not valid JSON: {e}\t{line.rstrip()}"
                    continue
                if not isinstance(obj, dict):
                    yield n, None, f"not a JSON object\t{line.rstrip()}"
                    continue
                yield n, obj, line.rstrip("\n")
    elif fmt in {"csv", "tsv"}:
        with path.open(encoding="utf-8", errors="replace", newline="") as f:
            reader = _csv_reader(f, fmt)
            try:
                header = reader.fieldnames
            except csv.Error as e:
                raise IngestError(f"{path.name}: unreadable header row ({e})") from None
            if not header:
                raise IngestError(f"{path.name}: empty {fmt.upper()} (no header row)")
            last = reader.line_num
            while True:
                try:
                    row = next(reader)
                except StopIteration:
                    break
                except csv.Error as e:  # the reader carries on with the next line
                    last = max(reader.line_num, last + 1)
                    yield last, None, f"unreadable {fmt.upper()} row: {e}\t"
                    continue
                n = last = reader.line_num
                if None in row:  # more cells than headers
                    yield n, None, f"more columns than the header has\t{row}"
                    continue
                clean = {k.strip(): v for k, v in row.items() if k and v is not None}
                yield n, clean, json.dumps(row, ensure_ascii=False)
    elif fmt == "parquet":
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


def read_header(path: Path, fmt: str) -> list[str] | None:
    """Column names of a CSV/TSV/Parquet file; None for JSONL (each row has its own)."""
    try:
        if fmt == "parquet":
            return list(pq.ParquetFile(path).schema_arrow.names)
        if fmt in {"csv", "tsv"}:
            with path.open(encoding="utf-8", errors="replace", newline="") as f:
                return [h.strip() for h in _csv_reader(f, fmt).fieldnames or []]
    except Exception:  # noqa: BLE001 - read_rows reports an unreadable file clearly
        return None
    return None


def check_map_columns(path: Path, fmt: str, column_map: dict[str, str]) -> None:
    """IngestError when a mapped column is not in the file's header (CSV/TSV/Parquet)."""
    header = read_header(path, fmt) if column_map else None
    missing = [c for c in column_map if header is not None and c not in header]
    if missing:
        raise IngestError(
            f"--map: {path.name} has no column {missing[0]!r} "
            f"(its columns: {', '.join(header[:30])})"  # type: ignore[index]
        )


def _canonical(key: str) -> str:
    """`Item ID`, `item-id` and RecBole's `item_id:token` all read as `item_id`."""
    return _SEPARATORS.sub("_", _RECBOLE_TYPE.sub("", key.strip())).lower()


def parse_column_map(specs: list[str] | None, kind: Kind) -> dict[str, str]:
    """`["timestamp=ts", "item=product_id"]` -> {source column: field}; IngestError on a
    malformed spec, a field the kind does not have, or a column or field named twice."""
    fields = MODELS[kind].model_fields
    out: dict[str, str] = {}
    for spec in specs or []:
        source, sep, target = (x.strip() for x in spec.partition("="))
        if not sep or not source or not target:
            raise IngestError(f"--map {spec!r}: expected SOURCE=FIELD, e.g. timestamp=ts")
        if target not in fields:
            raise IngestError(
                f"--map {spec!r}: {target!r} is not a field of {kind}; "
                f"use one of {', '.join(fields)}"
            )
        if source in out:
            raise IngestError(f"--map: column {source!r} is mapped twice")
        if target in out.values():
            raise IngestError(f"--map: two columns are mapped to {target!r}")
        out[source] = target
    return out


def normalize_row(
    row: dict[str, Any], kind: Kind, column_map: dict[str, str] | None = None
) -> dict[str, Any]:
    """Rename columns to our field names: the explicit map first, then exact names (any
    case), then aliases for fields still missing. Unknown columns are kept as they are,
    so validation names them."""
    fields = MODELS[kind].model_fields
    aliases = ALIASES[kind]
    column_map = column_map or {}
    out: dict[str, Any] = {}
    later: list[tuple[str, str, Any]] = []
    for key, value in row.items():
        if key in column_map:
            out[column_map[key]] = value
            continue
        name = _canonical(key)
        if name in fields and name not in out:
            out[name] = value
        else:
            later.append((key, name, value))
    rated = False
    for key, name, value in later:
        target = aliases.get(name)
        if target and target not in out:
            out[target] = value
            rated = rated or name == "rating"
        else:
            out[key] = value
    if kind == "interactions":
        event = out.get("event")
        if isinstance(event, str):
            e = event.strip().lower()
            out["event"] = EVENT_ALIASES.get(e, e)
        elif event is None and rated:  # a ratings file (RecBole .inter) has no event column
            out["event"] = "rating"
    return out


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
    column_map: dict[str, str] | None = None,
) -> IngestReport:
    path = Path(path)
    if not path.exists():
        raise IngestError(f"no such file: {path}")
    if not path.is_file():
        raise IngestError(f"not a file: {path}")
    fmt = detect_format(path, fmt)
    column_map = column_map or {}
    check_map_columns(path, fmt, column_map)
    model = MODELS[kind]
    report = IngestReport(kind=kind, path=str(path))
    batch: list[tuple[int, str, Any]] = []  # (line, raw, validated item)
    known_products: set[str] | None = None

    def store_items(items: list[Any]) -> None:
        if kind == "products":
            ins, upd, changed = store.upsert_products(items)
            report.stored += ins + upd
            report.unchanged += len({p.id for p in items}) - ins - upd
            report.changed_ids.extend(changed)
        else:
            new = store.add_interactions(items)
            report.stored += new
            report.unchanged += len(items) - new

    def flush() -> None:
        nonlocal batch
        if not batch:
            return
        pending, batch = batch, []
        try:
            store_items([item for _, _, item in pending])
            return
        except (OperationalError, InterfaceError):
            raise  # the database itself is unwell (locked, gone): not the rows' fault
        except SQLAlchemyError:
            pass
        # The database refused something in the batch: store row by row, so only the rows
        # it refuses are rejected and every good one is kept.
        for line, raw, item in pending:
            try:
                store_items([item])
            except (OperationalError, InterfaceError):
                raise
            except SQLAlchemyError as e:
                cause = getattr(e, "orig", None) or e
                report.rejected.append(Reject(line, f"the database refused it: {cause}", raw))

    for line, row, raw in read_rows(path, fmt):
        report.rows += 1
        if progress:
            progress(1)
        if row is None:
            reason, _, raw = raw.partition("\t")
            report.rejected.append(Reject(line, reason, raw))
            continue
        try:
            item: Any = model.model_validate(normalize_row(row, kind, column_map))
        except ValidationError as e:
            report.rejected.append(Reject(line, _reason(e), raw))
            continue
        except Exception as e:  # noqa: BLE001 - one row never stops the file
            report.rejected.append(Reject(line, f"{type(e).__name__}: {e}"[:500], raw))
            continue
        if kind == "interactions":
            if known_products is None:
                known_products = set(store.content_hashes())
            if item.product_id not in known_products:
                report.rejected.append(
                    Reject(line, f"product_id: unknown product {item.product_id!r}", raw)
                )
                continue
        batch.append((line, raw, item))
        if len(batch) >= batch_size:
            flush()
    flush()
    report.rejected.sort(key=lambda r: r.line)

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
            return pq.ParquetFile(path).metadata.num_rows
        with path.open("rb") as f:
            n = sum(1 for _ in f)
        return max(n - 1, 0) if fmt in {"csv", "tsv"} else n
    except Exception:  # noqa: BLE001
        return None
