"""The `recsmith` command line."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from service.catalog.ingest import (
    IngestError,
    check_map_columns,
    count_rows,
    detect_format,
    ingest_file,
    parse_column_map,
)
from service.catalog.store import NotFound
from service.config import ConfigError, get_settings

app = typer.Typer(
    help="recsmith: product recommendations and copy written by a language model.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
ingest_app = typer.Typer(
    help="Load products or interactions from CSV, JSONL or Parquet.", no_args_is_help=True
)
demo_app = typer.Typer(help="The bundled demo catalogue.", no_args_is_help=True)
app.add_typer(ingest_app, name="ingest")
app.add_typer(demo_app, name="demo")

console = Console(stderr=True)
out = Console()


# C0/C1 controls (ESC sequences recolour or rewrite the terminal), zero-width characters and
# bidi overrides (they reorder what is shown). Product data is anyone's text.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]")


def printable(value: Any) -> str:
    """Text safe for a terminal: control characters shown as escapes (\\x1b, \\u202e)."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), str(value))


def fail(message: str, code: int = 2) -> typer.Exit:
    # The message may quote input (an id, a file name): escaped, never read as rich markup.
    console.print(f"[bold red]error:[/] {escape(printable(message))}", soft_wrap=True)
    return typer.Exit(code)


@contextmanager
def clear_errors() -> Iterator[None]:
    """Bad input becomes one readable line and a non-zero exit, not a traceback."""
    try:
        yield
    except NotFound as e:
        raise fail(str(e)) from None
    except (IngestError, FileNotFoundError) as e:
        raise fail(str(e)) from None
    except ValidationError as e:
        msg = "; ".join(
            f"{'.'.join(map(str, x['loc'])) or 'input'}: {x['msg']}" for x in e.errors()
        )
        raise fail(msg) from None


def progress_bar() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def _recsmith():  # noqa: ANN202 - imported lazily: torch/transformers load takes seconds
    from service.recsmith import Recsmith

    return Recsmith(get_settings())


def _sync(rs, quiet: bool = False) -> dict[str, int]:  # noqa: ANN001
    with progress_bar() as bar:
        task = bar.add_task("indexing", total=None, visible=not quiet)
        report = rs.sync_index(
            progress=lambda n: bar.advance(task, n), on_total=lambda t: bar.update(task, total=t)
        )
    return report.as_dict()


# -- ingest ---------------------------------------------------------------------------
def _ingest(
    kind: str,
    file: Path,
    fmt: str | None,
    as_json: bool,
    index: bool,
    mapping: list[str] | None = None,
) -> None:
    with clear_errors():
        column_map = parse_column_map(mapping, kind)  # type: ignore[arg-type]
        rs = _recsmith()
        fmt = detect_format(file, fmt) if file.exists() else fmt
        if not file.exists():
            raise IngestError(f"no such file: {file}")
        check_map_columns(file, fmt or "jsonl", column_map)  # before the bar: one clear line
        total = count_rows(file, fmt or "jsonl")
        with progress_bar() as bar:
            task = bar.add_task(f"ingest {kind}", total=total)
            report = ingest_file(
                rs.store,
                file,
                kind,
                fmt,
                rejects_dir=rs.settings.data_dir / "rejects",
                progress=lambda n: bar.advance(task, n),
                column_map=column_map,
            )
        result: dict[str, Any] = report.as_dict()
        if index and report.stored:
            result["index"] = _sync(rs, quiet=as_json)
    if as_json:
        out.print_json(json.dumps(result))
    else:
        out.print(
            f"{kind}: {report.rows} rows, {report.stored} stored, {report.unchanged} unchanged, "
            f"{len(report.rejected)} rejected"
        )
        for r in report.rejected[:20]:
            out.print(f"  line {r.line}: {printable(r.reason)}", markup=False, highlight=False)
        if len(report.rejected) > 20:
            out.print(f"  … {len(report.rejected) - 20} more")
        if report.rejects_file:
            out.print(
                f"rejected rows written to {printable(report.rejects_file)}",
                markup=False,
                highlight=False,
            )
    # Bad rows are reported, good ones stored: exit 1 tells scripts that some rows failed.
    if report.rejected:
        raise typer.Exit(1)


FileArg = Annotated[Path, typer.Argument(help="CSV, TSV, JSONL or Parquet file")]
FormatOpt = Annotated[
    str | None, typer.Option("--format", help="csv|tsv|jsonl|parquet (default: by extension)")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output")]
MapOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--map",
        metavar="SOURCE=FIELD",
        help="read column SOURCE as FIELD, e.g. --map timestamp=ts (repeatable); common "
        "names (timestamp, item_id, name, sku, ...) are understood without it",
    ),
]


@ingest_app.command("products")
def ingest_products(
    file: FileArg,
    fmt: FormatOpt = None,
    as_json: JsonOpt = False,
    index: Annotated[bool, typer.Option(help="update the indexes afterwards")] = True,
    mapping: MapOpt = None,
) -> None:
    """Upsert products by id; every bad row is reported with its line number."""
    _ingest("products", file, fmt, as_json, index, mapping)


@ingest_app.command("interactions")
def ingest_interactions(
    file: FileArg, fmt: FormatOpt = None, as_json: JsonOpt = False, mapping: MapOpt = None
) -> None:
    """Append interaction events (view, cart, purchase, rating); duplicates are skipped."""
    _ingest("interactions", file, fmt, as_json, index=False, mapping=mapping)


@app.command()
def index(as_json: JsonOpt = False) -> None:
    """Bring the dense and lexical indexes in step with the catalogue (incremental)."""
    rs = _recsmith()
    report = _sync(rs, quiet=as_json)
    if as_json:
        out.print_json(json.dumps(report))
    else:
        out.print(
            f"indexed {report['total']} products: {report['encoded']} (re)encoded, "
            f"{report['removed']} removed, {report['model_calls']} model calls"
        )


# -- read commands --------------------------------------------------------------------
def _filters(
    category: list[str] | None,
    min_price: float | None,
    max_price: float | None,
    in_stock: bool,
    exclude_purchased: bool = True,
):  # noqa: ANN202
    from service.retrieval.filters import Filters

    return Filters(
        categories=category or [],
        min_price=min_price,
        max_price=max_price,
        in_stock_only=in_stock,
        exclude_purchased=exclude_purchased,
    )


def _show(rs, rows: list[dict[str, Any]], as_json: bool, title: str) -> None:  # noqa: ANN001
    if as_json:
        out.print_json(json.dumps(rows, ensure_ascii=False))
        return
    # Cells are Text, not strings: a title is never read as markup, and never reaches the
    # terminal with its control characters.
    table = Table(title=Text(printable(title)))
    for col in ("#", "id", "title", "category", "price", "score", "why"):
        table.add_column(col, overflow="fold")
    for i, r in enumerate(rows, 1):
        price = "" if r.get("price") is None else f"{r['price']:.2f} {r.get('currency', '')}"
        cells = (
            str(i),
            r["product_id"],
            r["title"],
            r.get("category", ""),
            price,
            f"{r['score']:.4f}",
            r.get("why") or ", ".join(r.get("sources", {})),
        )
        table.add_row(*(Text(printable(c)) for c in cells))
    out.print(table)


def _rows(rs, cands, reasons: dict[str, str] | None = None) -> list[dict[str, Any]]:  # noqa: ANN001
    products = rs.store.get_products([c.product_id for c in cands])
    rows = []
    for c in cands:
        p = products.get(c.product_id)
        if p is None:
            continue
        rows.append(
            {
                "product_id": c.product_id,
                "title": p.title,
                "category": p.category,
                "price": p.price,
                "currency": p.currency,
                "score": c.score,
                "sources": c.sources,
                "why": (reasons or {}).get(c.product_id),
            }
        )
    return rows


KOpt = Annotated[int, typer.Option("-k", "--k", min=1, max=500, help="how many results")]
CatOpt = Annotated[
    list[str] | None, typer.Option("--category", help="only these categories (repeatable)")
]
MinOpt = Annotated[float | None, typer.Option(min=0, help="lowest price")]
MaxOpt = Annotated[float | None, typer.Option(min=0, help="highest price")]
StockOpt = Annotated[bool, typer.Option("--in-stock", help="only products in stock")]


@app.command()
def search(
    query: str,
    k: KOpt = 10,
    category: CatOpt = None,
    min_price: MinOpt = None,
    max_price: MaxOpt = None,
    in_stock: StockOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Free-text search: dense + BM25, fused."""
    from service.retrieval.retriever import RetrievalRequest

    with clear_errors():
        if not query.strip():
            raise fail("the query is empty")
        rs = _recsmith()
        req = RetrievalRequest(
            query=query, k=k, filters=_filters(category, min_price, max_price, in_stock)
        )
        _show(rs, _rows(rs, rs.candidates(req)), as_json, f"search: {query}")


@app.command()
def similar(
    product_id: str,
    k: KOpt = 10,
    category: CatOpt = None,
    in_stock: StockOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Products similar to PRODUCT_ID (content + co-interaction)."""
    from service.retrieval.retriever import RetrievalRequest

    with clear_errors():
        rs = _recsmith()
        rs.store.get_product(product_id)  # NotFound -> clear error
        req = RetrievalRequest(
            seed_product_id=product_id, k=k, filters=_filters(category, None, None, in_stock)
        )
        _show(rs, _rows(rs, rs.candidates(req)), as_json, f"similar to {product_id}")


@app.command()
def recommend(
    user: Annotated[str, typer.Option("--user", help="user id")],
    query: Annotated[str | None, typer.Option(help="optional intent, e.g. 'gift under 50'")] = None,
    k: KOpt = 10,
    category: CatOpt = None,
    min_price: MinOpt = None,
    max_price: MaxOpt = None,
    in_stock: StockOpt = False,
    rerank: Annotated[str, typer.Option(help="none|verbalizer|reasoning")] = "none",
    as_json: JsonOpt = False,
) -> None:
    """Personalised recommendations: retrieval shortlist, optionally reranked by the LLM."""
    from service.recommend import recommend as run

    with clear_errors():
        if rerank not in {"none", "verbalizer", "reasoning"}:
            raise fail(f"unknown rerank mode {rerank!r}: use none, verbalizer or reasoning")
        rs = _recsmith()
        result = run(
            rs,
            user_id=user,
            query=query,
            k=k,
            rerank=rerank,
            filters=_filters(category, min_price, max_price, in_stock),
        )
    if as_json:
        out.print_json(json.dumps(result.as_dict(), ensure_ascii=False))
        return
    rows = [
        {
            "product_id": i.product_id,
            "title": i.title,
            "category": i.category,
            "price": i.price,
            "currency": i.currency,
            "score": i.score,
            "sources": i.sources,
            "why": i.why,
        }
        for i in result.items
    ]
    state = f"DEGRADED: {result.degraded_reason}" if result.degraded else "ok"
    _show(rs, rows, False, f"for {user} (rerank: {result.rerank}, {state})")


# -- demo and serve ---------------------------------------------------------------------
def demo_files() -> tuple[Path, Path]:
    base = Path(str(resources.files("service") / "demo"))
    return base / "products.jsonl", base / "interactions.jsonl"


@demo_app.command("load")
def demo_load() -> None:
    """Load the demo catalogue and interaction log, then index it (idempotent)."""
    products, interactions = demo_files()
    rs = _recsmith()
    with clear_errors():
        p = ingest_file(rs.store, products, "products")
        i = ingest_file(rs.store, interactions, "interactions")
    report = _sync(rs)
    out.print(
        f"demo: {p.stored} products stored ({p.unchanged} unchanged), {i.stored} interactions "
        f"added; index: {report['total']} products, {report['encoded']} encoded"
    )
    if p.rejected or i.rejected:
        raise fail(
            f"the demo data has bad rows: {[r.reason for r in p.rejected + i.rejected][:3]}", 1
        )


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="bind address")] = None,
    port: Annotated[int | None, typer.Option(help="port")] = None,
) -> None:
    """Start the HTTP API and the web page."""
    import uvicorn

    try:
        s = get_settings()
    except ConfigError as e:  # a bad RECSMITH_* value: one line, not a traceback
        raise fail(str(e)) from None
    uvicorn.run(
        "service.api.app:create_app", factory=True, host=host or s.host, port=port or s.port
    )


def _mount_optional() -> None:
    """Stage CLIs live beside their stage; each is a Typer app of its own."""
    from eval.cli import eval_app
    from service.copy.cli import copy_app
    from service.db_cli import db_app
    from service.llm.cli import models_app, vllm_app
    from service.training.cli import train_app

    app.add_typer(models_app, name="models")
    app.add_typer(vllm_app, name="vllm")
    app.add_typer(copy_app, name="copy")
    app.add_typer(eval_app, name="eval")
    app.add_typer(train_app, name="train")
    app.add_typer(db_app, name="db")


_mount_optional()
