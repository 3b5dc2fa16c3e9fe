"""The one LLM interface every backend implements (in-process transformers, OpenAI-compatible/vLLM,
in-process llama.cpp).

Prompts are either a plain string (sent as a raw completion) or a list of chat messages
({"role": ..., "content": ...}); a backend applies the model's chat template to the latter.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
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


class LLM(ABC):
    """A causal language model. Implementations must be safe to call from several threads."""

    backend: str  # "transformers" | "openai" | "llamacpp"
    model_id: str  # provenance stored with every generated text

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # Every backend logs every call to llm_calls: wired here so it cannot be forgotten.
        super().__init_subclass__(**kwargs)
        from service.llm.log import instrument_class

        instrument_class(cls)

    @abstractmethod
    def generate(
        self, prompts: Sequence[Prompt], params: GenParams | None = None
    ) -> list[Generation]:
        """Batched generation; one Generation per prompt, in order."""

    @abstractmethod
    def stream(self, prompt: Prompt, params: GenParams | None = None) -> Iterator[str]:
        """Yields text pieces as they are produced."""

    @abstractmethod
    def choice_logprobs(self, prompt: Prompt, choices: Sequence[str]) -> dict[str, float]:
        """Log-probability of each choice as the continuation of prompt (one forward pass
        where every choice is a single token: the verbalizer)."""

    def choice_logprobs_batch(
        self, prompts: Sequence[Prompt], choices: Sequence[str]
    ) -> list[dict[str, float]]:
        return [self.choice_logprobs(p, choices) for p in prompts]

    def health(self) -> dict[str, Any]:
        return {"backend": self.backend, "model_id": self.model_id, "ok": True}

    def close(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing
        """Release connections (the in-process model stays cached for the process)."""
