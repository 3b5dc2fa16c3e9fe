"""get_llm(settings) → the configured backend, one instance per distinct configuration."""

from __future__ import annotations

import threading

from service.config import Settings, get_settings
from service.llm.base import LLM

_cache: dict[tuple, LLM] = {}
_lock = threading.Lock()


def settings_key(s: Settings) -> tuple:
    """Everything that changes which model answers, how, or where its calls are logged."""
    common = (s.llm_backend, s.llm_model, s.db_url, str(s.models_dir or ""))
    if s.llm_backend == "openai":
        return common + (
            s.llm_base_url, s.llm_served_name, s.llm_api_key, s.llm_timeout_s,
            s.llm_max_retries, s.llm_circuit_failures, s.llm_circuit_reset_s,
        )  # fmt: skip
    return common + (str(s.data_dir), s.llm_dtype, s.llm_threads)


def get_llm(settings: Settings | None = None) -> LLM:
    """The backend chosen by settings.llm_backend; cached so the circuit breaker and the
    loaded model are shared by every caller with the same settings."""
    s = settings or get_settings()
    key = settings_key(s)
    with _lock:
        llm = _cache.get(key)
        if llm is None:
            if s.llm_backend == "openai":
                from service.llm.openai_backend import OpenAILLM

                llm = OpenAILLM(s)
            else:
                from service.llm.transformers_backend import TransformersLLM

                llm = TransformersLLM(s)
            _cache[key] = llm
        return llm


def clear_cache() -> None:
    with _lock:
        for llm in _cache.values():
            llm.close()
        _cache.clear()
