"""The one LLM interface every backend implements (in-process transformers, OpenAI-compatible/vLLM,
in-process llama.cpp).

Prompts are either a plain string (sent as a raw completion) or a list of chat messages
({"role": ..., "content": ...}); a backend applies the model's chat template to the latter.
"""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from typing import Any

from service.llm.log import instrument_class
from service.llm.types import Generation, GenParams, LLMError, Message, Prompt

__all__ = [
    "LLM",
    "BatchedLLM",
    "Generation",
    "GenParams",
    "LLMError",
    "Message",
    "Prompt",
    "distinct_choices",
    "extract_json",
]


class LLM(ABC):
    """A causal language model. Implementations must be safe to call from several threads."""

    backend: str  # "transformers" | "openai" | "llamacpp"
    model_id: str  # provenance stored with every generated text

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # Every backend logs every call to llm_calls: wired here so it cannot be forgotten.
        super().__init_subclass__(**kwargs)
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

    def _generation(
        self, text: str, finish: str, p_tok: int, c_tok: int, dt: float, params: GenParams
    ) -> Generation:
        """One generated text as every backend returns it: structured output is marked,
        and JSON parsed, the same way whichever engine wrote it."""
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


def extract_json(text: str) -> Any | None:
    """The first JSON object/array in text, or None (small models wrap JSON in prose)."""
    dec = json.JSONDecoder()
    for m in re.finditer(r"[\[{]", text):
        try:
            return dec.raw_decode(text[m.start() :])[0]
        except ValueError:
            continue
    return None


def distinct_choices(choices: Sequence[str]) -> list[str]:
    """Each choice once, in the order given; at least one (a reranker with no labels is a
    bug, not an empty ranking)."""
    unique = list(dict.fromkeys(choices))
    if not unique:
        raise LLMError("choice_logprobs needs at least one choice")
    return unique


class BatchedLLM(LLM):
    """A backend that scores prompts in batches: one prompt is a batch of one, and the
    choices are checked once here, before `_score_choices`."""

    def choice_logprobs(self, prompt: Prompt, choices: Sequence[str]) -> dict[str, float]:
        return self.choice_logprobs_batch([prompt], choices)[0]

    def choice_logprobs_batch(
        self, prompts: Sequence[Prompt], choices: Sequence[str]
    ) -> list[dict[str, float]]:
        return self._score_choices(list(prompts), distinct_choices(choices))

    @abstractmethod
    def _score_choices(self, prompts: list[Prompt], choices: list[str]) -> list[dict[str, float]]:
        """{choice: log-probability} per prompt, in order; choices distinct and non-empty."""
