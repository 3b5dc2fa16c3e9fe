"""Catalogue hardening (issue 13): bounded attributes and tags, validators that fail as
ValueError (422), ingest that no single row can stop, column aliases and --map, race-free
upserts and appends, terminal-safe CLI output, declared dependencies."""

from __future__ import annotations

import ast
import csv
import io
import json
import re
import sys
import threading
import tomllib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path

import pytest
from pydantic import ValidationError
from rich.console import Console
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from typer.testing import CliRunner

import service.cli as cli
from service.catalog.ingest import IngestError, ingest_file, parse_column_map
from service.catalog.models import MAX_JSON_DEPTH, Interaction, Product
from service.catalog.store import CatalogStore
from service.cli import app
from service.config import get_settings
from tests.postgres import fresh_database

REPO = Path(__file__).resolve().parent.parent.parent
FIXTURES = REPO / "tests" / "fixtures"


def nested(levels: int) -> dict:
    """An attributes object `levels` deep: nested(1) == {"k": 1}."""
    d: object = 1
    for _ in range(levels):
        d = {"k": d}
    return d  # type: ignore[return-value]


@pytest.fixture()
def store(tmp_path: Path) -> CatalogStore:
    return CatalogStore(f"sqlite:///{tmp_path / 'db.sqlite'}")


@pytest.fixture(params=["sqlite", "postgresql"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CatalogStore]:
    """SQLite and a real PostgreSQL (tests/postgres.py: a fresh database per test)."""
    if request.param == "sqlite":
        yield CatalogStore(f"sqlite:///{tmp_path / 'db.sqlite'}")
        return
    with fresh_database() as url:
        store = CatalogStore(url)
        try:
            yield store
        finally:
            store.engine.dispose()


def errors_of(exc: pytest.ExceptionInfo[ValidationError]) -> dict[str, str]:
    return {".".join(map(str, e["loc"])): e["msg"] for e in exc.value.errors()}


# -- 1. attributes and tags are bounded ------------------------------------------------
def test_deep_attributes_are_refused_naming_the_field() -> None:
    assert Product(id="ok", title="t", attributes=nested(MAX_JSON_DEPTH)).attributes
    with pytest.raises(ValidationError) as e:
        Product(id="deep", title="t", attributes=nested(300))
    assert "nested more than 8 levels" in errors_of(e)["attributes"]
    # The same as text (a CSV cell), and lists count as levels too.
    with pytest.raises(ValidationError) as e:
        Product(id="deep", title="t", attributes=json.dumps({"a": [[[[[[[[[1]]]]]]]]]}))
    assert "attributes" in errors_of(e)


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("attributes", {"long": "x" * 20_000}, "longer than 10,000"),
        ("attributes", {f"k{i}": list(range(20)) for i in range(60)}, "keys and items"),
        ("attributes", {"k" * 200: 1}, "key is longer"),
        ("attributes", {"nan": float("nan")}, "finite"),
        ("attributes", "x" * 70_000, "characters; at most"),
        ("tags", ["t"] * 101, "at most 100"),
        ("tags", ["t" * 200], "tag is longer"),
        ("tags", "[" * 50_000, "tags"),
        ("price", float("inf"), "finite"),
    ],
)
def test_size_bounds(field: str, value: object, problem: str) -> None:
    with pytest.raises(ValidationError) as e:
        Product.model_validate({"id": "p", "title": "t", field: value})
    assert problem in errors_of(e)[field]


def test_deep_product_is_rejected_by_ingest_and_reads_stay_whole(
    store: CatalogStore, tmp_path: Path
) -> None:
    rows = [
        {"id": "p-1", "title": "Fine"},
        {"id": "p-deep", "title": "Deep", "attributes": nested(300)},
        {"id": "p-2", "title": "Also fine", "attributes": {"size": {"eu": 42}}},
    ]
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    report = ingest_file(store, path, "products")
    assert report.stored == 2
    assert [(r.line, r.reason.split(":")[0]) for r in report.rejected] == [(2, "attributes")]
    for p in store.iter_products():
        p.model_dump_json()  # every page that lists products serialises them


def test_a_deep_row_stored_before_the_bounds_is_still_served(store: CatalogStore) -> None:
    store.upsert_products([Product(id="old", title="Stored long ago", tags=["a"])])
    with store.engine.begin() as c:  # what an older version let in
        c.execute(
            text("UPDATE products SET attributes = :a WHERE id = 'old'"),
            {"a": json.dumps(nested(300))},
        )
    p = store.get_product("old")
    assert p.attributes == {} and p.tags == ["a"]
    assert json.loads(p.model_dump_json())["title"] == "Stored long ago"
    assert [x.id for x in store.iter_products()] == ["old"]


# -- 2. validators fail as ValueError (a 422), never OverflowError/RecursionError -------
@pytest.mark.parametrize("ts", [1e20, -1e20, float("inf"), float("nan"), "1e20", "Infinity", True])
def test_out_of_range_ts_is_a_validation_error(ts: object) -> None:
    with pytest.raises(ValidationError) as e:
        Interaction(user_id="u", product_id="p", ts=ts)
    assert "ts" in errors_of(e)


def test_ts_numbers_as_text_and_offsets() -> None:
    def ts(v: object) -> str:
        return Interaction(user_id="u", product_id="p", ts=v).naive_utc_ts().isoformat()

    assert ts("1.5e9") == "2017-07-14T02:40:00"
    assert ts(" 1700000000 ") == ts(1_700_000_000) == "2023-11-14T22:13:20"
    assert ts(1_700_000_000_000) == "2023-11-14T22:13:20"  # milliseconds, as pydantic reads
    assert ts("2026-01-01T10:00:00+02:00") == "2026-01-01T08:00:00"
    with pytest.raises(ValidationError):  # year 0 in UTC
        Interaction(user_id="u", product_id="p", ts="0001-01-01T00:00:00+01:00")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 1e309, "NaN", "-inf"])
def test_value_must_be_finite(value: object) -> None:
    with pytest.raises(ValidationError) as e:
        Interaction(user_id="u", product_id="p", value=value)
    assert "value" in errors_of(e)


def test_deep_attributes_text_is_a_validation_error() -> None:
    deep = '{"a":' * 50_000 + "1" + "}" * 50_000
    for text_ in (deep, '{"a":' * 5_000 + "1" + "}" * 5_000):
        with pytest.raises(ValidationError) as e:
            Product(id="p", title="t", attributes=text_)
        assert "attributes" in errors_of(e)
    # The JSON body of the API holds 1e309 as a float infinity.
    with pytest.raises(ValidationError):
        Interaction.model_validate_json('{"user_id": "u", "product_id": "p", "value": 1e309}')


# -- 3. one bad row never stops an ingest ------------------------------------------------
def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def good_products(n: int) -> list[list[str]]:
    return [[f"g-{i}", f"Good product {i}", "9.5", '{"colour": "red"}'] for i in range(n)]


def test_csv_with_huge_field_and_deep_attributes(store: CatalogStore, tmp_path: Path) -> None:
    good = good_products(12)
    rows = (
        good[:4]
        + [["big", "x" * 200_000, "1", "{}"]]  # a 200k-character field
        + good[4:8]
        + [["deep", "Deep", "1", '{"a":' * 50_000 + "1" + "}" * 50_000]]
        + good[8:]
        + [["deep2", "Deep", "1", '{"a":' * 500 + "1" + "}" * 500]]
    )
    path = write_csv(tmp_path / "p.csv", ["id", "title", "price", "attributes"], rows)
    report = ingest_file(store, path, "products", batch_size=5)
    assert report.stored == 12 and store.count_products() == 12
    reasons = {r.line: r.reason for r in report.rejected}
    assert sorted(reasons) == [6, 11, 16]
    assert reasons[6].startswith("title") and reasons[11].startswith("attributes")
    assert "nested" in reasons[16]


def test_interactions_with_bad_ts_skip_only_that_row(store: CatalogStore, tmp_path: Path) -> None:
    store.upsert_products([Product(id=f"g-{i}", title="x") for i in range(3)])
    events = [
        {"user_id": "u1", "product_id": "g-0", "ts": 1_700_000_000},
        {"user_id": "u1", "product_id": "g-1", "ts": 1e20},
        {"user_id": "u1", "product_id": "g-1", "ts": "-1e20"},
        '{"user_id": "u1", "product_id": "g-2", "ts": Infinity}',
        {"user_id": "u1", "product_id": "g-2", "value": "NaN", "ts": "1.7e9"},
        '{"user_id": "u2", "product_id": "g-2", "extra": ' + "[" * 50_000 + "]" * 50_000 + "}",
        {"user_id": "u1", "product_id": "g-2", "ts": "1.7e9"},
        {"user_id": "u2", "product_id": "g-1", "ts": "2026-01-01T00:00:00Z"},
    ]
    path = tmp_path / "i.jsonl"
    path.write_text("\n".join(e if isinstance(e, str) else json.dumps(e) for e in events) + "\n")
    report = ingest_file(store, path, "interactions")
    assert report.stored == 3 and store.count_interactions() == 3
    assert [r.line for r in report.rejected] == [2, 3, 4, 5, 6]


def test_cli_ingest_reports_bad_rows_stores_good_ones_and_exits_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = good_products(12) + [
        ["big", "x" * 200_000, "1", "{}"],
        ["deep", "Deep", "1", '{"a":' * 50_000 + "1" + "}" * 50_000],
    ]
    path = write_csv(tmp_path / "p.csv", ["id", "title", "price", "attributes"], rows)
    result, data = run_cli(tmp_path, monkeypatch, ["ingest", "products", str(path), "--no-index"])
    assert result.exit_code == 1, result.output
    assert "12 stored" in result.stdout and "2 rejected" in result.stdout
    assert "line 14: title" in result.stdout and "line 15: attributes" in result.stdout
    assert "Traceback" not in result.output
    assert CatalogStore(f"sqlite:///{data / 'recsmith.db'}").count_products() == 12


def run_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str]
) -> tuple[object, Path]:
    data = tmp_path / "data"
    monkeypatch.setenv("RECSMITH_DATA_DIR", str(data))
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, args, catch_exceptions=False)
    finally:
        get_settings.cache_clear()
    return result, data


# -- 6. aliases and --map ----------------------------------------------------------------
def test_recbole_and_log_style_columns_are_understood(store: CatalogStore, tmp_path: Path) -> None:
    items = tmp_path / "shop.csv"
    write_csv(items, ["SKU", "Name", "Price"], [["a-1", "Alpha", "3"], ["a-2", "Beta", "4"]])
    assert ingest_file(store, items, "products").stored == 2
    assert store.get_product("a-1").title == "Alpha"

    inter = tmp_path / "ml.inter"  # RecBole atomic file: tab-separated, typed headers
    inter.write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        "u1\ta-1\t4\t881250949\nu1\ta-2\t3\t891717742\n"
    )
    report = ingest_file(store, inter, "interactions")
    assert (report.stored, report.rejected) == (2, [])
    assert store.user_history("u1")[0][1] == "rating"

    log = write_csv(
        tmp_path / "events.csv",
        ["visitorid", "itemid", "event_type", "timestamp"],
        [["v1", "a-1", "addtocart", "1433221332117"], ["v1", "a-2", "View", "1.5e9"]],
    )
    report = ingest_file(store, log, "interactions")
    assert (report.stored, report.rejected) == (2, [])
    assert {e for _, e, _ in store.user_history("v1")} == {"cart", "view"}


def test_column_map(store: CatalogStore, tmp_path: Path) -> None:
    store.upsert_products([Product(id="a-1", title="x")])
    path = write_csv(tmp_path / "e.csv", ["who", "what", "when"], [["u9", "a-1", "1700000000"]])
    bare = ingest_file(store, path, "interactions")
    assert bare.stored == 0 and "user_id" in bare.rejected[0].reason  # unknown names: rejected
    mapping = parse_column_map(["who=user_id", "what = product_id", "when=ts"], "interactions")
    assert ingest_file(store, path, "interactions", column_map=mapping).stored == 1
    for bad, says in [
        (["when"], "SOURCE=FIELD"),
        (["when=tss"], "not a field of interactions"),
        (["a=ts", "b=ts"], "two columns"),
    ]:
        with pytest.raises(IngestError, match=says):
            parse_column_map(bad, "interactions")
    with pytest.raises(IngestError, match="no column 'whence'"):
        ingest_file(store, path, "interactions", column_map={"whence": "ts"})


def test_cli_map_option(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    products = write_csv(tmp_path / "p.csv", ["ref", "label"], [["m-1", "Mapped"]])
    result, data = run_cli(
        tmp_path,
        monkeypatch,
        ["ingest", "products", str(products), "--map", "ref=id", "--map", "label=title"]
        + ["--no-index"],
    )
    assert result.exit_code == 0, result.output
    assert CatalogStore(f"sqlite:///{data / 'recsmith.db'}").get_product("m-1").title == "Mapped"
    for bad in (["--map", "ref"], ["--map", "ref=identifier"], ["--map", "nope=id"]):
        result, _ = run_cli(
            tmp_path, monkeypatch, ["ingest", "products", str(products), "--no-index", *bad]
        )
        assert result.exit_code == 2, result.output
        lines = [x for x in result.output.splitlines() if x.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:"), result.output


# -- 4, 5. concurrent upserts and appends ------------------------------------------------
def test_concurrent_upserts_store_each_once(any_store: CatalogStore) -> None:
    store = any_store
    workers, rounds = 8, 5
    for r in range(rounds):
        ids = [f"c{r}-{i}" for i in range(12)]
        start = threading.Barrier(workers)

        def upsert(w: int, ids: list[str] = ids, start: threading.Barrier = start) -> tuple:
            mine = ids[w : w + 6]  # neighbours overlap in 5 of 6 ids
            start.wait()
            return store.upsert_products([Product(id=i, title=f"Item {i}") for i in mine])

        with ThreadPoolExecutor(workers) as pool:
            results = list(pool.map(upsert, range(workers)))
        touched = {i for w in range(workers) for i in ids[w : w + 6]}
        assert sum(ins for ins, _, _ in results) == len(touched)
        assert sum(upd for _, upd, _ in results) == 0
        assert sorted(i for _, _, changed in results for i in changed) == sorted(touched)
    assert store.count_products() == rounds * 12
    # Identical content again: unchanged; a changed title: exactly one update.
    assert store.upsert_products([Product(id="c0-0", title="Item c0-0")]) == (0, 0, [])
    assert store.upsert_products([Product(id="c0-0", title="New")]) == (0, 1, ["c0-0"])


def test_concurrent_appends_report_exact_counts(any_store: CatalogStore) -> None:
    store, workers = any_store, 8
    store.upsert_products([Product(id="c0-1", title="x")])
    start = threading.Barrier(workers)

    def append(w: int) -> int:
        events = [
            Interaction(user_id=f"u{(w + k) % 4}", product_id="c0-1", ts=1_700_000_000 + k)
            for k in range(40)
        ]
        start.wait()
        return store.add_interactions(events)

    with ThreadPoolExecutor(workers) as pool:
        added = list(pool.map(append, range(workers)))
    assert sum(added) == store.count_interactions() == 4 * 40


# -- 7. the CLI prints no control characters ---------------------------------------------
def test_cli_tables_escape_control_characters(monkeypatch: pytest.MonkeyPatch) -> None:
    buf = io.StringIO()
    monkeypatch.setattr(cli, "out", Console(file=buf, width=200, force_terminal=False))
    row = {
        "product_id": "p-1",
        "title": "\x1b[2J\x1b[31mRED\x1b[0m \u202egnp.exe [bold]x[/] \x07",
        "category": "A\rB",
        "price": 1.0,
        "currency": "USD",
        "score": 0.5,
        "sources": {"dense": 1},
        "why": "[/]",  # markup that used to raise MarkupError
    }
    cli._show([row], False, "search: \x1b]0;owned\x07")
    printed = buf.getvalue()
    assert not any(c in printed for c in "\x1b\u202e\x07\r")
    assert "\\x1b[31mRED" in printed and "\\u202e" in printed and "[bold]x[/]" in printed


# -- 8. every third-party module the package imports is declared --------------------------
def test_imported_distributions_are_declared() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = {
        d.split(";")[0].split("[")[0].split("=")[0].split(">")[0].split("<")[0].strip().lower()
        for d in project["dependencies"]
    }
    # What a declared distribution itself requires comes with it (starlette with fastapi).
    for name in list(declared):
        for req in metadata.requires(name) or []:
            if "extra ==" not in req:
                declared.add(re.split(r"[\s;<>=!~\[(]", req, maxsplit=1)[0].lower())
    dists = metadata.packages_distributions()
    missing = set()
    for path in (REPO / "service").rglob("*.py"):
        for node in ast.parse(path.read_text()).body:  # module-level imports only
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top in {"service", "eval"}:
                    continue
                found = {d.lower().replace("_", "-") for d in dists.get(top, [top])}
                if not found & {d.replace("_", "-") for d in declared}:
                    missing.add(f"{top} ({path.relative_to(REPO)})")
    assert not missing, f"imported but not in pyproject dependencies: {sorted(missing)}"


def test_upsert_and_append_counts_on_each_database(any_store: CatalogStore) -> None:
    store = any_store
    many = [Product(id=f"m-{i:04d}", title=f"Item {i}") for i in range(1_200)]  # > 2 chunks
    ins, upd, changed = store.upsert_products(many)
    assert (ins, upd, len(changed)) == (1_200, 0, 1_200)
    batch = [
        Product(id="m-0001", title="Item 1"),  # identical: unchanged
        Product(id="m-0002", title="first"),  # repeated id: the last one wins
        Product(id="m-0002", title="Item 2, renamed", attributes={"a": {"b": 1}}),
        Product(id="m-new", title="New"),
    ]
    assert store.upsert_products(batch) == (1, 1, ["m-0002", "m-new"])
    assert store.get_product("m-0002").attributes == {"a": {"b": 1}}
    assert store.upsert_products(batch) == (0, 0, [])
    events = [
        Interaction(user_id="u", product_id="m-0001", ts=1_700_000_000 + k % 700)
        for k in range(1_400)  # each event twice in one call, over chunk boundaries
    ]
    assert store.add_interactions(events) == 700
    assert store.add_interactions(events) == 0
    assert store.count_interactions() == 700


def test_a_field_past_the_csv_limit_loses_only_its_row(store: CatalogStore, tmp_path: Path) -> None:
    rows = good_products(3)
    rows.insert(1, ["huge", "y" * (17 * 1024 * 1024), "1", "{}"])  # past the 16 MiB limit
    path = write_csv(tmp_path / "p.csv", ["id", "title", "price", "attributes"], rows)
    report = ingest_file(store, path, "products")
    assert report.stored == 3
    assert [(r.line, r.reason.split(":")[0]) for r in report.rejected] == [
        (3, "unreadable CSV row")
    ]


def test_rows_the_database_refuses_are_rejected_alone(
    store: CatalogStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = store.upsert_products

    def refuse_one(products: list[Product]) -> tuple[int, int, list[str]]:
        if any(p.id == "g-2" for p in products):
            raise IntegrityError("INSERT ...", {}, Exception("CHECK constraint failed"))
        return real(products)

    monkeypatch.setattr(store, "upsert_products", refuse_one)
    path = write_csv(tmp_path / "p.csv", ["id", "title", "price", "attributes"], good_products(6))
    report = ingest_file(store, path, "products", batch_size=4)
    assert report.stored == 5 and store.count_products() == 5
    assert [(r.line, r.reason) for r in report.rejected] == [
        (4, "the database refused it: CHECK constraint failed")
    ]
