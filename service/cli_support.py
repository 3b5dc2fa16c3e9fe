"""What every CLI sub-app shares: one error line and exit code (`fail`), one progress bar
style, terminal-safe text, and the translation of bad input into a clear line.

Exit codes, everywhere: 2 = bad input (nothing done), 1 = partial failure (some rows or
items failed; the rest was done)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from service.catalog.ingest import IngestError
from service.config import ConfigError, get_settings
from service.errors import DomainError

if TYPE_CHECKING:
    from service.application import Application

BAD_INPUT = 2
PARTIAL = 1

console = Console(stderr=True)  # progress, errors, notes
out = Console()  # results

# C0/C1 controls (ESC sequences recolour or rewrite the terminal), zero-width characters and
# bidi overrides (they reorder what is shown). Product data is anyone's text.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]")


def printable(value: Any) -> str:
    """Text safe for a terminal: control characters shown as escapes (\\x1b, \\u202e)."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), str(value))


def fail(message: str, code: int = BAD_INPUT) -> typer.Exit:
    """Print one error line and return the Exit to raise (`raise fail(...)`)."""
    # The message may quote input (an id, a file name): escaped, never read as rich markup.
    console.print(f"[bold red]error:[/] {escape(printable(message))}", soft_wrap=True)
    return typer.Exit(code)


def build_application() -> Application:
    """The Application for one command (a bad RECSMITH_* setting: one line, exit 2)."""
    # lazy: every `recsmith` command imports this module; only those that build the
    # Application load it (scipy and the engine: +0.24 s on top of `recsmith`'s own imports,
    # eval/bench_startup.py)
    from service.application import Application

    try:
        return Application(get_settings())
    except ConfigError as e:
        raise fail(str(e)) from None


def validation_message(e: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, x['loc'])) or 'input'}: {x['msg']}" for x in e.errors())


@contextmanager
def clear_errors() -> Iterator[None]:
    """Bad input becomes one readable line and exit 2, not a traceback."""
    try:
        yield
    except (DomainError, IngestError, FileNotFoundError) as e:
        raise fail(str(e)) from None
    except ValidationError as e:
        raise fail(validation_message(e)) from None


def progress_bar() -> Progress:
    """The one progress style: what, bar, n/total, elapsed, remaining."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
