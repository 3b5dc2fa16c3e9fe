"""Several OpenAI-compatible servers (vLLM replicas) behind one client.

Each server has its own circuit breaker (closed → open → half-open). A call leases a server:
the least-in-flight one among those whose breaker is closed, ties broken round-robin so
sequential calls spread too. There is no background thread: when a server's breaker has
been open for its reset period, the next lease probes it (a short GET /health, bounded by
`probe_timeout_s`, so a wedged server costs seconds, not a request timeout) and closes the
breaker if it answers — that is how a recovered replica rejoins. A failed attempt is
retried on a server it has not tried yet (failover, no backoff); only when every usable
server has been tried does a retry go back to one of them (the caller backs off).

The pool does not speak HTTP itself: the backend (service/llm/openai_backend.py) runs the
calls and reports each outcome with `done(server, ok=…)`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from service.config import parse_base_urls
from service.llm.base import LLMError


class CircuitOpenError(LLMError):
    """Failing fast: every server failed repeatedly and none is due for a probe yet."""


class CircuitBreaker:
    """closed → (N consecutive failures) → open → (reset_s) → half-open: one probe decides."""

    def __init__(
        self, failures: int = 3, reset_s: float = 30.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.threshold = max(1, failures)
        self.reset_s = reset_s
        self.clock = clock
        self.state = "closed"
        self.failures = 0
        self.opened_at = 0.0
        self.probe_in_flight = False
        self.last_error = ""
        self._lock = threading.Lock()

    def _claim_probe(self) -> bool:
        """Caller holds the lock. Open and past reset_s: half-open, and the caller probes."""
        if self.state == "open" and self.clock() - self.opened_at >= self.reset_s:
            self.state, self.probe_in_flight = "half_open", True
            return True
        return False

    def claim_probe(self) -> bool:
        with self._lock:
            return self._claim_probe()

    def before(self) -> None:
        """Raises CircuitOpenError instead of letting a call through to a dead server."""
        with self._lock:
            if self.state == "closed" or self._claim_probe():
                return  # closed, or this caller is the half-open probe
            if self.state == "open":
                left = self.reset_s - (self.clock() - self.opened_at)
                raise CircuitOpenError(
                    f"LLM server circuit open for {left:.1f} s more "
                    f"after {self.failures} failures; last: {self.last_error}"
                )
            if self.probe_in_flight:  # half-open: only one probe at a time
                raise CircuitOpenError("LLM server circuit half-open; a probe is in flight")
            self.probe_in_flight = True

    def success(self) -> None:
        with self._lock:
            self.state, self.failures, self.probe_in_flight = "closed", 0, False

    def failure(self, error: str = "") -> None:
        with self._lock:
            self.failures += 1
            self.last_error = error[:500]
            if self.state == "half_open" or self.failures >= self.threshold:
                self.state, self.opened_at, self.probe_in_flight = "open", self.clock(), False

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            left = max(0.0, self.reset_s - (self.clock() - self.opened_at))
            return {
                "state": self.state,
                "consecutive_failures": self.failures,
                "threshold": self.threshold,
                "reset_s": self.reset_s,
                "retry_in_s": round(left, 2) if self.state == "open" else 0.0,
                "last_error": self.last_error,
            }


def error_kind(error: str) -> str:
    """'HTTP 500 from …' → 'HTTP 500'; 'ConnectError on …: …' → 'ConnectError'."""
    words = error.replace(":", " ").split()
    n = 2 if words[:1] == ["HTTP"] else 1
    return " ".join(words[:n])[:80]


@dataclass(eq=False)
class Server:
    """One replica: its URLs, breaker and load."""

    base_url: str
    breaker: CircuitBreaker
    in_flight: int = 0
    calls: int = 0  # attempts sent here
    failed: int = 0  # attempts that failed (5xx, connection trouble, timeouts)
    last_error_kind: str = ""

    @property
    def root_url(self) -> str:
        """vLLM's own endpoints (/health, /tokenize) live at the server root, not under /v1."""
        return self.base_url[:-3] if self.base_url.endswith("/v1") else self.base_url


# Probe result: None = the server answers; otherwise a short reason.
Probe = Callable[[Server], "str | None"]


@dataclass
class ServerPool:
    urls: Sequence[str]
    failures: int = 3
    reset_s: float = 30.0
    probe: Probe | None = None  # None: the first real call after reset_s is the probe
    clock: Callable[[], float] = time.monotonic
    servers: list[Server] = field(init=False)

    def __post_init__(self) -> None:
        self.servers = [
            Server(u, CircuitBreaker(self.failures, self.reset_s, self.clock))
            for u in parse_base_urls(self.urls)
        ]
        self._lock = threading.Lock()
        self._next = 0  # round-robin start for ties

    def lease(self, tried: Collection[Server] = (), *, fresh_only: bool = False) -> Server | None:
        """The server for the next attempt (its in-flight count taken), preferring one not
        in `tried`; with fresh_only, None when only tried ones are usable (the caller backs
        off, then leases again). Raises CircuitOpenError when no breaker lets a call
        through. Pair with done()."""
        while True:
            with self._lock:
                fresh = [s for s in self.servers if s not in tried]
                due = next((s for s in fresh if s.breaker.claim_probe()), None)
                if due is None or self.probe is None:
                    # Without a probe function the due server's first real call is the probe.
                    ready = [due] if due is not None else self._closed(fresh)
                    if not ready:
                        again = self._closed([s for s in self.servers if s in tried])
                        if not again:
                            raise CircuitOpenError(self._why_none())
                        if fresh_only:
                            return None
                        ready = again
                    n = len(self.servers)
                    order = {id(s): (i - self._next) % n for i, s in enumerate(self.servers)}
                    pick = min(ready, key=lambda s: (s.in_flight, order[id(s)]))
                    self._next = (self.servers.index(pick) + 1) % n
                    pick.in_flight += 1
                    pick.calls += 1
                    return pick
            # Outside the lock: the probe is I/O. A failed one re-opens the breaker at once.
            reason = self.probe(due)
            if reason is None:
                due.breaker.success()
            else:
                due.failed += 1
                due.last_error_kind = error_kind(reason)
                due.breaker.failure(f"probe: {reason}")

    @staticmethod
    def _closed(servers: list[Server]) -> list[Server]:
        return [s for s in servers if s.breaker.state == "closed"]

    def _why_none(self) -> str:
        parts = []
        for s in self.servers:
            b = s.breaker.snapshot()
            parts.append(
                f"{s.base_url}: {b['state']}"
                + (f" for {b['retry_in_s']:.1f} s more" if b["state"] == "open" else "")
                + (f" ({b['last_error'][:120]})" if b["last_error"] else "")
            )
        return "every LLM server's circuit is open: " + "; ".join(parts)

    def done(self, server: Server, ok: bool | None, error: str = "") -> None:
        """The outcome of a leased attempt: True (answered, a 4xx included: the server is
        alive), False (failed: counts towards its breaker), None (no verdict)."""
        with self._lock:
            server.in_flight = max(0, server.in_flight - 1)
            if ok is False:
                server.failed += 1
                server.last_error_kind = error_kind(error)
        if ok is True:
            server.breaker.success()
        elif ok is False:
            server.breaker.failure(error)

    def snapshot(self) -> list[dict[str, Any]]:
        out = []
        for s in self.servers:
            circuit = s.breaker.snapshot()
            circuit.pop("last_error")  # raw error text stays in logs; the kind tells enough
            out.append(
                {
                    "base_url": s.base_url,
                    "circuit": circuit,
                    "in_flight": s.in_flight,
                    "calls": s.calls,
                    "failed": s.failed,
                    "last_error_kind": s.last_error_kind,
                }
            )
        return out
