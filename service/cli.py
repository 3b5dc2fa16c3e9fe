"""The `recsmith` command line: thin adapters over the Application (built once per
command), sharing service/cli_support.py (errors, progress, terminal-safe text)."""

from __future__ import annotations

import json
from dataclasses import asdict
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
import uvicorn
from rich.table import Table
from rich.text import Text

from eval.cli import eval_app  # the stage CLIs are mounted as sub-apps at the bottom
from service.api.multiproc import prepare_workers
from service.catalog.ingest import (
    IngestError,
    check_map_columns,
    count_rows,
    detect_format,
    parse_column_map,
)
from service.cli_support import (
    PARTIAL,
    build_application,
    clear_errors,
    fail,
    out,
    printable,
    progress_bar,
)
from service.config import ConfigError, get_settings
from service.copy.cli import copy_app
from service.copy.cli import worker as copy_worker
from service.db_cli import db_app
from service.llm.cli import models_app, vllm_app
from service.retrieval.filters import Filters
from service.training.cli import train_app
from service.vocab import RerankMode

if TYPE_CHECKING:
    from service.application import Application, Scored

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


def _sync(application: Application, quiet: bool = False) -> dict[str, int]:
    # An unprepared encoder is a setup step to name (EncoderNotPrepared), not a traceback.
    with clear_errors(), progress_bar() as bar:
        task = bar.add_task("indexing", total=None, visible=not quiet)
        report = application.sync_index(
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
        application = build_application()
        fmt = detect_format(file, fmt) if file.exists() else fmt
        if not file.exists():
            raise IngestError(f"no such file: {file}")
        check_map_columns(file, fmt or "jsonl", column_map)  # before the bar: one clear line
        total = count_rows(file, fmt or "jsonl")
        with progress_bar() as bar:
            task = bar.add_task(f"ingest {kind}", total=total)
            report = application.ingest(
                file,
                kind,
                fmt=fmt,
                rejects_dir=application.settings.data_dir / "rejects",
                progress=lambda n: bar.advance(task, n),
                column_map=column_map,
            )
        result: dict[str, Any] = report.as_dict()
        if index and report.stored:
            result["index"] = _sync(application, quiet=as_json)
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
        raise typer.Exit(PARTIAL)


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
    report = _sync(build_application(), quiet=as_json)
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
) -> Filters:
    return Filters(
        categories=category or [],
        min_price=min_price,
        max_price=max_price,
        in_stock_only=in_stock,
        exclude_purchased=exclude_purchased,
    )


def _show(rows: list[dict[str, Any]], as_json: bool, title: str) -> None:
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


def _rows(items: list[Scored]) -> list[dict[str, Any]]:
    return [
        {
            "product_id": i.product.id,
            "title": i.product.title,
            "category": i.product.category,
            "price": i.product.price,
            "currency": i.product.currency,
            "score": i.candidate.score,
            "sources": i.candidate.sources,
            "why": None,
        }
        for i in items
    ]


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
    with clear_errors():
        if not query.strip():
            raise fail("the query is empty")
        filters = _filters(category, min_price, max_price, in_stock)
        items = build_application().search(query, k, filters)
        _show(_rows(items), as_json, f"search: {query}")


@app.command()
def similar(
    product_id: str,
    k: KOpt = 10,
    category: CatOpt = None,
    in_stock: StockOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Products similar to PRODUCT_ID (content + co-interaction)."""
    with clear_errors():
        # an unknown id is the application's NotFound, one clear line (clear_errors)
        application = build_application()
        result = application.similar(product_id, k, categories=category, in_stock_only=in_stock)
        _show(_rows(result.items), as_json, f"similar to {product_id}")


@app.command()
def recommend(
    user: Annotated[str, typer.Option("--user", help="user id")],
    query: Annotated[str | None, typer.Option(help="optional intent, e.g. 'gift under 50'")] = None,
    k: KOpt = 10,
    category: CatOpt = None,
    min_price: MinOpt = None,
    max_price: MaxOpt = None,
    in_stock: StockOpt = False,
    rerank: Annotated[RerankMode, typer.Option(help="how the LLM reorders the list")] = (
        RerankMode.none
    ),
    as_json: JsonOpt = False,
) -> None:
    """Personalised recommendations: retrieval shortlist, optionally reranked by the LLM."""
    with clear_errors():
        result = build_application().recommend(
            user_id=user,
            query=query,
            k=k,
            rerank=rerank,
            filters=_filters(category, min_price, max_price, in_stock),
        )
    if as_json:
        out.print_json(json.dumps(result.as_dict(), ensure_ascii=False))
        return
    state = f"DEGRADED: {result.degraded_reason}" if result.degraded else "ok"
    rows = [asdict(i) for i in result.items]  # an item's fields are _show's columns
    _show(rows, False, f"for {user} (rerank: {result.rerank}, {state})")


# -- demo and serve ---------------------------------------------------------------------
def demo_files() -> tuple[Path, Path]:
    base = Path(str(resources.files("service") / "demo"))
    return base / "products.jsonl", base / "interactions.jsonl"


@demo_app.command("load")
def demo_load() -> None:
    """Load the demo catalogue and interaction log, then index it (idempotent)."""
    products, interactions = demo_files()
    application = build_application()
    with clear_errors():
        p = application.ingest(products, "products")
        i = application.ingest(interactions, "interactions")
    report = _sync(application)
    out.print(
        f"demo: {p.stored} products stored ({p.unchanged} unchanged), {i.stored} interactions "
        f"added; index: {report['total']} products, {report['encoded']} encoded"
    )
    if p.rejected or i.rejected:
        raise fail(
            f"the demo data has bad rows: {[r.reason for r in p.rejected + i.rejected][:3]}",
            PARTIAL,
        )


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="bind address")] = None,
    port: Annotated[int | None, typer.Option(help="port")] = None,
    workers: Annotated[
        int, typer.Option(min=1, max=64, help="API processes sharing the port and the database")
    ] = 1,
) -> None:
    """Start the HTTP API and the web page."""
    try:
        s = get_settings()
    except ConfigError as e:  # a bad RECSMITH_* value: one line, not a traceback
        raise fail(str(e)) from None
    with prepare_workers(workers):
        uvicorn.run(
            "service.api.app:create_app",
            factory=True,
            host=host or s.host,
            port=port or s.port,
            workers=workers,
            # The supervisor kills a worker that does not answer its ping in time; one busy
            # importing torch and loading the encoder on loaded cores misses uvicorn's 5 s.
            timeout_worker_healthcheck=60,
        )


app.add_typer(models_app, name="models")
app.add_typer(vllm_app, name="vllm")
app.add_typer(copy_app, name="copy")
app.command("worker")(copy_worker)  # the copy-job queue's worker (service/worker.py)
app.add_typer(eval_app, name="eval")
app.add_typer(train_app, name="train")
app.add_typer(db_app, name="db")
