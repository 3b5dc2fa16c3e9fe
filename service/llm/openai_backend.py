"""OpenAI-compatible backend for a vLLM server (httpx, synchronous, thread-safe).

- String prompts go to `/v1/completions` (a batch in one request: vLLM batches it),
  message lists to `/v1/chat/completions` (concurrent requests, one per prompt).
- Structured output uses vLLM's `structured_outputs` ({"choice": [...]} / {"json": schema});
  the old `guided_*` fields are silently ignored by current vLLM, so we never send them.
- Failures: connection errors and 5xx are retried with exponential backoff (bounded by
  llm_max_retries); read timeouts are NOT retried (the server may still be working, and a
  retry would double both the load and the wait). Every failed attempt feeds a circuit
  breaker: after llm_circuit_failures consecutive failures calls fail fast with LLMError
  for llm_circuit_reset_s, then one half-open probe decides. A dead server therefore costs
  one bounded attempt, not one timeout per request.

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
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from service.config import Settings, get_settings
from service.llm.base import LLM, Generation, GenParams, LLMError, Prompt
from service.llm.transformers_backend import extract_json

TOP_LOGPROBS = 20  # vLLM's default --max-logprobs


class CircuitOpenError(LLMError):
    """Failing fast: the server failed repeatedly and the reset period has not passed."""


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

    def before(self) -> None:
        """Raises CircuitOpenError instead of letting a call through to a dead server."""
        with self._lock:
            if self.state == "closed":
                return
            if self.state == "open":
                left = self.reset_s - (self.clock() - self.opened_at)
                if left > 0:
                    raise CircuitOpenError(
                        f"LLM server circuit open for {left:.1f} s more "
                        f"after {self.failures} failures; last: {self.last_error}"
                    )
                self.state = "half_open"
                self.probe_in_flight = True
                return  # this caller is the probe
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


class _Retryable(Exception):
    pass


class OpenAILLM(LLM):
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
        self.base_url = (base_url or self.settings.llm_base_url).rstrip("/")
        # vLLM's own endpoints (/health, /tokenize) live at the server root.
        self.root_url = self.base_url[:-3] if self.base_url.endswith("/v1") else self.base_url
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
        self.breaker = CircuitBreaker(
            self.settings.llm_circuit_failures, self.settings.llm_circuit_reset_s
        )
        self._choice_tokens: dict[str, list[int]] = {}

    # ---- transport ----------------------------------------------------------------------
    def _attempts(self, call: Callable[[], Any], what: str) -> Any:
        last = ""
        for attempt in range(self.max_retries + 1):
            self.breaker.before()
            try:
                return call()
            except _Retryable as e:
                last = str(e)
                self.breaker.failure(last)
            if attempt < self.max_retries:
                delay = min(4.0, self.backoff_s * 2**attempt) * (0.8 + 0.4 * random.random())
                time.sleep(delay)
        raise LLMError(f"{what} failed after {self.max_retries + 1} attempts: {last}")

    def _classify(self, e: httpx.HTTPError, url: str) -> Exception:
        """Maps an httpx error to retry (connection trouble) or a final LLMError (timeout)."""
        if isinstance(e, httpx.ConnectError | httpx.ConnectTimeout | httpx.RemoteProtocolError):
            return _Retryable(f"{type(e).__name__} on {url}: {e}")
        if isinstance(e, httpx.TimeoutException):
            self.breaker.failure(f"timeout on {url}")
            return LLMError(f"timeout after {self.settings.llm_timeout_s} s on {url}")
        return _Retryable(f"{type(e).__name__} on {url}: {e}")

    def _check(self, r: httpx.Response, url: str) -> None:
        if r.status_code >= 500:
            raise _Retryable(f"HTTP {r.status_code} from {url}: {r.text[:300]}")
        # A 4xx is our request's fault, and proof that the server is alive.
        self.breaker.success()
        if r.status_code >= 400:
            raise LLMError(f"HTTP {r.status_code} from {url}: {r.text[:500]}")

    def _post(self, url: str, payload: dict[str, Any]) -> dict[str, Any]:
        def call() -> dict[str, Any]:
            try:
                r = self.client.post(url, json=payload)
            except httpx.HTTPError as e:
                raise self._classify(e, url) from e
            self._check(r, url)
            try:
                return r.json()
            except ValueError as e:
                raise LLMError(f"non-JSON answer from {url}: {r.text[:300]}") from e

        return self._attempts(call, f"POST {url}")

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

    def _generation(
        self, text: str, finish: str, p_tok: int, c_tok: int, dt: float, params: GenParams
    ) -> Generation:
        meta: dict[str, Any] = {}
        if params.choices:
            meta["structured"] = "choice"
        elif params.json_schema is not None:
            meta = {"structured": "json", "json": extract_json(text)}
        return Generation(
            text=text,
            model_id=self.model_id,
            backend=self.backend,
            prompt_tokens=p_tok,
            completion_tokens=c_tok,
            finish_reason=finish or "",
            latency_s=dt,
            meta=meta,
        )

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
            data = self._post(f"{self.base_url}/completions", payload)
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
            data = self._post(f"{self.base_url}/chat/completions", payload)
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
            with ThreadPoolExecutor(max_workers=min(16, len(chats))) as pool:
                list(pool.map(chat, chats))  # re-raises the first error
        missing = [i for i, g in enumerate(out) if g is None]
        if missing:
            raise LLMError(f"server returned no answer for prompts {missing}")
        return [g for g in out if g is not None]

    def stream(self, prompt: Prompt, params: GenParams | None = None) -> Iterator[str]:
        params = params or GenParams()
        chat = not isinstance(prompt, str)
        url = f"{self.base_url}/{'chat/completions' if chat else 'completions'}"
        key = "messages" if chat else "prompt"
        payload = {**self._sampling(params), key: prompt, "stream": True}

        def open_stream() -> tuple[Any, httpx.Response]:
            ctx = self.client.stream("POST", url, json=payload)
            try:
                r = ctx.__enter__()
            except httpx.HTTPError as e:
                raise self._classify(e, url) from e
            if r.status_code >= 400:
                r.read()
                ctx.__exit__(None, None, None)
            self._check(r, url)
            return ctx, r

        # Retries cover only the opening; once text has flowed, a break is final.
        ctx, r = self._attempts(open_stream, f"POST {url} (stream)")
        try:
            for line in r.iter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                event = json.loads(data)
                if "error" in event:
                    raise LLMError(f"server error mid-stream: {event['error']}")
                for ch in event.get("choices", []):
                    piece = (ch.get("delta") or {}).get("content") if chat else ch.get("text")
                    if piece:
                        yield piece
        except httpx.HTTPError as e:
            self.breaker.failure(str(e))
            raise LLMError(f"stream from {url} broke: {e}") from e
        finally:
            ctx.__exit__(None, None, None)

    # ---- choice scoring -----------------------------------------------------------------
    def tokenize(self, prompt: Prompt, add_special_tokens: bool | None = None) -> list[int]:
        """Token ids as the server makes them (vLLM's /tokenize; chat template included)."""
        payload: dict[str, Any] = {"model": self.model}
        if isinstance(prompt, str):
            payload["prompt"] = prompt
            if add_special_tokens is not None:
                payload["add_special_tokens"] = add_special_tokens
        else:
            payload.update(messages=prompt, add_generation_prompt=True)
        return list(self._post(f"{self.root_url}/tokenize", payload)["tokens"])

    def _choice_ids(self, choice: str) -> list[int]:
        if choice not in self._choice_tokens:
            ids = self.tokenize(choice, add_special_tokens=False)
            if not ids:
                raise LLMError(f"choice {choice!r} tokenises to nothing")
            self._choice_tokens[choice] = ids
        return self._choice_tokens[choice]

    def choice_logprobs(self, prompt: Prompt, choices: Sequence[str]) -> dict[str, float]:
        return self.choice_logprobs_batch([prompt], choices)[0]

    def choice_logprobs_batch(
        self, prompts: Sequence[Prompt], choices: Sequence[str]
    ) -> list[dict[str, float]]:
        choices = list(dict.fromkeys(choices))
        if not choices:
            raise LLMError("choice_logprobs needs at least one choice")
        c_ids = {c: self._choice_ids(c) for c in choices}
        p_ids = [self.tokenize(p) for p in prompts]
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
                data = self._post(f"{self.base_url}/completions", payload)
            except LLMError as e:
                # A server started without --max-logprobs refuses more than 20: use 20.
                if self.top_logprobs <= TOP_LOGPROBS or "logprobs" not in str(e).lower():
                    raise
                self.top_logprobs = payload["logprobs"] = TOP_LOGPROBS
                data = self._post(f"{self.base_url}/completions", payload)
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
            data = self._post(
                f"{self.base_url}/completions",
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
    def health(self) -> dict[str, Any]:
        """Breaker state plus a quick /health probe (not counted by the breaker)."""
        server_ok = False
        detail = ""
        try:
            r = self.client.get(f"{self.root_url}/health", timeout=2.0)
            server_ok = r.status_code == 200
            detail = f"HTTP {r.status_code}"
        except httpx.HTTPError as e:
            detail = f"{type(e).__name__}: {e}"
        breaker = self.breaker.snapshot()
        return {
            "backend": self.backend,
            "model_id": self.model_id,
            "base_url": self.base_url,
            "ok": server_ok and breaker["state"] != "open",
            "server": "up" if server_ok else "down",
            "server_detail": detail,
            "circuit": breaker,
        }

    def close(self) -> None:
        self.client.close()
