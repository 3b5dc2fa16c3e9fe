"""The one fake language model of the tests.

`FakeLLM` is a real `service.llm.base.LLM` subclass, so every call is logged to the
`llm_calls` table like any backend's (to `settings`' data dir). It answers from a script
(`replies`, one per prompt, the last one repeated), a fixed text or a function of the
prompt's text (`text`), or by calling a real backend (`inner`: count the calls a real
model gets). It can be slow (`delay_s`), fail (`error`; or `fail_after` streamed pieces)
and records every call (`calls`, `prompts`, `params`, `replies_given`).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from service.config import Settings, get_settings
from service.llm.base import LLM, Generation, GenParams, LLMError, Prompt

Reply = str | Callable[[Prompt], str]


def prompt_text(prompt: Prompt) -> str:
    """The prompt as one text (a chat's messages joined by newlines)."""
    return prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt)


def writes_names(fallback: str = "Product") -> Callable[[str], str]:
    """A `text` function writing the product's own name, a text that passes every copy check:
    the last name in the prompt's data blocks (a worked example comes before the task)."""

    def write(text: str) -> str:
        names = re.findall(r"Name: <<<(.*?)>>>", text)
        return names[-1] if names else fallback

    return write


class FakeLLM(LLM):
    def __init__(
        self,
        settings: Settings | None = None,
        text: str | Callable[[str], str] = "",
        *,
        replies: Sequence[Reply] = (),
        label_scores: Callable[[str, Sequence[str]], dict[str, float]] | None = None,
        piece: int = 1,
        fail_after: int | None = None,
        delay_s: float = 0.0,
        error: BaseException | None = None,
        inner: LLM | None = None,
        model_id: str | None = None,
        backend: str | None = None,
    ) -> None:
        self.settings = settings or get_settings()  # where the llm_calls log goes
        self.text = text
        self.script = list(replies)
        self.label_scores = label_scores
        self.piece = piece  # characters per streamed piece
        self.fail_after = fail_after  # a stream breaks after this many pieces
        self.delay_s = delay_s
        self.error = error
        self.inner = inner
        self.model_id = model_id or (inner.model_id if inner else "fake-model")
        self.backend = backend or (inner.backend if inner else "fake")
        self.calls: list[tuple[str, int]] = []  # (method, prompts in the call)
        self.prompts: list[Prompt] = []
        self.params: list[GenParams] = []
        self.replies_given: list[str] = []

    @property
    def batches(self) -> list[int]:
        """The batch size of each generate call."""
        return [n for kind, n in self.calls if kind == "generate"]

    def reset(self) -> None:
        self.calls.clear()
        self.prompts.clear()
        self.params.clear()
        self.replies_given.clear()

    def _enter(self, kind: str, prompts: Sequence[Prompt]) -> None:
        self.calls.append((kind, len(prompts)))
        self.prompts.extend(prompts)
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.error is not None:
            raise self.error

    def _reply(self, prompt: Prompt) -> str:
        if self.script:
            r = self.script.pop(0) if len(self.script) > 1 else self.script[0]
            out = r(prompt) if callable(r) else str(r)
        else:
            out = self.text(prompt_text(prompt)) if callable(self.text) else self.text
        self.replies_given.append(out)
        return out

    def generate(
        self, prompts: Sequence[Prompt], params: GenParams | None = None
    ) -> list[Generation]:
        self._enter("generate", prompts)
        self.params.append(params or GenParams())
        if self.inner is not None:
            return self.inner.generate(prompts, params)
        return [Generation(self._reply(p), self.model_id, self.backend) for p in prompts]

    def stream(self, prompt: Prompt, params: GenParams | None = None) -> Iterator[str]:
        self._enter("stream", [prompt])
        if self.inner is not None:
            yield from self.inner.stream(prompt, params)
            return
        text = self._reply(prompt)
        for n, i in enumerate(range(0, len(text), self.piece)):
            if self.fail_after is not None and n >= self.fail_after:
                raise LLMError("scripted failure")
            yield text[i : i + self.piece]

    def choice_logprobs(self, prompt: Prompt, choices: Sequence[str]) -> dict[str, float]:
        self._enter("choice_logprobs", [prompt])
        return self._scores(prompt, choices)

    def choice_logprobs_batch(
        self, prompts: Sequence[Prompt], choices: Sequence[str]
    ) -> list[dict[str, float]]:
        self._enter("choice_logprobs_batch", prompts)
        return [self._scores(p, choices) for p in prompts]

    def _scores(self, prompt: Prompt, choices: Sequence[str]) -> dict[str, float]:
        if self.inner is not None:
            return self.inner.choice_logprobs(prompt, choices)
        if self.label_scores is not None:
            return self.label_scores(prompt_text(prompt), choices)
        return {c: -1.0 - i for i, c in enumerate(choices)}  # prefers A: pure position bias

    def __getattr__(self, name: str) -> Any:  # a real backend's extras (tokenizer, …)
        inner = self.__dict__.get("inner")
        if inner is None:
            raise AttributeError(name)
        return getattr(inner, name)
