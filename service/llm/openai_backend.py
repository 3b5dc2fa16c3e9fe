"""OpenAI-compatible backend for a vLLM server (httpx, synchronous, thread-safe).

- String prompts go to `/v1/completions` (a batch in one request: vLLM batches it),
  message lists to `/v1/chat/completions` (concurrent requests, one per prompt).
- Structured output uses vLLM's `structured_outputs` ({"choice": [...]} / {"json": schema});
  the old `guided_*` fields are silently ignored by current vLLM, so we never send them.
- Several servers: llm_base_url takes one URL or several, comma-separated (vLLM replicas
  serving the same model under the same served name, and the same LoRA adapter). Each has
  its own circuit breaker; calls go to the least busy server whose breaker is closed
  (service/llm/pool.py). Choice scoring tokenises and scores on one server per call.
- Failures: connection errors and 5xx are retried with exponential backoff (bounded by
  llm_max_retries), on another server first (no wait) when there is one; read timeouts
  are NOT retried (the server may still be working, and a retry would double both the
  load and the wait). Every failed attempt feeds that server's breaker: after
  llm_circuit_failures consecutive failures it gets no calls for llm_circuit_reset_s, then
  the next call first probes its /health (2 s at most) and a server that answers is back.
  A dead server therefore costs one bounded attempt, not one timeout per request; with
  every breaker open, calls fail fast with CircuitOpenError. A stream fails over only up
  to its first token.

Choice scoring is exact and uses the same definition as the in-process backend: the
prompt is tokenised by the server (`/tokenize`, so the chat template and special tokens
are the server's), each choice is tokenised alone, and log P(choice | prompt) is the sum of
the choice tokens' log-probabilities after the prompt tokens. Fast path (every choice is
one token): one `/v1/completions` call with `max_tokens=1, logprobs=20` over token-id
prompts; top-k logprobs are the raw, full-vocabulary log-softmax, so each choice found
there is exact. Choices outside the top 20, and multi-token choices, are scored with
`prompt_logprobs` on prompt+choice token sequences (exact for any choice). `logprobs=20`
alone would silently lose every choice outside the top 20.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from service.config import Settings, get_settings
from service.llm.base import BatchedLLM, Generation, GenParams, LLMError, Prompt
from service.llm.pool import (
    CircuitBreaker,
    CircuitOpenError,
    Server,
    ServerPool,
    error_kind,
    parse_base_urls,
)

TOP_LOGPROBS = 20  # vLLM's default --max-logprobs
__all__ = ["CircuitBreaker", "CircuitOpenError", "OpenAILLM"]  # the breaker lives in pool.py


class _Retryable(Exception):
    """Connection trouble or a 5xx: worth another attempt, preferably on another server."""


class _Timeout(LLMError):
    """A read timeout: counted against the server, never retried (it may still be working)."""


class _Refused(LLMError):
    """A 4xx: our request's fault, and proof that the server is alive."""


class OpenAILLM(BatchedLLM):
    backend = "openai"

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        base_url: str | None = None,
        model: str | None = None,
        backoff_s: float = 0.25,
    ) -> None:
        self.settings = settings or get_settings()
        try:
            urls = parse_base_urls(base_url or self.settings.llm_base_url)
        except ValueError as e:
            raise LLMError(f"RECSMITH_LLM_BASE_URL: {e}") from None
        # Every URL in one string, comma-joined: load_adapter_into passes it on as is.
        self.base_url = ",".join(urls)
        self.model = model or self.settings.llm_served_name
        self.model_id = self.model
        self.max_retries = max(0, self.settings.llm_max_retries)
        self.top_logprobs = max(TOP_LOGPROBS, self.settings.llm_top_logprobs)
        self.backoff_s = backoff_s
        t = self.settings.llm_timeout_s
        self.client = httpx.Client(
            timeout=httpx.Timeout(t, connect=min(5.0, t)),
            headers={"Authorization": f"Bearer {self.settings.llm_api_key}"},
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=16),
        )
        self.probe_timeout_s = min(2.0, t)
        self.pool = ServerPool(
            urls,
            failures=self.settings.llm_circuit_failures,
            reset_s=self.settings.llm_circuit_reset_s,
            probe=self._probe,
        )
        # Choice token ids per (server, choice): replicas should share a tokenizer, but a
        # score is only exact with the ids of the server that computes it.
        self._choice_tokens: dict[tuple[str, str], list[int]] = {}

    @property
    def servers(self) -> list[Server]:
        return self.pool.servers

    @property
    def breaker(self) -> CircuitBreaker:
        """The first server's breaker (the only one with a single URL)."""
        return self.pool.servers[0].breaker

    @property
    def root_url(self) -> str:
        return self.pool.servers[0].root_url

    # ---- transport ----------------------------------------------------------------------
    def _probe(self, server: Server) -> str | None:
        """A half-open breaker's probe: GET /health, short timeout. Any answer below 500
        means the server is up (a non-vLLM server may have no /health)."""
        try:
            r = self.client.get(f"{server.root_url}/health", timeout=self.probe_timeout_s)
        except httpx.HTTPError as e:
            return f"{type(e).__name__}: {e}"
        return None if r.status_code < 500 else f"HTTP {r.status_code} from /health"

    def _backoff(self, attempt: int) -> None:
        time.sleep(min(4.0, self.backoff_s * 2**attempt) * (0.8 + 0.4 * random.random()))

    def _on_a_server(self, call: Callable[[Server], Any], what: str, keep: bool = False) -> Any:
        """Runs call(server) on a leased server; connection trouble and 5xx move the call to
        another server (no wait) or, all tried, back to one after a backoff, within
        llm_max_retries retries. Every outcome feeds that server's breaker. keep: the lease
        outlives the call (a stream): returns (server, result), the caller calls done()."""
        last = ""
        tried: list[Server] = []
        for attempt in range(self.max_retries + 1):
            server = self.pool.lease(tried, fresh_only=True)
            if server is None:  # every usable server failed once in this call: wait
                self._backoff(attempt - 1)
                server = self.pool.lease(tried)
                assert server is not None
            tried.append(server)
            try:
                out = call(server)
            except _Retryable as e:
                last = str(e)
                self.pool.done(server, False, last)
                continue
            except _Timeout as e:
                self.pool.done(server, False, str(e))
                raise
            except _Refused:
                self.pool.done(server, True)
                raise
            except BaseException:
                self.pool.done(server, None)
                raise
            if keep:
                return server, out
            self.pool.done(server, True)
            return out
        raise LLMError(f"{what} failed after {self.max_retries + 1} attempts: {last}")

    def _classify(self, e: httpx.HTTPError, url: str) -> Exception:
        """Maps an httpx error to retry (connection trouble) or a final LLMError (timeout)."""
        if isinstance(e, httpx.ConnectError | httpx.ConnectTimeout | httpx.RemoteProtocolError):
            return _Retryable(f"{type(e).__name__} on {url}: {e}")
        if isinstance(e, httpx.TimeoutException):
            return _Timeout(f"timeout after {self.settings.llm_timeout_s} s on {url}")
        return _Retryable(f"{type(e).__name__} on {url}: {e}")

    def _check(self, r: httpx.Response, url: str) -> None:
        if r.status_code >= 500:
            raise _Retryable(f"HTTP {r.status_code} from {url}: {r.text[:300]}")
        if r.status_code == 404 and "does not exist" in r.text and self.model in r.text:
            # A replica started without this model (say, without --enable-lora for the
            # reranker): its breaker opens for this client and the others answer.
            raise _Retryable(f"HTTP 404 from {url}: it does not serve model {self.model!r}")
        if r.status_code >= 400:
            raise _Refused(f"HTTP {r.status_code} from {url}: {r.text[:500]}")

    def _request(self, url: str, payload: dict[str, Any]) -> dict[str, Any]:
        """One POST, no retry (the caller's _on_a_server decides)."""
        try:
            r = self.client.post(url, json=payload)
        except httpx.HTTPError as e:
            raise self._classify(e, url) from e
        self._check(r, url)
        try:
            return r.json()
        except ValueError as e:
            raise LLMError(f"non-JSON answer from {url}: {r.text[:300]}") from e

    def _post(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        """POST base_url/path on whichever server the pool gives, with failover."""
        return self._on_a_server(
            lambda s: self._request(f"{s.base_url}{path}", payload), f"POST {path}"
        )

    # ---- request building ---------------------------------------------------------------
    def _sampling(self, params: GenParams) -> dict[str, Any]:
        d: dict[str, Any] = {
            "model": self.model,
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
        }
        if params.stop:
            d["stop"] = list(params.stop)
        if params.seed is not None:
            d["seed"] = params.seed
        if params.repetition_penalty != 1.0:  # vLLM's own parameter (same meaning)
            d["repetition_penalty"] = params.repetition_penalty
        if params.choices:
            d["structured_outputs"] = {"choice": list(params.choices)}
        elif params.json_schema is not None:
            d["structured_outputs"] = {"json": params.json_schema}
        return d

    # ---- LLM interface ------------------------------------------------------------------
    def generate(
        self, prompts: Sequence[Prompt], params: GenParams | None = None
    ) -> list[Generation]:
        params = params or GenParams()
        prompts = list(prompts)
        out: list[Generation | None] = [None] * len(prompts)
        t0 = time.perf_counter()
        texts = [i for i, p in enumerate(prompts) if isinstance(p, str)]
        chats = [i for i, p in enumerate(prompts) if not isinstance(p, str)]
        if texts:
            payload = {
                **self._sampling(params),
                "prompt": [prompts[i] for i in texts],
                "return_token_ids": True,  # per-prompt token counts (usage is per request)
            }
            data = self._post("/completions", payload)
            dt = time.perf_counter() - t0
            for ch in data.get("choices", []):
                i = texts[ch["index"]]
                out[i] = self._generation(
                    ch.get("text") or "",
                    ch.get("finish_reason") or "",
                    len(ch.get("prompt_token_ids") or []),
                    len(ch.get("token_ids") or []),
                    dt,
                    params,
                )

        def chat(i: int) -> None:
            payload = {**self._sampling(params), "messages": prompts[i]}
            data = self._post("/chat/completions", payload)
            ch = data["choices"][0]
            usage = data.get("usage") or {}
            out[i] = self._generation(
                ch["message"].get("content") or "",
                ch.get("finish_reason") or "",
                usage.get("prompt_tokens", 0),
                usage.get("completion_tokens", 0),
                time.perf_counter() - t0,
                params,
            )

        if len(chats) == 1:
            chat(chats[0])
        elif chats:
            # One request per chat, each leased on its own: they spread over the servers.
            with ThreadPoolExecutor(max_workers=min(16, len(chats))) as threads:
                list(threads.map(chat, chats))  # re-raises the first error
        missing = [i for i, g in enumerate(out) if g is None]
        if missing:
            raise LLMError(f"server returned no answer for prompts {missing}")
        return [g for g in out if g is not None]

    def stream(self, prompt: Prompt, params: GenParams | None = None) -> Iterator[str]:
        params = params or GenParams()
        chat = not isinstance(prompt, str)
        path = "/chat/completions" if chat else "/completions"
        key = "messages" if chat else "prompt"
        payload = {**self._sampling(params), key: prompt, "stream": True}

        def open_stream(server: Server) -> tuple[Any, str | None, Iterator[str]]:
            url = f"{server.base_url}{path}"
            ctx = self.client.stream("POST", url, json=payload)
            try:
                r = ctx.__enter__()
            except httpx.HTTPError as e:
                raise self._classify(e, url) from e
            try:
                if r.status_code >= 400:
                    r.read()
                self._check(r, url)
                pieces = self._pieces(r, chat)
                # Up to the first token a broken stream fails over like a refused connection.
                first = next(pieces, None)
            except httpx.HTTPError as e:
                ctx.__exit__(None, None, None)
                raise self._classify(e, url) from e
            except BaseException:
                ctx.__exit__(None, None, None)
                raise
            return ctx, first, pieces

        server, (ctx, first, pieces) = self._on_a_server(
            open_stream, f"POST {path} (stream)", keep=True
        )
        ok: bool | None = None
        error = ""
        try:
            if first is not None:
                yield first
            yield from pieces  # once text has flowed, a break is final
            ok = True
        except httpx.HTTPError as e:
            ok, error = False, f"{type(e).__name__} mid-stream on {server.base_url}: {e}"
            raise LLMError(f"stream from {server.base_url} broke: {e}") from e
        finally:
            ctx.__exit__(None, None, None)
            self.pool.done(server, ok, error)

    @staticmethod
    def _pieces(r: httpx.Response, chat: bool) -> Iterator[str]:
        for line in r.iter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                return
            event = json.loads(data)
            if "error" in event:
                raise LLMError(f"server error mid-stream: {event['error']}")
            for ch in event.get("choices", []):
                piece = (ch.get("delta") or {}).get("content") if chat else ch.get("text")
                if piece:
                    yield piece

    # ---- choice scoring -----------------------------------------------------------------
    def tokenize(
        self, prompt: Prompt, add_special_tokens: bool | None = None, server: Server | None = None
    ) -> list[int]:
        """Token ids as the server makes them (vLLM's /tokenize; chat template included);
        on `server` when given (scoring pins one), else on any."""
        payload: dict[str, Any] = {"model": self.model}
        if isinstance(prompt, str):
            payload["prompt"] = prompt
            if add_special_tokens is not None:
                payload["add_special_tokens"] = add_special_tokens
        else:
            payload.update(messages=prompt, add_generation_prompt=True)
        if server is None:
            return self._on_a_server(
                lambda s: self.tokenize(prompt, add_special_tokens, s), "POST /tokenize"
            )
        return list(self._request(f"{server.root_url}/tokenize", payload)["tokens"])

    def _choice_ids(self, choice: str, server: Server | None = None) -> list[int]:
        server = server or self.servers[0]
        key = (server.base_url, choice)
        if key not in self._choice_tokens:
            ids = self.tokenize(choice, add_special_tokens=False, server=server)
            if not ids:
                raise LLMError(f"choice {choice!r} tokenises to nothing")
            self._choice_tokens[key] = ids
        return self._choice_tokens[key]

    def choice_token_ids(self, choices: Sequence[str]) -> dict[str, list[int]]:
        """Each choice's token ids as the (first) server tokenises it, without special
        tokens: what choice scoring compares the model's next tokens with."""
        return {c: self._choice_ids(c) for c in choices}

    def _score_choices(self, prompts: list[Prompt], choices: list[str]) -> list[dict[str, float]]:
        # Tokenising and scoring on one server (token ids are only meaningful to the
        # tokenizer that made them); a failure moves the whole batch to another server.
        return self._on_a_server(lambda s: self._score(s, prompts, choices), "choice scoring")

    def _score(
        self, server: Server, prompts: list[Prompt], choices: list[str]
    ) -> list[dict[str, float]]:
        url = f"{server.base_url}/completions"
        c_ids = {c: self._choice_ids(c, server) for c in choices}
        p_ids = [self.tokenize(p, server=server) for p in prompts]
        out: list[dict[str, float]] = [{} for _ in p_ids]
        todo: list[tuple[int, str]] = []  # (prompt index, choice) still to score exactly
        if all(len(ids) == 1 for ids in c_ids.values()):
            payload = {
                "model": self.model,
                "prompt": p_ids,
                "max_tokens": 1,
                "temperature": 0.0,
                "logprobs": self.top_logprobs,
                "return_tokens_as_token_ids": True,
            }
            try:
                data = self._request(url, payload)
            except _Refused as e:
                # A server started without --max-logprobs refuses more than 20: use 20.
                if self.top_logprobs <= TOP_LOGPROBS or "logprobs" not in str(e).lower():
                    raise
                self.top_logprobs = payload["logprobs"] = TOP_LOGPROBS
                data = self._request(url, payload)
            for ch in data["choices"]:
                i = ch["index"]
                top = ch["logprobs"]["top_logprobs"][0]
                for c in choices:
                    key = f"token_id:{c_ids[c][0]}"
                    if key in top:
                        out[i][c] = float(top[key])
                    else:
                        todo.append((i, c))
        else:
            todo = [(i, c) for i in range(len(p_ids)) for c in choices]
        if todo:
            seqs = [p_ids[i] + c_ids[c] for i, c in todo]
            data = self._request(
                url,
                {
                    "model": self.model,
                    "prompt": seqs,
                    "max_tokens": 1,
                    "temperature": 0.0,
                    "prompt_logprobs": 0,
                },
            )
            for ch in data["choices"]:
                i, c = todo[ch["index"]]
                plp = ch["prompt_logprobs"]
                start = len(p_ids[i])
                total = 0.0
                for k, t in enumerate(c_ids[c]):
                    total += float(plp[start + k][str(t)]["logprob"])
                out[i][c] = total
        return [{c: d[c] for c in choices} for d in out]

    # ---- health -------------------------------------------------------------------------
    def _server_up(self, server: Server) -> tuple[bool, str]:
        try:
            r = self.client.get(f"{server.root_url}/health", timeout=2.0)
        except httpx.HTTPError as e:
            return False, f"{type(e).__name__}: {e}"
        return r.status_code == 200, f"HTTP {r.status_code}"

    def health(self) -> dict[str, Any]:
        """Each server's breaker plus a quick /health probe (not counted by the breakers).
        ok: at least one server answers and its breaker is not open."""
        if len(self.servers) == 1:
            probes = [self._server_up(self.servers[0])]
        else:  # in parallel: a readiness check waits ~2 s at most, not 2 s per server
            with ThreadPoolExecutor(max_workers=min(8, len(self.servers))) as threads:
                probes = list(threads.map(self._server_up, self.servers))
        servers = self.pool.snapshot()
        for snap, (up, detail) in zip(servers, probes, strict=True):
            snap["server"] = "up" if up else "down"
            snap["probe"] = error_kind(detail)  # "HTTP 200", "ConnectError": no raw text
            snap["ok"] = up and snap["circuit"]["state"] != "open"
        states = [s.breaker.state for s in self.servers]
        if len(self.servers) == 1:
            circuit = self.breaker.snapshot()
            server_detail = probes[0][1]
        else:
            best = next(st for st in ("closed", "half_open", "open") if st in states)
            circuit = {"state": best, "closed": states.count("closed"), "servers": len(states)}
            server_detail = f"{sum(up for up, _ in probes)}/{len(probes)} servers up"
        return {
            "backend": self.backend,
            "model_id": self.model_id,
            "base_url": self.base_url,
            "ok": any(s["ok"] for s in servers),
            "server": "up" if any(up for up, _ in probes) else "down",
            "server_detail": server_detail,
            "circuit": circuit,
            "servers": servers,
        }

    def close(self) -> None:
        self.client.close()
