"""In-process GGUF backend: llama.cpp through `llama-cpp-python`, 4-bit weights on the CPU.

Why this engine: on these 2-core machines it decodes the same model several times faster
than fp32 transformers (eval/results/2026-11-30-engine.md) and reads the packaged GGUF as is.

How it maps the LLM contract:
- Prompts: a string is tokenised like transformers/vLLM do (the vocabulary's own BOS rule,
  special tokens parsed); a message list is rendered with the GGUF's own
  `tokenizer.chat_template` (jinja2, as transformers renders it) — never a built-in default,
  which on Qwen makes the model echo its input.
- One `Llama` per model file and process, guarded by a lock; a batch runs prompt by prompt.
- Prefix reuse: the context keeps the KV cache of what it evaluated last; a new prompt only
  evaluates its tokens after the longest common prefix (a fixed system prompt is paid once).
- Decoding runs our own loop over llama.cpp's sampler chain: repetition penalty (over prompt
  and answer, like vLLM/transformers `repetition_penalty`), grammar (JSON schema, choices),
  then greedy or top-p/temperature with the seed. Stop strings are cut in text.
- choice_logprobs: log-softmax of the last position's logits; a multi-token choice is scored
  token by token (each step evaluates one token on top of the cached prompt).
"""

from __future__ import annotations

import codecs
import json
import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from service.config import Settings, get_settings
from service.llm.base import LLM, Generation, GenParams, LLMError, Prompt
from service.llm.prepare import resolve_gguf
from service.llm.transformers_backend import _first_stop, extract_json


@dataclass
class LoadedGGUF:
    llm: Any  # llama_cpp.Llama
    path: str
    lock: threading.Lock
    chat_template: str | None
    special: dict[str, str]  # bos_token / eos_token text for the template
    stats: dict[str, int] = field(default_factory=lambda: {"evaluated": 0, "reused": 0})


def _import_llama_cpp() -> Any:
    try:
        import llama_cpp
    except ImportError as e:  # the wheel is built from source by `make setup`
        raise LLMError(
            "llm_backend=llamacpp needs llama-cpp-python: run `make setup` (it builds "
            "llama-cpp-python==0.3.36 portably, ~8 minutes the first time)"
        ) from e
    return llama_cpp


@lru_cache(maxsize=4)
def load_gguf(path: str, n_ctx: int = 4096, threads: int = 0) -> LoadedGGUF:
    """Loads a GGUF once per process (per context size and thread count)."""
    llama_cpp = _import_llama_cpp()
    # Default: half the cores, as llama-cpp-python does. ggml's threads spin at every
    # barrier: on a shared 2-core box 2 threads decoded at 9 tok/s where 1 gave 45.
    n_threads = threads if threads > 0 else max((os.cpu_count() or 2) // 2, 1)
    try:
        llm = llama_cpp.Llama(
            model_path=path,
            n_ctx=n_ctx,
            n_batch=512,
            n_threads=n_threads,
            n_threads_batch=n_threads,
            logits_all=False,
            verbose=False,
        )
    except Exception as e:  # noqa: BLE001 - any loading failure is a configuration error
        raise LLMError(f"llama.cpp could not load {path!r}: {e}") from e
    model = llm._model
    special = {
        "bos_token": model.token_get_text(model.token_bos()) if model.token_bos() >= 0 else "",
        "eos_token": model.token_get_text(model.token_eos()) if model.token_eos() >= 0 else "",
    }
    template = llm.metadata.get("tokenizer.chat_template")
    return LoadedGGUF(llm, path, threading.Lock(), template, special)


@lru_cache(maxsize=8)
def _compile_template(source: str) -> Any:
    """The chat template compiled the way transformers does (sandboxed, trimmed blocks)."""
    from datetime import datetime

    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise LLMError(f"chat template: {message}")

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
    )
    env.filters["tojson"] = lambda x, indent=None, **kw: json.dumps(
        x, ensure_ascii=False, indent=indent
    )
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(source)


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    m = x.max()
    return x - m - np.log(np.exp(x - m).sum())


class LlamaCppLLM(LLM):
    backend = "llamacpp"

    def __init__(self, settings: Settings | None = None, model_path: str | None = None) -> None:
        self.settings = settings or get_settings()
        self.model_path = str(model_path or resolve_gguf(self.settings))
        self.m = load_gguf(self.model_path, self.settings.llm_n_ctx, self.settings.llm_threads)
        self.model_id = Path(self.model_path).name

    # ---- tokenisation -------------------------------------------------------------------
    def render(self, messages: Sequence[dict[str, str]]) -> str:
        if not self.m.chat_template:
            raise LLMError(f"{self.model_id} has no chat template; send a string prompt")
        return _compile_template(self.m.chat_template).render(
            messages=list(messages), add_generation_prompt=True, **self.m.special
        )

    def encode(self, prompt: Prompt) -> list[int]:
        llm = self.m.llm
        if isinstance(prompt, str):
            return list(llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True))
        text = self.render(prompt)
        return list(llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def _token_ids(self, text: str) -> list[int]:
        return list(self.m.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    # ---- the context (call with the lock held) ------------------------------------------
    def _eval(self, ids: Sequence[int]) -> np.ndarray:
        """Make the context hold exactly `ids` and return the last position's logits.

        Only the part after the longest common prefix with what the context holds is
        evaluated (at least one token, so the logits are fresh)."""
        llm = self.m.llm
        n_ctx = llm.n_ctx()
        if len(ids) >= n_ctx:
            raise LLMError(f"prompt of {len(ids)} tokens does not fit the context ({n_ctx})")
        held = llm._input_ids  # what the KV cache holds, position by position
        n = 0
        limit = min(len(held), len(ids) - 1)
        while n < limit and held[n] == ids[n]:
            n += 1
        if n < llm.n_tokens and not llm._ctx.kv_cache_seq_rm(-1, n, -1):
            n = 0
            llm.reset()
        llm.n_tokens = n  # eval() drops the KV cache beyond n_tokens, then appends
        try:
            llm.eval(list(ids[n:]))
        except Exception as e:  # noqa: BLE001
            llm.reset()
            raise LLMError(f"llama.cpp evaluation failed: {e}") from e
        self.m.stats["reused"] += n
        self.m.stats["evaluated"] += len(ids) - n
        return self._last_logits()

    def _last_logits(self) -> np.ndarray:
        llama_cpp = _import_llama_cpp()
        llm = self.m.llm
        ptr = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),)).copy()

    def _sampler(self, params: GenParams, prompt_ids: Sequence[int]) -> Any:
        from llama_cpp import LlamaGrammar, _internals

        llama_cpp = _import_llama_cpp()
        llm = self.m.llm
        chain = _internals.LlamaSampler()
        if params.repetition_penalty != 1.0:
            # Over the whole context and the prompt included: vLLM/transformers semantics
            # (llama-cpp-python's own generate() only counts the last 64 answer tokens).
            chain.add_penalties(llm.n_vocab(), llm.n_ctx(), params.repetition_penalty, 0.0, 0.0)
            for t in prompt_ids:
                chain.accept(t)  # before the grammar joins: prompt tokens are not grammar
        grammar = None
        try:
            if params.choices:
                alts = " | ".join(json.dumps(c, ensure_ascii=False) for c in params.choices)
                grammar = LlamaGrammar.from_string(f"root ::= {alts}", verbose=False)
            elif params.json_schema is not None:
                grammar = LlamaGrammar.from_json_schema(
                    json.dumps(params.json_schema), verbose=False
                )
        except Exception as e:  # noqa: BLE001 - a schema llama.cpp cannot express
            raise LLMError(f"could not build a grammar for the structured output: {e}") from e
        if grammar is not None:
            chain.add_grammar(llm._model, grammar)
        if params.temperature > 0:
            seed = params.seed if params.seed is not None else llama_cpp.LLAMA_DEFAULT_SEED
            if params.top_p < 1.0:
                chain.add_top_p(params.top_p, 1)
            chain.add_temp(params.temperature)
            chain.add_dist(seed & 0xFFFFFFFF)
        else:
            chain.add_greedy()
        return chain

    def _decode(self, ids: list[int], params: GenParams, info: dict[str, Any]) -> Iterator[str]:
        """Text pieces of one answer (lock held by the caller); fills info with token counts
        and the finish reason. Stop strings are cut here, holding back a possible prefix."""
        llama_cpp = _import_llama_cpp()
        llm = self.m.llm
        vocab = llm._model.vocab
        budget = min(params.max_tokens, llm.n_ctx() - len(ids) - 1)
        info.update(prompt_tokens=len(ids), completion_tokens=0, finish_reason="length")
        self._eval(ids)
        sampler = self._sampler(params, ids)
        utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        hold = max((len(s) for s in params.stop), default=1) - 1
        text, sent = "", 0
        try:
            for step in range(max(budget, 0)):
                tok = sampler.sample(llm._ctx, -1)
                if llama_cpp.llama_vocab_is_eog(vocab, tok):
                    info["finish_reason"] = "stop"
                    break
                info["completion_tokens"] += 1
                text += utf8.decode(llm.detokenize([tok], special=False))
                cut = _first_stop(text[max(0, sent - hold) :], params.stop)
                if cut >= 0:
                    cut += max(0, sent - hold)
                    if cut > sent:
                        yield text[sent:cut]
                    info["finish_reason"] = "stop"
                    return
                if len(text) - hold > sent:
                    yield text[sent : len(text) - hold]
                    sent = len(text) - hold
                if step + 1 < budget:
                    llm.eval([tok])
            text += utf8.decode(b"", final=True)
            if len(text) > sent:
                yield text[sent:]
        finally:
            sampler.close()

    # ---- the contract -------------------------------------------------------------------
    def generate(
        self, prompts: Sequence[Prompt], params: GenParams | None = None
    ) -> list[Generation]:
        params = params or GenParams()
        encoded = [self.encode(p) for p in prompts]
        results = []
        for ids in encoded:
            t0 = time.perf_counter()
            info: dict[str, Any] = {}
            with self.m.lock:
                text = "".join(self._decode(ids, params, info))
            meta: dict[str, Any] = {}
            if params.choices:
                meta = {"structured": "choice"}
            elif params.json_schema is not None:
                meta = {"structured": "json", "json": extract_json(text)}
            results.append(
                Generation(
                    text=text,
                    model_id=self.model_id,
                    backend=self.backend,
                    prompt_tokens=info["prompt_tokens"],
                    completion_tokens=info["completion_tokens"],
                    finish_reason=info["finish_reason"],
                    latency_s=time.perf_counter() - t0,
                    meta=meta,
                )
            )
        return results

    def stream(self, prompt: Prompt, params: GenParams | None = None) -> Iterator[str]:
        """Pieces as generated; the same text as generate(). Holds the model lock until the
        stream ends or is closed (don't call the same model from inside the loop)."""
        params = params or GenParams()
        ids = self.encode(prompt)
        with self.m.lock:
            yield from self._decode(ids, params, {})

    def choice_logprobs(self, prompt: Prompt, choices: Sequence[str]) -> dict[str, float]:
        return self.choice_logprobs_batch([prompt], choices)[0]

    def choice_logprobs_batch(
        self, prompts: Sequence[Prompt], choices: Sequence[str]
    ) -> list[dict[str, float]]:
        choices = list(dict.fromkeys(choices))
        if not choices:
            raise LLMError("choice_logprobs needs at least one choice")
        c_ids = [self._token_ids(c) for c in choices]
        if any(not c for c in c_ids):
            raise LLMError("a choice tokenises to nothing")
        out: list[dict[str, float]] = []
        for prompt in prompts:
            ids = self.encode(prompt)
            scores: dict[str, float] = {}
            with self.m.lock:
                first = _log_softmax(self._eval(ids))
                for choice, c in zip(choices, c_ids, strict=True):
                    total = float(first[c[0]])
                    for k in range(1, len(c)):
                        # Evaluates one more token on top of the cached prompt + c[:k-1].
                        total += float(_log_softmax(self._eval(ids + c[:k]))[c[k]])
                    scores[choice] = total
            out.append(scores)
        return out

    def health(self) -> dict[str, Any]:
        llm = self.m.llm
        return {
            "backend": self.backend,
            "model_id": self.model_id,
            "model_path": self.model_path,
            "n_ctx": llm.n_ctx(),
            "threads": llm.n_threads,
            "prefix_tokens_reused": self.m.stats["reused"],
            "tokens_evaluated": self.m.stats["evaluated"],
            "ok": True,
        }
