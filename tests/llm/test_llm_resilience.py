"""Timeouts, retries and the circuit breaker of the OpenAI-compatible backend."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from service.config import Settings
from service.llm.base import GenParams, LLMError
from service.llm.openai_backend import CircuitBreaker, CircuitOpenError, OpenAILLM
from service.llm.vllm_server import free_port


def _client(tmp_path: Path, url: str, **over: object) -> OpenAILLM:
    s = Settings(data_dir=tmp_path, llm_base_url=url, **over)  # type: ignore[arg-type]
    return OpenAILLM(s, backoff_s=0.02)


def test_unreachable_server_fails_quickly_then_fast(tmp_path: Path) -> None:
    llm = _client(tmp_path, f"http://127.0.0.1:{free_port()}/v1", llm_max_retries=2)
    t0 = time.perf_counter()
    with pytest.raises(LLMError):
        llm.generate(["hello"], GenParams(max_tokens=4))
    first = time.perf_counter() - t0
    assert first < 5.0  # connection refused, 3 attempts with short backoff
    # 3 failed attempts = the default threshold: the breaker is open now.
    t0 = time.perf_counter()
    with pytest.raises(CircuitOpenError):
        llm.generate(["hello"], GenParams(max_tokens=4))
    second = time.perf_counter() - t0
    assert second < 0.05, f"second call took {second * 1000:.1f} ms"
    with pytest.raises(CircuitOpenError):
        list(llm.stream("hello"))
    with pytest.raises(CircuitOpenError):
        llm.choice_logprobs("hello", ["a", "b"])
    h = llm.health()
    assert h["ok"] is False and h["circuit"]["state"] == "open" and h["server"] == "down"


@pytest.fixture
def hanging_server() -> Iterator[str]:
    """Accepts connections and never answers: a wedged server, the worst case."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    conns: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        sock.settimeout(0.1)
        while not stop.is_set():
            try:
                conns.append(sock.accept()[0])
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    stop.set()
    t.join()
    for c in conns:
        c.close()
    sock.close()


def test_hanging_server_costs_one_timeout(tmp_path: Path, hanging_server: str) -> None:
    llm = _client(tmp_path, hanging_server, llm_timeout_s=0.5, llm_circuit_failures=1)
    t0 = time.perf_counter()
    with pytest.raises(LLMError, match="timeout"):
        llm.generate(["hello"], GenParams(max_tokens=4))
    assert time.perf_counter() - t0 < 2.0  # one timeout, no retry of a read timeout
    t0 = time.perf_counter()
    with pytest.raises(CircuitOpenError):
        llm.generate(["hello"], GenParams(max_tokens=4))
    assert time.perf_counter() - t0 < 0.05


class _Flaky(BaseHTTPRequestHandler):
    """503 for the first `fail` requests, then a minimal /v1/completions answer."""

    fail = 2
    seen = 0

    def do_POST(self) -> None:  # noqa: N802 - http.server API
        self.rfile.read(int(self.headers.get("content-length", 0)))
        type(self).seen += 1
        if type(self).seen <= type(self).fail:
            self.send_response(503)
            self.end_headers()
            return
        body = json.dumps(
            {"choices": [{"index": 0, "text": "ok", "finish_reason": "stop"}]}
        ).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_5xx_is_retried_and_success_closes_the_breaker(tmp_path: Path) -> None:
    _Flaky.seen, _Flaky.fail = 0, 2
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}/v1"
        llm = _client(tmp_path, url, llm_max_retries=2, llm_circuit_failures=5)
        assert llm.generate(["hi"], GenParams(max_tokens=2))[0].text == "ok"
        assert _Flaky.seen == 3
        assert llm.breaker.snapshot()["state"] == "closed"
        assert llm.breaker.failures == 0
    finally:
        srv.shutdown()
        srv.server_close()


def test_4xx_is_not_retried(tmp_path: Path) -> None:
    class _Bad(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers.get("content-length", 0)))
            self.send_response(400)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Bad)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        llm = _client(tmp_path, f"http://127.0.0.1:{srv.server_address[1]}/v1")
        with pytest.raises(LLMError, match="HTTP 400"):
            llm.generate(["hi"])
        assert llm.breaker.snapshot()["state"] == "closed"
    finally:
        srv.shutdown()
        srv.server_close()


class _Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_breaker_opens_half_opens_and_closes() -> None:
    clock = _Clock()
    b = CircuitBreaker(failures=2, reset_s=10.0, clock=clock)
    b.before()
    b.failure("boom")
    b.before()  # one failure: still closed
    b.failure("boom")
    assert b.state == "open"
    with pytest.raises(CircuitOpenError):
        b.before()
    clock.t += 10.0
    b.before()  # the half-open probe goes through …
    assert b.state == "half_open"
    with pytest.raises(CircuitOpenError):
        b.before()  # … and only one at a time
    b.failure("still down")
    assert b.state == "open"  # a failed probe re-opens at once
    clock.t += 10.0
    b.before()
    b.success()
    assert b.state == "closed" and b.failures == 0
    b.before()


@pytest.mark.vllm
def test_half_open_probe_recovers_on_a_live_server(tmp_path: Path, vllm_url: str) -> None:
    llm = _client(tmp_path, vllm_url, llm_circuit_failures=1, llm_circuit_reset_s=0.2)
    llm.breaker.failure("simulated outage")
    with pytest.raises(CircuitOpenError):
        llm.generate(["hi"], GenParams(max_tokens=1))
    time.sleep(0.25)
    assert llm.generate(["hi"], GenParams(max_tokens=1))[0].completion_tokens == 1
    assert llm.breaker.snapshot()["state"] == "closed"
