"""Helpers for the reranker tests: a small catalogue, shortlists, a scriptable fake LLM."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from service.catalog.models import Product
from service.config import Settings
from service.llm.base import LLM, Generation, GenParams, Prompt
from service.retrieval.retriever import Candidate

DEMO = Path(__file__).resolve().parents[2] / "service" / "demo" / "products.jsonl"

# Used only if the demo catalogue is missing: enough products for 30-candidate windows.
_INLINE = [
    ("Cast Iron Skillet, 26 cm", "Kitchen"),
    ("Carbon Steel Wok, 32 cm", "Kitchen"),
    ("Chef's Knife, 20 cm", "Kitchen"),
    ("Espresso Machine with Steam Wand", "Coffee & Tea"),
    ("Conical Burr Grinder", "Coffee & Tea"),
    ("Trail Running Shoes", "Running"),
    ("Two-Person Dome Tent", "Outdoor & Camping"),
    ("Noise-Cancelling Headphones", "Audio"),
    ("Ergonomic Office Chair", "Home Office"),
    ("Adjustable Dumbbells, 24 kg", "Fitness"),
]


def load_catalogue() -> dict[str, Product]:
    if DEMO.exists():
        products = [Product(**json.loads(line)) for line in DEMO.open() if line.strip()]
    else:
        products = [
            Product(id=f"p{i:03d}", title=f"{t} #{i // len(_INLINE)}", category=c, brand="Acme")
            for i, (t, c) in ((i, _INLINE[i % len(_INLINE)]) for i in range(40))
        ]
    return {p.id: p for p in products}


def shortlist(catalogue: dict[str, Product], n: int, offset: int = 10) -> list[Candidate]:
    """n candidates with decreasing retrieval scores (the injection product included)."""
    ids = list(catalogue)[offset : offset + n]
    assert len(ids) == n, "catalogue too small"
    return [Candidate(pid, round(1.0 / (i + 1), 4), {"dense": 0.5}) for i, pid in enumerate(ids)]


class FakeLLM(LLM):
    """Answers from a script: a function of the prompt text. Optionally slow or failing."""

    backend = "fake"
    model_id = "fake-model"

    def __init__(
        self,
        settings: Settings,
        text: Callable[[str], str] | str = "",
        label_scores: Callable[[str, Sequence[str]], dict[str, float]] | None = None,
        delay_s: float = 0.0,
        error: BaseException | None = None,
    ) -> None:
        self.settings = settings
        self.text = text
        self.label_scores = label_scores
        self.delay_s = delay_s
        self.error = error
        self.calls: list[tuple[str, int]] = []

    def _prompt_text(self, p: Prompt) -> str:
        return p if isinstance(p, str) else "\n".join(m["content"] for m in p)

    def _maybe_fail(self) -> None:
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.error is not None:
            raise self.error

    def generate(
        self, prompts: Sequence[Prompt], params: GenParams | None = None
    ) -> list[Generation]:
        self.calls.append(("generate", len(prompts)))
        self._maybe_fail()
        out = []
        for p in prompts:
            t = self.text(self._prompt_text(p)) if callable(self.text) else self.text
            out.append(Generation(text=t, model_id=self.model_id, backend=self.backend))
        return out

    def stream(self, prompt: Prompt, params: GenParams | None = None) -> Iterator[str]:
        yield from self.generate([prompt], params)[0].text

    def choice_logprobs(self, prompt: Prompt, choices: Sequence[str]) -> dict[str, float]:
        self.calls.append(("choice_logprobs", 1))
        self._maybe_fail()
        return self._scores(prompt, choices)

    def choice_logprobs_batch(
        self, prompts: Sequence[Prompt], choices: Sequence[str]
    ) -> list[dict[str, float]]:
        self.calls.append(("choice_logprobs_batch", len(prompts)))
        self._maybe_fail()
        return [self._scores(p, choices) for p in prompts]

    def _scores(self, prompt: Prompt, choices: Sequence[str]) -> dict[str, float]:
        if self.label_scores is not None:
            return self.label_scores(self._prompt_text(prompt), choices)
        return {c: -1.0 - i for i, c in enumerate(choices)}  # prefers A: pure position bias
