"""Several LLM servers behind the OpenAI-compatible backend (service/llm/pool.py): per-server
circuit breakers, least-in-flight balancing, failover, recovery through a half-open probe.

The servers are real HTTP servers (http.server in a thread) speaking the few vLLM endpoints
the backend uses; a dead server is a closed port, and a recovered one is a new server on
that same port. One test pairs the real vLLM server with a dead port.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from service.cli import app
from service.config import ConfigError, Settings, get_settings
from service.llm.base import GenParams, LLMError
from service.llm.cli import _lora_args
from service.llm.openai_backend import CircuitOpenError, OpenAILLM
from service.llm.pool import parse_base_urls
from service.llm.vllm_server import VLLMServer, free_port
from service.ranking.adapter import SERVED_NAME

CHAT = [{"role": "user", "content": "hi"}]


class FakeVLLM:
    """/health, /tokenize, /v1/completions (text, streaming, top logprobs over token-id
    prompts) and /v1/chat/completions (plain and streaming).

    mode: "ok"; "500" (every request, /health included, answers 500); "stream_dies" (a
    stream sends its headers, then the connection drops before the first token).
    The tokenizer is one id per character plus `offset`: two fakes with different offsets
    have different tokenizers, and a completion over token ids from another server's
    tokenizer is refused with a 400 — scoring that mixes servers cannot pass unnoticed."""

    def __init__(
        self,
        name: str,
        *,
        port: int = 0,
        offset: int = 1000,
        mode: str = "ok",
        delay_s: float = 0.0,
        models: tuple[str, ...] = ("recsmith-default",),
    ) -> None:
        self.models = models
        self.name, self.port, self.offset, self.mode, self.delay_s = (
            name,
            port,
            offset,
            mode,
            delay_s,
        )
        self.hits: Counter[str] = Counter()
        self._srv: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> FakeVLLM:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _send(self, code: int, body: Any) -> None:
                raw = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def do_GET(self) -> None:  # noqa: N802 - http.server API
                fake.hits[f"GET {self.path}"] += 1
                self._send(500 if fake.mode == "500" else 200, {})

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                fake.hits[self.path] += 1
                if fake.mode == "500":
                    return self._send(500, {"error": "engine dead"})
                time.sleep(fake.delay_s)
                if fake.mode == "killed":  # the process died mid-request: no answer at all
                    self.close_connection = True
                    return None
                if self.path == "/tokenize":
                    return self._send(200, {"tokens": fake.tokens(body)})
                if body.get("model") not in fake.models:  # vLLM's answer, word for word
                    msg = f"The model `{body.get('model')}` does not exist."
                    return self._send(404, {"object": "error", "message": msg, "code": 404})
                if body.get("stream"):
                    return self._stream(body)
                if self.path == "/v1/chat/completions":
                    return self._send(200, fake.chat(body))
                if self.path == "/v1/completions":
                    return self._send(*fake.completion(body))
                self._send(404, {"error": self.path})

            def _stream(self, body: dict[str, Any]) -> None:
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                if fake.mode == "stream_dies":  # promises a body, then hangs up
                    self.send_header("content-length", "100000")
                    self.end_headers()
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.end_headers()
                chat = "messages" in body
                for word in ("hello ", f"from {fake.name}"):
                    ch = {"delta": {"content": word}} if chat else {"text": word}
                    self.wfile.write(f"data: {json.dumps({'choices': [ch]})}\n\n".encode())
                self.wfile.write(b"data: [DONE]\n\n")

        self._srv = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self._srv.server_address[1]
        threading.Thread(target=self._srv.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._srv is not None:
            self._srv.shutdown()
            self._srv.server_close()
            self._srv = None

    def tokens(self, body: dict[str, Any]) -> list[int]:
        text = body.get("prompt") or " ".join(m["content"] for m in body["messages"])
        return [self.offset + ord(c) % 500 for c in text]

    def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        return {
            "choices": [{"message": {"content": f"hi from {self.name}"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 3},
        }

    def completion(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        prompts = body["prompt"]
        if "logprobs" in body:  # choice scoring over token ids from /tokenize
            mine = range(self.offset, self.offset + 500)
            if not all(isinstance(t, int) and t in mine for p in prompts for t in p):
                return 400, {"error": f"token ids from another tokenizer than {self.name}'s"}
            # The same distribution on every server: log P(char) = -(ord(char) - 60) / 10.
            top = {f"token_id:{self.offset + k}": -(k - 60) / 10 for k in range(60, 80)}
            choices = [
                {"index": i, "logprobs": {"top_logprobs": [top]}} for i in range(len(prompts))
            ]
            return 200, {"choices": choices}
        return 200, {
            "choices": [
                {
                    "index": i,
                    "text": f"ok from {self.name}",
                    "finish_reason": "stop",
                    "prompt_token_ids": [1, 2],
                    "token_ids": [3],
                }
                for i in range(len(prompts))
            ]
        }


@pytest.fixture
def fakes() -> Iterator[list[FakeVLLM]]:
    started: list[FakeVLLM] = []
    yield started
    for f in started:
        f.stop()


def _start(fakes: list[FakeVLLM], *args: Any, **kw: Any) -> FakeVLLM:
    f = FakeVLLM(*args, **kw).start()
    fakes.append(f)
    return f


def _dead_port() -> str:
    """A URL on a port nobody listens on."""
    return f"http://127.0.0.1:{free_port()}/v1"


def _client(tmp_path: Path, urls: list[str], **over: Any) -> OpenAILLM:
    opts: dict[str, Any] = {"llm_circuit_failures": 2, "llm_circuit_reset_s": 30.0}
    opts.update(over)
    s = Settings(data_dir=tmp_path, llm_base_url=",".join(urls), **opts)
    return OpenAILLM(s, backoff_s=0.01)


def _server(llm: OpenAILLM, url: str) -> dict[str, Any]:
    return next(s for s in llm.health()["servers"] if s["base_url"] == url)


def _completions(f: FakeVLLM) -> int:
    return f.hits["/v1/completions"]


def test_dead_server_is_skipped_and_rejoins_after_it_recovers(
    tmp_path: Path, fakes: list[FakeVLLM]
) -> None:
    a = _start(fakes, "a")
    b = _start(fakes, "b")
    b.stop()  # b's port is closed now: a dead replica
    llm = _client(tmp_path, [a.url, b.url], llm_circuit_reset_s=0.5)
    t0 = time.perf_counter()
    texts = [llm.generate(["hi"], GenParams(max_tokens=4))[0].text for _ in range(10)]
    elapsed = time.perf_counter() - t0
    assert texts == ["ok from a"] * 10  # every call answered, by the live server
    assert elapsed < 2.0, f"10 calls beside a dead server took {elapsed:.2f} s"
    dead = _server(llm, b.url)
    assert dead["circuit"]["state"] == "open" and dead["server"] == "down"
    assert dead["failed"] == 2 and dead["last_error_kind"] == "ConnectError"  # then skipped
    h = llm.health()
    assert h["ok"] is True and h["server"] == "up" and h["circuit"]["closed"] == 1
    assert _server(llm, a.url)["ok"] is True

    b.start()  # the replica comes back on the same port
    assert b.port == int(b.url.rsplit(":", 1)[1].split("/")[0])
    time.sleep(0.6)  # past the reset period: the next lease probes b's /health
    texts = [llm.generate(["hi"], GenParams(max_tokens=4))[0].text for _ in range(10)]
    assert b.hits["GET /health"] >= 1
    assert texts.count("ok from b") >= 4, texts  # back in the rotation
    assert all(s["circuit"]["state"] == "closed" for s in llm.health()["servers"])


def test_calls_spread_over_two_live_servers(tmp_path: Path, fakes: list[FakeVLLM]) -> None:
    a = _start(fakes, "a", delay_s=0.1)
    b = _start(fakes, "b", delay_s=0.1)
    llm = _client(tmp_path, [a.url, b.url])
    for _ in range(10):  # one at a time: ties go round-robin
        llm.generate(["hi"], GenParams(max_tokens=4))
    assert _completions(a) == 5 and _completions(b) == 5
    # 16 chats at once: each is leased on its own, least-in-flight first.
    t0 = time.perf_counter()
    out = llm.generate([CHAT] * 16, GenParams(max_tokens=4))
    elapsed = time.perf_counter() - t0
    by = Counter(g.text for g in out)
    assert by["hi from a"] + by["hi from b"] == 16
    assert min(by["hi from a"], by["hi from b"]) >= 6, by
    assert elapsed < 1.2  # in parallel, not 16 x 100 ms
    assert all(s["in_flight"] == 0 for s in llm.health()["servers"])


def test_a_server_answering_500_opens_its_breaker_while_the_other_serves(
    tmp_path: Path, fakes: list[FakeVLLM]
) -> None:
    bad = _start(fakes, "bad", mode="500")
    good = _start(fakes, "good")
    llm = _client(tmp_path, [bad.url, good.url])
    for _ in range(12):
        assert llm.generate(["hi"], GenParams(max_tokens=4))[0].text == "ok from good"
        assert llm.generate([CHAT], GenParams(max_tokens=4))[0].text == "hi from good"
    # Two 500s (the threshold) open bad's breaker; from then on it gets nothing.
    assert _completions(bad) + bad.hits["/v1/chat/completions"] == 2
    h = llm.health()
    b = _server(llm, bad.url)
    assert b["circuit"]["state"] == "open" and b["ok"] is False
    assert b["last_error_kind"] == "HTTP 500" and b["probe"] == "HTTP 500"
    assert h["ok"] is True and h["circuit"] == {"state": "closed", "closed": 1, "servers": 2}
    assert h["server_detail"] == "1/2 servers up"  # bad answers /health with a 500


def test_streams_fail_over_before_the_first_token(tmp_path: Path, fakes: list[FakeVLLM]) -> None:
    dies = _start(fakes, "dies", mode="stream_dies")
    live = _start(fakes, "live")
    llm = _client(tmp_path, [dies.url, _dead_port(), live.url], llm_circuit_failures=5)
    for _ in range(3):
        assert "".join(llm.stream("hi")) == "hello from live"
        assert "".join(llm.stream(CHAT)) == "hello from live"
    assert dies.hits["/v1/completions"] + dies.hits["/v1/chat/completions"] >= 1
    s = _server(llm, dies.url)
    assert s["failed"] >= 1 and s["last_error_kind"] == "RemoteProtocolError"
    assert all(x["in_flight"] == 0 for x in llm.health()["servers"])  # leases returned


def test_a_server_killed_with_calls_in_flight_loses_none(
    tmp_path: Path, fakes: list[FakeVLLM]
) -> None:
    a = _start(fakes, "a", delay_s=0.3)
    b = _start(fakes, "b", delay_s=0.3)
    llm = _client(tmp_path, [a.url, b.url])
    out: list[Any] = []
    batch = threading.Thread(target=lambda: out.extend(llm.generate([CHAT] * 16)))
    batch.start()
    time.sleep(0.1)  # 8 calls are in flight on each server now
    a.mode = "killed"  # they get no answer (the connection drops) …
    a.stop()  # … and the port closes
    batch.join(timeout=10)
    assert len(out) == 16 and {g.text for g in out} == {"hi from b"}  # none lost
    assert a.hits["/v1/chat/completions"] == 8  # the killed server had its half
    dead = _server(llm, a.url)
    assert dead["circuit"]["state"] == "open" and dead["last_error_kind"] == "RemoteProtocolError"


def test_choice_scoring_tokenises_and_scores_on_one_server(
    tmp_path: Path, fakes: list[FakeVLLM]
) -> None:
    # Different tokenizers: a completion over the other server's ids would be a 400.
    a = _start(fakes, "a", offset=1000)
    b = _start(fakes, "b", offset=3000)
    llm = _client(tmp_path, [a.url, b.url])
    want = {"A": -0.5, "B": -0.6, "C": -0.7}  # the fake's distribution: -(ord - 60) / 10
    for _ in range(6):
        got = llm.choice_logprobs_batch(["pick one", [*CHAT]], ["A", "B", "C"])
        assert got == [pytest.approx(want), pytest.approx(want)]
    assert _completions(a) == 3 and _completions(b) == 3  # each call on one server
    assert a.hits["/tokenize"] > 0 and b.hits["/tokenize"] > 0


def test_every_server_down_fails_fast_naming_each(tmp_path: Path) -> None:
    dead = [_dead_port(), _dead_port()]
    llm = _client(tmp_path, dead, llm_max_retries=3)
    with pytest.raises(LLMError):
        llm.generate(["hi"], GenParams(max_tokens=4))
    t0 = time.perf_counter()
    with pytest.raises(CircuitOpenError, match="every LLM server's circuit is open") as e:
        llm.choice_logprobs("hi", ["A", "B"])
    assert time.perf_counter() - t0 < 0.05
    assert all(u in str(e.value) for u in dead)
    h = llm.health()
    assert h["ok"] is False and h["server"] == "down" and h["circuit"]["state"] == "open"


def test_base_url_list_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RECSMITH_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("RECSMITH_LLM_BASE_URL", " http://gpu-a:8000/v1/, http://gpu-b:8000/v1 ,")
    get_settings.cache_clear()
    try:
        llm = OpenAILLM(get_settings())
        assert [s.base_url for s in llm.servers] == ["http://gpu-a:8000/v1", "http://gpu-b:8000/v1"]
        assert [s.root_url for s in llm.servers] == ["http://gpu-a:8000", "http://gpu-b:8000"]
        # the single-URL form is unchanged
        one = OpenAILLM(Settings(data_dir=tmp_path, llm_base_url="http://h:8008/v1"))
        assert one.base_url == "http://h:8008/v1" and len(one.servers) == 1
        monkeypatch.setenv("RECSMITH_LLM_BASE_URL", "http://gpu-a:8000/v1,gpu-b:8000")
        get_settings.cache_clear()
        with pytest.raises(ConfigError, match="RECSMITH_LLM_BASE_URL: 'gpu-b:8000' is not"):
            get_settings()
    finally:
        get_settings.cache_clear()
    assert parse_base_urls(["http://x/v1", "http://x/v1/"]) == ["http://x/v1"]
    with pytest.raises(ValueError, match="no server URL"):
        parse_base_urls(" , ")


def test_a_replica_without_the_adapter_is_skipped_for_the_ranker_only(
    tmp_path: Path, fakes: list[FakeVLLM]
) -> None:
    with_lora = _start(fakes, "lora", models=("recsmith-default", "reranker"))
    plain = _start(fakes, "plain")  # started without --enable-lora
    writer = _client(tmp_path, [with_lora.url, plain.url])
    ranker = OpenAILLM(writer.settings, base_url=writer.base_url, model="reranker")  # as
    # service/ranking/adapter.load_adapter_into builds it: same servers, the adapter's name
    for _ in range(6):
        assert ranker.generate(["hi"], GenParams(max_tokens=2))[0].text == "ok from lora"
    assert _server(ranker, plain.url)["circuit"]["state"] == "open"
    assert _server(ranker, plain.url)["last_error_kind"] == "HTTP 404"
    texts = {writer.generate(["hi"], GenParams(max_tokens=2))[0].text for _ in range(4)}
    assert texts == {"ok from lora", "ok from plain"}  # the writer still uses both


def _fake_adapter(data_dir: Path, r: int) -> Path:
    path = data_dir / "models" / "reranker-lora"
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text(json.dumps({"r": r}))
    (path / "adapter_model.safetensors").write_bytes(b"weights")
    sha = {n: hashlib.sha256((path / n).read_bytes()).hexdigest() for n in
           ("adapter_config.json", "adapter_model.safetensors")}  # fmt: skip
    (path / "manifest.json").write_text(json.dumps({"format_version": 1, "sha256": sha}))
    return path


def test_vllm_serve_lora_serves_the_adapter_under_the_rankers_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:

    monkeypatch.setenv("RECSMITH_DATA_DIR", str(tmp_path))
    get_settings.cache_clear()
    try:
        # No adapter: one line, exit 1, nothing started.
        r = CliRunner().invoke(app, ["vllm", "serve", "--lora", "--port", str(free_port())])
        assert r.exit_code == 1 and "--lora: no reranker adapter in" in r.output, r.output
        assert not list(tmp_path.glob("vllm*.pid"))
        path = _fake_adapter(tmp_path, r=12)
        flags = _lora_args(get_settings())
        assert flags == ["--enable-lora", "--lora-modules", f"{SERVED_NAME}={path.resolve()}",
                         "--max-lora-rank", "16"]  # fmt: skip
        cmd = VLLMServer(tmp_path, port=8009, extra_args=flags).command()
        assert cmd[-len(flags) :] == flags and "--served-model-name" in cmd
    finally:
        get_settings.cache_clear()


@pytest.mark.vllm
def test_real_vllm_beside_a_dead_port_answers_every_call(
    tmp_path: Path, vllm_url: str, settings: Settings
) -> None:
    s = settings.model_copy(
        update={"data_dir": tmp_path, "llm_base_url": f"{_dead_port()},{vllm_url}"}
    )
    llm = OpenAILLM(s, backoff_s=0.01)
    params = GenParams(max_tokens=4)
    for _ in range(3):
        assert llm.generate(["Hello"], params)[0].completion_tokens >= 1
        assert llm.generate([CHAT], params)[0].text is not None
        assert "".join(llm.stream(CHAT, params))
        scores = llm.choice_logprobs(CHAT, ["A", "B"])
        assert set(scores) == {"A", "B"} and all(v < 0 for v in scores.values())
    h = llm.health()
    assert h["ok"] is True
    assert [x["circuit"]["state"] for x in h["servers"]] == ["open", "closed"]
