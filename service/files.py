"""Small file helpers shared by the artefact writers."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

logger = logging.getLogger(__name__)
T = TypeVar("T")
ArtefactState = Literal["fitted", "default", "degraded"]


@dataclass
class ArtefactStatus:
    """How a fitted artefact loaded: "fitted", "default" (none saved) or "degraded" (unusable,
    `reason` says why; the service runs without it)."""

    state: ArtefactState
    path: str
    reason: str | None = None

    @property
    def degraded(self) -> bool:
        return self.state == "degraded"


def write_json_atomic(path: Path, data: Any) -> Path:
    """Write JSON so that a reader never sees half a file (another process may be loading
    the artefact while a fit replaces it): a private temporary file, then one rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
    return path


@contextmanager
def folder_built_aside(folder: Path) -> Iterator[Path]:
    """Yields an empty private work folder beside `folder`; when the block succeeds the work
    folder replaces `folder` by one rename (readers never see a half-written folder). The
    work folder is removed whatever happens."""
    work = folder.parent / f".{folder.name}.tmp-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        yield work
        if folder.exists():
            shutil.rmtree(folder)
        work.rename(folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def read_json_artefact(
    path: Path,
    parse: Callable[[Any], T],
    error: type[Exception],
    strict: bool,
    *,
    what: str,
    missing: str,
    strict_hint: str,
    fallback: str,
    log: logging.Logger = logger,
) -> tuple[T | None, ArtefactState, str | None]:
    """A fitted JSON artefact the service loads at start-up: (artefact, state, reason).
    Missing: None, "default" and `missing` as the reason. Unreadable, or `parse` raising
    `error`: a warning (on `log`), None, "degraded". strict: both raise `error` naming the file."""
    if not path.is_file():
        if strict:
            raise error(f"{missing} ({strict_hint})")
        return None, "default", missing
    try:
        return parse(json.loads(path.read_text())), "fitted", None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, error) as e:
        reason = f"{what} {path} is unusable ({type(e).__name__}: {e}); {fallback}"
        if strict:
            raise error(reason) from e
        log.warning("%s", reason)
        return None, "degraded", reason


def versioned(data: Any, version: int, error: type[Exception]) -> dict[str, Any]:
    """`data` as the JSON object of an artefact saved in format `version`, else `error`."""
    if not isinstance(data, dict):
        raise error("not a JSON object")
    if data.get("format") != version:
        raise error(f"format {data.get('format')!r}, expected {version}")
    return data


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock across processes (tests, CLI and API may race to convert or export
    a model at first start); released when the block ends."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
