"""The values an LLM call takes and returns: prompts, generation parameters, generations,
the one error type. Kept apart from the `LLM` interface so the call log (service.llm.log),
which the interface wires into every backend, can name them without importing it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Message = dict[str, str]
Prompt = str | list[Message]


class LLMError(RuntimeError):
    """The model could not answer (server down, timeout, circuit open, bad output)."""


@dataclass(frozen=True)
class GenParams:
    max_tokens: int = 128
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    # Repetition control, the same meaning on every backend (vLLM's and transformers'
    # `repetition_penalty`, llama.cpp's `repeat_penalty` over the whole context): the logit of
    # every token already in the prompt or the answer is divided by it (multiplied when
    # negative). 1.0 = off; 1.1-1.3 stops small models from looping.
    repetition_penalty: float = 1.0
    # Structured output: at most one of these. vLLM enforces them server-side
    # (structured_outputs); the in-process backend constrains choices and parses JSON.
    json_schema: dict[str, Any] | None = None
    choices: tuple[str, ...] | None = None


@dataclass
class Generation:
    text: str
    model_id: str
    backend: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = ""
    latency_s: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)
