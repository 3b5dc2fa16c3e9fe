"""Prometheus metrics: HTTP requests per route template, model calls and tokens, degraded
responses. One registry per process, shared by every app.

Several API processes (`recsmith serve --workers N`) run in prometheus_client's
multiprocess mode: `serve` sets PROMETHEUS_MULTIPROC_DIR before the workers start (the
mode is fixed when prometheus_client is first imported), every worker writes its values
to files there, and /metrics in any worker answers for all of them through a
MultiProcessCollector. A worker that died (killed, restarted by uvicorn's supervisor)
keeps its counters and histograms — requests it served did happen — but its live gauge
(requests in flight) is dropped with `mark_process_dead` at the next scrape or start-up.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess, values
from prometheus_client.registry import Collector
from sqlalchemy import event
from starlette.types import Message, Receive, Scope, Send

from service.api.asgi import HttpMiddleware
from service.llm.tables import LLMCallRow

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess_dir() -> Path | None:
    """The shared folder when this process writes its metrics to files, else None (the
    value class is chosen at prometheus_client's import, so the variable alone is not
    enough: set after that import, it would be ignored)."""
    folder = os.environ.get(MULTIPROC_ENV)
    if folder and values.ValueClass is not values.MutexValue:
        Path(folder).mkdir(parents=True, exist_ok=True)
        return Path(folder)
    return None


_PID_FILE = re.compile(r"_(\d+)\.db$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    try:  # a killed worker stays a zombie until the supervisor reaps it: dead already
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (not Linux): kill(0) answered
    return stat.rsplit(")", 1)[-1].split()[:1] != ["Z"]


def reap_dead_workers(folder: Path) -> list[int]:
    """mark_process_dead for every pid with files in `folder` that no longer runs."""
    pids = {int(m.group(1)) for f in folder.glob("*.db") if (m := _PID_FILE.search(f.name))}
    dead = sorted(p for p in pids if not _alive(p))
    for pid in dead:
        multiprocess.mark_process_dead(pid, str(folder))
    return dead


class _AllWorkers(Collector):
    """Every worker's values (MultiProcessCollector), after dropping dead workers' gauges."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.inner = multiprocess.MultiProcessCollector(None, path=str(folder))

    def collect(self) -> Any:
        reap_dead_workers(self.folder)
        return self.inner.collect()


def worker_started() -> None:
    """A (re)started worker drops the live gauges its dead predecessors left."""
    if MULTIPROC is not None:
        reap_dead_workers(MULTIPROC)


def worker_stopped() -> None:
    """This worker's in-flight gauge stops counting once it exits."""
    if MULTIPROC is not None:
        multiprocess.mark_process_dead(os.getpid(), str(MULTIPROC))


MULTIPROC = multiprocess_dir()
REGISTRY = CollectorRegistry(auto_describe=True)
if MULTIPROC is not None:
    REGISTRY.register(_AllWorkers(MULTIPROC))
# In multiprocess mode the metrics live in files, read back by the collector: registering
# them too would report this worker's values twice.
_REG: CollectorRegistry | None = None if MULTIPROC is not None else REGISTRY

M = TypeVar("M", Counter, Gauge, Histogram)


def _metric(kind: type[M], name: str, doc: str, labels: Sequence[str] = (), **kw: Any) -> M:
    """A metric registered in this process's registry (_REG: none in multiprocess mode)."""
    return kind(name, doc, labels, registry=_REG, **kw)


HTTP_REQUESTS = _metric(
    Counter,
    "recsmith_http_requests",
    "HTTP requests by method, route template and status",
    ["method", "route", "status"],
)
HTTP_LATENCY = _metric(
    Histogram,
    "recsmith_http_request_duration_seconds",
    "HTTP request latency by route template (until the response starts for streams)",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
HTTP_IN_FLIGHT = _metric(
    Gauge,
    "recsmith_http_requests_in_flight",
    "Requests being served",
    multiprocess_mode="livesum",  # summed over live workers; a dead one's are dropped
)
LLM_CALLS = _metric(
    Counter,
    "recsmith_llm_calls",
    "Language model calls (one per prompt) by backend, model, kind and outcome",
    ["backend", "model", "kind", "outcome"],
)
LLM_TOKENS = _metric(
    Counter,
    "recsmith_llm_tokens",
    "Language model tokens by direction (prompt | completion)",
    ["backend", "model", "direction"],
)
LLM_LATENCY = _metric(
    Histogram,
    "recsmith_llm_call_duration_seconds",
    "Language model call latency (a batched call counts once per prompt)",
    ["backend", "kind"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
RECOMMENDATIONS = _metric(
    Counter, "recsmith_recommendations", "Recommendation responses by rerank mode", ["rerank"]
)
DEGRADED = _metric(
    Counter,
    "recsmith_degraded_responses",
    "Responses served degraded (a model stage failed; fallback served) by route and stage",
    ["route", "stage"],
)


# Labels come from fixed sets only: a client chooses the method and the path, and each
# distinct label value is a new series kept for the life of the process.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"


def method_label(scope: Scope) -> str:
    method = str(scope.get("method", "GET"))
    return method if method in METHODS else "other"


def route_template(scope: Scope) -> str:
    """The matched route's path template (/v1/products/{product_id}), so ids do not explode
    the label set; unmatched paths (and requests refused before routing: a missing key)
    share one label."""
    route = scope.get("route")
    path = getattr(route, "path_format", None) or getattr(route, "path", None)
    if path:
        return str(scope.get("root_path", "")) + str(path)
    return UNMATCHED


class MetricsMiddleware(HttpMiddleware):
    """Pure ASGI (HttpMiddleware): it must not buffer streamed responses."""

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        t0 = time.perf_counter()
        status = {"code": 500}
        observed = {"done": False}

        def observe() -> None:
            if observed["done"]:
                return
            observed["done"] = True
            route = route_template(scope)
            method = method_label(scope)
            HTTP_LATENCY.labels(method, route).observe(time.perf_counter() - t0)
            HTTP_REQUESTS.labels(method, route, str(status["code"])).inc()

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                # Latency to the first byte: a chat stream's length is the client's business.
                observe()
            await send(message)

        HTTP_IN_FLIGHT.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            observe()
            HTTP_IN_FLIGHT.dec()


# -- model calls: counted where every backend already logs them (the llm_calls table) --------
_listening = False
_listen_lock = threading.Lock()


def _on_llm_row(_mapper: Any, _conn: Any, row: Any) -> None:
    try:
        backend, model = str(row.backend), str(row.model_id)
        outcome = "error" if row.error else "ok"
        LLM_CALLS.labels(backend, model, row.kind, outcome).inc()
        if row.prompt_tokens:
            LLM_TOKENS.labels(backend, model, "prompt").inc(row.prompt_tokens)
        completion = row.completion_tokens
        if completion is None and isinstance(row.params, dict):
            completion = row.params.get("pieces")  # streams count pieces, not tokens
        if completion:
            LLM_TOKENS.labels(backend, model, "completion").inc(completion)
        if row.latency_ms is not None:
            LLM_LATENCY.labels(backend, row.kind).observe(float(row.latency_ms) / 1000)
    except Exception:  # noqa: BLE001, S110 - metrics must never break a model call
        pass


def listen_llm_calls() -> None:
    """Every backend writes one llm_calls row per prompt (service.llm.log); an ORM insert
    listener turns those rows into counters without touching the LLM layer."""
    global _listening
    with _listen_lock:
        if _listening:
            return

        event.listen(LLMCallRow, "after_insert", _on_llm_row)
        _listening = True
