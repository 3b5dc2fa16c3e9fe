"""get_llm(settings, role) → the configured backend, one instance per distinct configuration.

Two roles: the writer (copy, chat, headlines) and the ranker (the verbalizer). Each may use
its own backend and model (`writer_backend`/`writer_model`, `ranker_backend`/`ranker_model`;
empty = the plain llm_* settings): on a CPU a small tuned ranker and a larger writer is the
right split.
"""

from __future__ import annotations

import threading
from typing import Literal

from service.config import Settings, get_settings
from service.llm.base import LLM

Role = Literal["writer", "ranker"]
_cache: dict[tuple, LLM] = {}
_lock = threading.Lock()


def role_settings(s: Settings, role: Role | None) -> Settings:
    """The settings a role's model is built from: its overrides folded into llm_*."""
    if role is None:
        return s
    if role not in ("writer", "ranker"):
        raise ValueError(f"unknown LLM role {role!r}; use 'writer' or 'ranker'")
    backend = getattr(s, f"{role}_backend") or s.llm_backend
    model = getattr(s, f"{role}_model") or s.llm_model
    if backend == s.llm_backend and model == s.llm_model:
        return s
    return s.model_copy(update={"llm_backend": backend, "llm_model": model})


def settings_key(s: Settings) -> tuple:
    """Everything that changes which model answers, how, or where its calls are logged."""
    common = (s.llm_backend, s.llm_model, s.db_url, str(s.models_dir or ""))
    if s.llm_backend == "openai":
        return common + (
            s.llm_base_url, s.llm_served_name, s.llm_api_key, s.llm_timeout_s,
            s.llm_max_retries, s.llm_circuit_failures, s.llm_circuit_reset_s,
        )  # fmt: skip
    if s.llm_backend == "llamacpp":
        return common + (str(s.data_dir), s.llm_threads, s.llm_n_ctx)
    return common + (str(s.data_dir), s.llm_dtype, s.llm_threads)


def get_llm(settings: Settings | None = None, role: Role | None = None) -> LLM:
    """The backend chosen by settings (for `role`, its writer_*/ranker_* overrides); cached so
    the circuit breaker and the loaded model are shared by every caller with the same settings.
    Without a role: the plain llm_* settings (what both roles use unless overridden)."""
    s = role_settings(settings or get_settings(), role)
    key = settings_key(s)
    with _lock:
        llm = _cache.get(key)
        if llm is None:
            if s.llm_backend == "openai":
                # lazy: service.llm.openai_backend pulls httpx (not needed to import this module)
                from service.llm.openai_backend import OpenAILLM

                llm = OpenAILLM(s)
            elif s.llm_backend == "llamacpp":
                # lazy: only the chosen backend's module loads
                from service.llm.llamacpp_backend import LlamaCppLLM

                llm = LlamaCppLLM(s)
            else:
                # lazy: only the chosen backend's module loads
                from service.llm.transformers_backend import TransformersLLM

                llm = TransformersLLM(s)
            _cache[key] = llm
        return llm
