"""Every prompt and response goes to the `llm_calls` table.

`LLM.__init_subclass__` calls `instrument_class` on every backend class, so any backend,
however it is constructed, logs: nobody has to remember a wrapper. Rules:
- one row per prompt (a batched generate of 8 prompts writes 8 rows sharing a batch id);
- only the outermost call logs (generate(choices=…) calling choice_logprobs writes one row);
- logging failures are reported through `logging` and never break the call;
- `log_context(template=..., request_id=...)` attaches tags to the rows written inside it;
- rows older than settings.llm_log_retention_days (prompts hold what shoppers typed) are
  deleted at start-up and, at most once per PRUNE_EVERY_S, after a write.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import delete, select

from service.config import get_settings
from service.db import get_engine, session_scope
from service.llm.tables import LLMCallRow
from service.llm.types import Generation, GenParams, Prompt

if TYPE_CHECKING:
    from service.config import Settings

logger = logging.getLogger(__name__)


class Logged(Protocol):
    """What the log needs of a backend (the `LLM` interface imports this module, so the
    log names the shape, not the class)."""

    backend: str
    model_id: str


_in_call: ContextVar[bool] = ContextVar("recsmith_llm_in_call", default=False)
_tags: ContextVar[dict[str, Any] | None] = ContextVar("recsmith_llm_log_tags", default=None)

WRAPPED = ("generate", "stream", "choice_logprobs", "choice_logprobs_batch")


@contextlib.contextmanager
def log_context(**tags: Any) -> Iterator[None]:
    """Tags (prompt template + version, request id, …) stored in params["tags"] of each row."""
    merged = {**(_tags.get() or {}), **tags}
    token = _tags.set(merged)
    try:
        yield
    finally:
        _tags.reset(token)


def prompt_text(prompt: Prompt) -> str:
    return prompt if isinstance(prompt, str) else json.dumps(prompt, ensure_ascii=False)


def _params_dict(params: GenParams | None) -> dict[str, Any]:
    if params is None:
        return {}
    d = dataclasses.asdict(params)
    d["stop"] = list(d["stop"])
    if d.get("choices") is not None:
        d["choices"] = list(d["choices"])
    return d


def _settings_of(llm: Logged) -> Settings:
    s = getattr(llm, "settings", None)
    if s is None:
        s = get_settings()
    return s


def write_rows(llm: Logged, rows: list[dict[str, Any]]) -> None:
    """Insert rows; never raises (a broken log must not break a recommendation)."""
    try:
        settings = _settings_of(llm)
        if not settings.database_url:
            settings.data_dir.mkdir(parents=True, exist_ok=True)
        engine = get_engine(settings.db_url)
        with session_scope(engine) as s:
            s.add_all([LLMCallRow(**r) for r in rows])
    except Exception:  # noqa: BLE001 - logging must never fail the call
        logger.warning("could not write llm_calls rows", exc_info=True)
        return
    _maybe_prune(settings)


# -- retention ------------------------------------------------------------------------
PRUNE_EVERY_S = 3600.0  # an indexed range delete: cheap, but not per call
_last_prune: dict[str, float] = {}  # db url -> monotonic time of the last prune
_prune_lock = threading.Lock()


def prune_llm_calls(settings: Settings, now: datetime | None = None) -> int:
    """Delete rows older than the retention (0 = keep forever); returns how many."""
    days = settings.llm_log_retention_days
    with _prune_lock:
        _last_prune[settings.db_url] = time.monotonic()
    if not days:
        return 0
    cutoff = (now or datetime.now(UTC)).replace(tzinfo=None) - timedelta(days=days)
    with session_scope(get_engine(settings.db_url)) as s:
        result = s.execute(delete(LLMCallRow).where(LLMCallRow.ts < cutoff))
        n = int(getattr(result, "rowcount", 0) or 0)
    if n:
        logger.info("llm_calls: deleted %d rows older than %g days", n, days)
    return n


def _maybe_prune(settings: Settings) -> None:
    with _prune_lock:
        last = _last_prune.get(settings.db_url)
        if last is not None and time.monotonic() - last < PRUNE_EVERY_S:
            return
    try:
        prune_llm_calls(settings)
    except Exception:  # noqa: BLE001 - retention must never fail a model call
        logger.warning("could not prune llm_calls", exc_info=True)


def _row(
    llm: Logged,
    kind: str,
    ts: datetime,
    prompt: Prompt,
    response: str | None,
    params: dict[str, Any],
    latency_ms: float,
    error: str | None = None,
    prompt_tokens: int | None = None,
    completion_tokens: int | None = None,
) -> dict[str, Any]:
    tags = _tags.get()
    if tags:
        params = {**params, "tags": tags}
    return {
        "ts": ts.replace(tzinfo=None),
        "backend": getattr(llm, "backend", type(llm).__name__),
        "model_id": getattr(llm, "model_id", ""),
        "kind": kind,
        "prompt": prompt_text(prompt),
        "response": response,
        "params": params,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "latency_ms": round(latency_ms, 2),
        "error": error,
    }


def _err(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"[:4000]


def _wrap_generate(fn: Callable[..., list[Generation]]) -> Callable[..., list[Generation]]:
    @functools.wraps(fn)
    def generate(self: Logged, prompts: Sequence[Prompt], params: GenParams | None = None):  # noqa: ANN202
        if _in_call.get():
            return fn(self, prompts, params)
        token = _in_call.set(True)
        ts, t0 = datetime.now(UTC), time.perf_counter()
        base = {**_params_dict(params), "batch_size": len(prompts), "batch_id": uuid.uuid4().hex}
        try:
            out = fn(self, prompts, params)
        except BaseException as e:
            ms = (time.perf_counter() - t0) * 1000
            write_rows(
                self, [_row(self, "generate", ts, p, None, base, ms, _err(e)) for p in prompts]
            )
            raise
        finally:
            _in_call.reset(token)
        ms = (time.perf_counter() - t0) * 1000
        rows = []
        for i, (p, g) in enumerate(zip(prompts, out, strict=False)):
            extra = {"index": i, "finish_reason": g.finish_reason}
            if g.meta.get("logprobs"):
                extra["choice_logprobs"] = g.meta["logprobs"]
            rows.append(
                _row(self, "generate", ts, p, g.text, {**base, **extra}, ms, None,
                     g.prompt_tokens, g.completion_tokens)
            )  # fmt: skip
        write_rows(self, rows)
        return out

    return generate


def _wrap_stream(fn: Callable[..., Iterator[str]]) -> Callable[..., Iterator[str]]:
    @functools.wraps(fn)
    def stream(self: Logged, prompt: Prompt, params: GenParams | None = None) -> Iterator[str]:
        if _in_call.get():
            yield from fn(self, prompt, params)
            return
        ts, t0 = datetime.now(UTC), time.perf_counter()
        pieces: list[str] = []
        error: str | None = None
        try:
            for piece in fn(self, prompt, params):
                pieces.append(piece)
                yield piece
        except GeneratorExit:
            error = "stream closed by the consumer before the end"
            raise
        except BaseException as e:
            error = _err(e)
            raise
        finally:
            ms = (time.perf_counter() - t0) * 1000
            params_d = {**_params_dict(params), "pieces": len(pieces)}
            write_rows(
                self, [_row(self, "stream", ts, prompt, "".join(pieces), params_d, ms, error)]
            )

    return stream


def _wrap_choice(fn: Callable[..., dict[str, float]]) -> Callable[..., dict[str, float]]:
    @functools.wraps(fn)
    def choice_logprobs(self: Logged, prompt: Prompt, choices: Sequence[str]) -> dict[str, float]:
        if _in_call.get():
            return fn(self, prompt, choices)
        token = _in_call.set(True)
        ts, t0 = datetime.now(UTC), time.perf_counter()
        params = {"choices": list(choices)}
        try:
            out = fn(self, prompt, choices)
        except BaseException as e:
            ms = (time.perf_counter() - t0) * 1000
            write_rows(self, [_row(self, "choice_logprobs", ts, prompt, None, params, ms, _err(e))])
            raise
        finally:
            _in_call.reset(token)
        ms = (time.perf_counter() - t0) * 1000
        write_rows(self, [_row(self, "choice_logprobs", ts, prompt, json.dumps(out), params, ms)])
        return out

    return choice_logprobs


def _wrap_choice_batch(fn: Callable[..., list[dict[str, float]]]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def choice_logprobs_batch(
        self: Logged, prompts: Sequence[Prompt], choices: Sequence[str]
    ) -> list[dict[str, float]]:
        if _in_call.get():
            return fn(self, prompts, choices)
        token = _in_call.set(True)
        ts, t0 = datetime.now(UTC), time.perf_counter()
        base = {"choices": list(choices), "batch_size": len(prompts), "batch_id": uuid.uuid4().hex}
        try:
            out = fn(self, prompts, choices)
        except BaseException as e:
            ms = (time.perf_counter() - t0) * 1000
            write_rows(
                self,
                [_row(self, "choice_logprobs", ts, p, None, base, ms, _err(e)) for p in prompts],
            )
            raise
        finally:
            _in_call.reset(token)
        ms = (time.perf_counter() - t0) * 1000
        rows = [
            _row(self, "choice_logprobs", ts, p, json.dumps(r), {**base, "index": i}, ms)
            for i, (p, r) in enumerate(zip(prompts, out, strict=False))
        ]
        write_rows(self, rows)
        return out

    return choice_logprobs_batch


_WRAPPERS: dict[str, Callable[[Any], Any]] = {
    "generate": _wrap_generate,
    "stream": _wrap_stream,
    "choice_logprobs": _wrap_choice,
    "choice_logprobs_batch": _wrap_choice_batch,
}


def instrument_class(cls: type) -> None:
    """Wrap the LLM methods that cls itself defines (inherited ones are wrapped already)."""
    for name in WRAPPED:
        fn = cls.__dict__.get(name)
        if fn is None or getattr(fn, "__recsmith_logged__", False):
            continue
        if getattr(fn, "__isabstractmethod__", False):
            continue
        wrapped = _WRAPPERS[name](fn)
        wrapped.__recsmith_logged__ = True  # type: ignore[attr-defined]
        setattr(cls, name, wrapped)


def recent_calls(settings: Settings, limit: int = 20) -> list[dict[str, Any]]:
    """The last rows, newest first (for `recsmith models log` and tests)."""
    with session_scope(get_engine(settings.db_url)) as s:
        rows = s.scalars(select(LLMCallRow).order_by(LLMCallRow.id.desc()).limit(limit)).all()
        return [{c.name: getattr(r, c.name) for c in LLMCallRow.__table__.columns} for r in rows]
