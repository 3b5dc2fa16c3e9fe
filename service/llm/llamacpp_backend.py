"""In-process GGUF backend: llama.cpp through `llama-cpp-python`, 4-bit weights on the CPU.

Why this engine: on these 2-core machines it decodes the same model several times faster
than fp32 transformers (eval/results/2026-11-30-engine.md) and reads the packaged GGUF as is.

How it maps the LLM contract:
- Prompts: a string is tokenised like transformers/vLLM do (the vocabulary's own BOS rule,
  special tokens parsed); a message list is rendered with the GGUF's own
  `tokenizer.chat_template` (jinja2, as transformers renders it) — never a built-in default,
  which on Qwen makes the model echo its input.
- One `Llama` per model file and process, guarded by a lock; a batch runs prompt by prompt.
- Prefix reuse, two levels: the context keeps the KV cache of what it evaluated last (a new
  prompt only evaluates its tokens after the longest common prefix), and the KV state of
  each message list's fixed part (every message before the last user turn: the system
  rules and worked examples) is kept in RAM, a few slots LRU, so copy and chat prompts that
  alternate on one context each pay their fixed prefix once (`prefix_reuse=False` turns
  both off: the benchmark's side-by-side baseline).
- Decoding runs our own loop over llama.cpp's sampler chain: repetition penalty (over prompt
  and answer, like vLLM/transformers `repetition_penalty`), grammar (JSON schema, choices),
  then greedy or top-p/temperature with the seed. Stop strings are cut in text.
- choice_logprobs: log-softmax of the last position's logits; a multi-token choice is scored
  token by token (each step evaluates one token on top of the cached prompt).
"""

from __future__ import annotations

import atexit
import codecs
import ctypes
import json
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from service.config import Settings, get_settings
from service.llm.base import BatchedLLM, Generation, GenParams, LLMError, Prompt
from service.llm.prepare import resolve_gguf
from service.llm.transformers_backend import _first_stop


@dataclass
class LoadedGGUF:
    llm: Any  # llama_cpp.Llama
    path: str
    lock: threading.Lock
    chat_template: str | None
    special: dict[str, str]  # bos_token / eos_token text for the template
    stats: dict[str, int] = field(
        default_factory=lambda: {"evaluated": 0, "reused": 0, "saved": 0, "restored": 0}
    )
    # Token ids of a fixed prompt prefix -> the KV state of sequence 0 holding exactly it.
    prefixes: OrderedDict[tuple[int, ...], bytes] = field(default_factory=OrderedDict)


# Saved prefix states per model: ~12 KB a token for the 0.5B model (24 layers, 2 KV heads),
# so 8 prefixes of ~400 tokens are ~40 MB.
PREFIX_SLOTS = 8


def _import_llama_cpp() -> Any:
    try:
        # lazy: llama_cpp loads a native library; only the llama.cpp backend needs it
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
    # Default: decode on half the cores, prefill on all of them. ggml's threads spin at
    # every barrier: decoding (a barrier per small matrix-vector op) on a shared 2-core box
    # ran at 9 tok/s with 2 threads where 1 gave 45; prefill is a few large matrix products
    # per layer and scales with cores. `threads` > 0 sets both.
    cores = os.cpu_count() or 2
    n_threads = threads if threads > 0 else max(cores // 2, 1)
    n_batch_threads = threads if threads > 0 else cores
    try:
        llm = llama_cpp.Llama(
            model_path=path,
            n_ctx=n_ctx,
            n_batch=512,
            n_threads=n_threads,
            n_threads_batch=n_batch_threads,
            logits_all=False,
            verbose=False,
        )
    except Exception as e:  # noqa: BLE001 - any loading failure is a configuration error
        raise LLMError(f"llama.cpp could not load {path!r}: {e}") from e
    # Freed before interpreter teardown: left to __del__, the native free runs after its
    # module globals are gone and prints "'NoneType' object is not callable" at exit.
    atexit.register(llm.close)
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


class LlamaCppLLM(BatchedLLM):
    backend = "llamacpp"

    def __init__(self, settings: Settings | None = None, model_path: str | None = None) -> None:
        self.settings = settings or get_settings()
        self.model_path = str(model_path or resolve_gguf(self.settings))
        self.m = load_gguf(self.model_path, self.settings.llm_n_ctx, self.settings.llm_threads)
        self.model_id = Path(self.model_path).name
        # Off: every prompt is evaluated from an empty context (the benchmark's baseline).
        self.prefix_reuse = True

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

    def fixed_prefix(self, prompt: Prompt, ids: Sequence[int]) -> int:
        """How many leading tokens of `ids` are the prompt's fixed part: every message before
        the last user turn (system rules, worked examples). 0 for a string prompt, a single
        message, or a template whose rendering of the part is not a token prefix."""
        if isinstance(prompt, str) or len(prompt) < 2 or prompt[-1].get("role") != "user":
            return 0
        if not self.m.chat_template:
            return 0
        text = _compile_template(self.m.chat_template).render(
            messages=list(prompt[:-1]), add_generation_prompt=False, **self.m.special
        )
        pre = list(self.m.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))
        return len(pre) if 0 < len(pre) < len(ids) and list(ids[: len(pre)]) == pre else 0

    def _token_ids(self, text: str) -> list[int]:
        return list(self.m.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    # ---- the context (call with the lock held) ------------------------------------------
    def _eval(self, ids: Sequence[int], fixed: int = 0) -> np.ndarray:
        """Make the context hold exactly `ids` and return the last position's logits.

        Only the part after the longest common prefix with what the context holds is
        evaluated (at least one token, so the logits are fresh). When the first `fixed`
        tokens are a fixed prefix that the context does not hold, its saved KV state is
        restored, or it is evaluated and saved for the next prompt that starts with it."""
        llm = self.m.llm
        n_ctx = llm.n_ctx()
        if len(ids) >= n_ctx:
            raise LLMError(f"prompt of {len(ids)} tokens does not fit the context ({n_ctx})")
        if not self.prefix_reuse:
            llm.reset()
            llm._ctx.kv_cache_clear()
            fixed, n = 0, 0
        else:
            held = llm._input_ids  # what the KV cache holds, position by position
            n = 0
            limit = min(len(held), len(ids) - 1)
            while n < limit and held[n] == ids[n]:
                n += 1
        key = tuple(ids[:fixed]) if 0 < fixed < len(ids) else ()
        if key and n > fixed and key not in self.m.prefixes:
            n = fixed  # held but never saved: cut back to the fixed part and save it
        if n < llm.n_tokens and not llm._ctx.kv_cache_seq_rm(-1, n, -1):
            n = 0
            llm.reset()
            llm._ctx.kv_cache_clear()
        llm.n_tokens = n  # eval() drops the KV cache beyond n_tokens, then appends
        evaluated = 0
        try:
            if key and n <= fixed:
                if n == fixed:
                    if key not in self.m.prefixes:
                        self._save(key)
                elif not self._restore(key):
                    llm.eval(list(ids[n:fixed]))
                    evaluated += fixed - n
                    self._save(key)
                n = fixed
            llm.eval(list(ids[n:]))
            evaluated += len(ids) - n
        except LLMError:
            raise
        except Exception as e:  # noqa: BLE001
            llm.reset()
            llm._ctx.kv_cache_clear()
            raise LLMError(f"llama.cpp evaluation failed: {e}") from e
        self.m.stats["reused"] += len(ids) - evaluated
        self.m.stats["evaluated"] += evaluated
        return self._last_logits()

    def _save(self, key: tuple[int, ...]) -> None:
        """Keep the KV state of sequence 0 (which holds exactly `key`) in RAM."""
        llama_cpp = _import_llama_cpp()
        ctx = self.m.llm._ctx.ctx
        size = llama_cpp.llama_state_seq_get_size(ctx, 0)
        buf = (ctypes.c_uint8 * size)()
        got = llama_cpp.llama_state_seq_get_data(ctx, buf, size, 0)
        if not got:
            return
        self.m.prefixes[key] = bytes(buf)[:got]
        self.m.prefixes.move_to_end(key)
        while len(self.m.prefixes) > PREFIX_SLOTS:
            self.m.prefixes.popitem(last=False)
        self.m.stats["saved"] += 1

    def _restore(self, key: tuple[int, ...]) -> bool:
        """Load a saved prefix state into an emptied context; False when none is saved
        (or llama.cpp refuses it: the prefix is then evaluated again)."""
        data = self.m.prefixes.get(key)
        if data is None:
            return False
        llama_cpp = _import_llama_cpp()
        llm = self.m.llm
        llm._ctx.kv_cache_clear()
        buf = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
        if not llama_cpp.llama_state_seq_set_data(llm._ctx.ctx, buf, len(data), 0):
            llm._ctx.kv_cache_clear()
            llm.n_tokens = 0
            del self.m.prefixes[key]
            return False
        llm.input_ids[: len(key)] = key
        llm.n_tokens = len(key)
        self.m.prefixes.move_to_end(key)
        self.m.stats["restored"] += 1
        return True

    def _last_logits(self) -> np.ndarray:
        llama_cpp = _import_llama_cpp()
        llm = self.m.llm
        ptr = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),)).copy()

    def _sampler(self, params: GenParams, prompt_ids: Sequence[int]) -> Any:
        # lazy: llama_cpp loads a native library; only the llama.cpp backend needs it
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

    def _decode(
        self, ids: list[int], params: GenParams, info: dict[str, Any], fixed: int = 0
    ) -> Iterator[str]:
        """Text pieces of one answer (lock held by the caller); fills info with token counts
        and the finish reason. Stop strings are cut here, holding back a possible prefix."""
        llama_cpp = _import_llama_cpp()
        llm = self.m.llm
        vocab = llm._model.vocab
        budget = min(params.max_tokens, llm.n_ctx() - len(ids) - 1)
        info.update(prompt_tokens=len(ids), completion_tokens=0, finish_reason="length")
        self._eval(ids, fixed)
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
        fixed = [self.fixed_prefix(p, ids) for p, ids in zip(prompts, encoded, strict=True)]
        results = []
        for ids, n_fixed in zip(encoded, fixed, strict=True):
            t0 = time.perf_counter()
            info: dict[str, Any] = {}
            with self.m.lock:
                text = "".join(self._decode(ids, params, info, n_fixed))
            p_tok, c_tok = info["prompt_tokens"], info["completion_tokens"]
            dt = time.perf_counter() - t0
            results.append(self._generation(text, info["finish_reason"], p_tok, c_tok, dt, params))
        return results

    def stream(self, prompt: Prompt, params: GenParams | None = None) -> Iterator[str]:
        """Pieces as generated; the same text as generate(). Holds the model lock until the
        stream ends or is closed (don't call the same model from inside the loop)."""
        params = params or GenParams()
        ids = self.encode(prompt)
        fixed = self.fixed_prefix(prompt, ids)
        with self.m.lock:
            yield from self._decode(ids, params, {}, fixed)

    def _score_choices(self, prompts: list[Prompt], choices: list[str]) -> list[dict[str, float]]:
        c_ids = [self._token_ids(c) for c in choices]
        if any(not c for c in c_ids):
            raise LLMError("a choice tokenises to nothing")
        out: list[dict[str, float]] = []
        for prompt in prompts:
            ids = self.encode(prompt)
            fixed = self.fixed_prefix(prompt, ids)
            scores: dict[str, float] = {}
            with self.m.lock:
                first = _log_softmax(self._eval(ids, fixed))
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
            "prefix_states_saved": self.m.stats["saved"],
            "prefix_states_restored": self.m.stats["restored"],
            "ok": True,
        }
