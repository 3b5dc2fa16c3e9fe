"""Machinery shared by the LLM rerankers: labels, prompt inputs, seeded shuffles, score
aggregation, a per-call time budget, and the never-raise wrapper around `rank`."""

from __future__ import annotations

import atexit
import contextvars
import logging
import math
import random
import string
import threading
import time
from abc import abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypedDict, TypeVar

from service.catalog.models import Product
from service.llm.base import LLM, Message
from service.llm.log import log_context
from service.prompts import Rendered, library, render
from service.ranking.base import RankJob, RankResult, Reranker, UserContext, retrieval_order
from service.retrieval.retriever import Candidate

logger = logging.getLogger(__name__)
T = TypeVar("T")

# Single-token labels. SmolLM2's tokenizer (and the Llama/Qwen ones) encodes each of A–Z as
# one token both bare and with a leading space; after a chat template's "assistant\n" the
# answer starts without a space, so the bare form is the one the model emits.
ALL_LABELS: tuple[str, ...] = tuple(string.ascii_uppercase)
DEFAULT_WINDOW = 20  # LlamaRec's shortlist size: labels A–T


class RerankTimeout(TimeoutError):
    """The model did not answer within the call's time budget."""


class UnparseableOutput(ValueError):
    """The model answered, but nothing usable could be read from the answer."""


@dataclass(frozen=True)
class Item:
    """One candidate as a prompt shows it."""

    label: str
    text: str  # untrusted product text; templates pass it through the `data` filter


def product_text(p: Product | None, fallback: str) -> str:
    """What the model reads for a product: title, then brand and category (short on purpose:
    a 135M model with 20 candidates has no room for descriptions)."""
    if p is None:
        return fallback
    extra = ", ".join(x for x in (p.brand, p.category) if x)
    return f"{p.title} ({extra})" if extra else p.title


def labelled(texts: Sequence[str], order: Sequence[int]) -> list[Item]:
    """The candidates a prompt shows: candidate order[k] (texts[order[k]]) under label k."""
    return [Item(ALL_LABELS[k], texts[i]) for k, i in enumerate(order)]


def history_texts(user: UserContext, max_history: int) -> list[str]:
    """The most recent `max_history` items, kept oldest → newest (the prompt says so)."""
    hist = user.history[-max_history:] if max_history > 0 else []
    return [product_text(p, p.id) for p in hist]


def user_prompt(
    template: str, user: UserContext, items: list[Item], max_history: int, **extra: Any
) -> tuple[list[Message], Rendered]:
    """A reranker's prompt: `template` over the recent history, the query and the labelled
    candidates, sent as one user message."""
    r = render(
        template, history=history_texts(user, max_history), query=user.query, items=items, **extra
    )
    return [{"role": "user", "content": r.text}], r


def dedupe(candidates: Sequence[Candidate]) -> list[Candidate]:
    """A shortlist should not repeat ids; if it does, rank each product once."""
    seen: set[str] = set()
    out = []
    for c in candidates:
        if c.product_id not in seen:
            seen.add(c.product_id)
            out.append(c)
    return out


def pass_orders(n: int, passes: int, seed: int) -> list[list[int]]:
    """Index orders for each pass: one pass keeps the retrieval order; several passes are
    seeded shuffles (RankGPT/LLMRank bootstrapping), so position bias averages out."""
    if passes <= 1:
        return [list(range(n))]
    rng = random.Random(seed)
    orders = []
    for _ in range(passes):
        idx = list(range(n))
        rng.shuffle(idx)
        orders.append(idx)
    return orders


def log_softmax(xs: Sequence[float]) -> list[float]:
    m = max(xs)
    lse = m + math.log(sum(math.exp(x - m) for x in xs))
    return [x - lse for x in xs]


def rank_points(scores: Sequence[float]) -> list[float]:
    """Borda points in [0, 1]: 1 for the best of a pass, 0 for the worst (ties share the
    better position's order by index, which is stable)."""
    n = len(scores)
    if n == 1:
        return [1.0]
    order = sorted(range(n), key=lambda i: (-scores[i], i))
    pts = [0.0] * n
    for r, i in enumerate(order):
        pts[i] = (n - 1 - r) / (n - 1)
    return pts


def aggregate(per_pass: Sequence[Sequence[float]], how: str) -> list[float]:
    """Combine per-pass score vectors (indexed by candidate) into one.

    "mean": each pass is first turned into log-probabilities over the whole list
    (log-softmax), so passes with a sharper or flatter distribution weigh the same, then
    averaged. "borda": mean of rank points, which ignores score magnitudes altogether.
    """
    if how not in ("mean", "borda"):
        raise ValueError(f"aggregate must be 'mean' or 'borda', not {how!r}")
    n = len(per_pass[0])
    norm = [log_softmax(s) if how == "mean" else rank_points(s) for s in per_pass]
    return [sum(v[i] for v in norm) / len(norm) for i in range(n)]


def order_by_scores(
    candidates: Sequence[Candidate], scores: Sequence[float]
) -> list[tuple[str, float]]:
    """Best first; ties keep the retrieval order."""
    idx = sorted(range(len(candidates)), key=lambda i: (-scores[i], i))
    return [(candidates[i].product_id, float(scores[i])) for i in idx]


_abandoned: set[threading.Thread] = set()  # calls that ran past their budget


@atexit.register
def _join_abandoned(limit_s: float = 60.0) -> None:
    """Let abandoned model calls finish before the interpreter tears down: killing a
    thread inside a torch op aborts the process ("terminate called without…")."""
    deadline = time.monotonic() + limit_s
    for t in list(_abandoned):
        t.join(max(0.0, deadline - time.monotonic()))


def call_with_budget(fn: Callable[[], T], timeout_s: float | None) -> T:
    """Run fn, giving up after timeout_s. The call runs in a daemon thread that we cannot
    kill: an in-process model keeps computing until it finishes, but the request is free."""
    if timeout_s is None:
        return fn()
    if timeout_s <= 0:
        raise RerankTimeout("time budget spent before the model was called")
    box: dict[str, Any] = {}
    ctx = contextvars.copy_context()  # a new thread starts empty: keep the log tags

    def run() -> None:
        try:
            box["value"] = ctx.run(fn)
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
            box["error"] = e

    t = threading.Thread(target=run, name="rerank-llm", daemon=True)
    t.start()
    t.join(timeout_s)
    if t.is_alive():
        _abandoned.add(t)
        for old in [x for x in _abandoned if not x.is_alive()]:
            _abandoned.discard(old)
        raise RerankTimeout(f"no answer within the {timeout_s:.2f} s budget")
    if "error" in box:
        raise box["error"]
    return box["value"]


class RerankerOptions(TypedDict, total=False):
    """The options every LLM reranker takes (defaults: LLMReranker's constructor); a
    subclass adds its own and passes these on by keyword."""

    window: int  # candidates per prompt (one label each)
    passes: int  # seeded shuffles of the candidates, aggregated
    seed: int
    max_history: int  # the shopper's most recent items shown
    timeout_s: float | None  # the budget of one `rank` call


class LLMReranker(Reranker):
    """Shared `rank`: trivial lists skip the model; any failure (LLMError, timeout,
    unparseable output, a model that will not load) serves the retrieval order, degraded."""

    name: str
    template_name: str
    min_window = 2
    window_note = ""  # why the window is bounded, for the error

    def __init__(
        self,
        llm: LLM | Callable[[], LLM],
        *,
        window: int = DEFAULT_WINDOW,
        passes: int = 1,
        seed: int = 0,
        max_history: int = 8,
        timeout_s: float | None = None,
    ) -> None:
        if not self.min_window <= window <= len(ALL_LABELS):
            raise ValueError(
                f"window must be between {self.min_window} and {len(ALL_LABELS)}{self.window_note}"
            )
        if passes < 1:
            raise ValueError("passes must be >= 1")
        self._llm_or_loader = llm
        self._llm: LLM | None = llm if isinstance(llm, LLM) else None
        self._load_lock = threading.Lock()
        self.window, self.passes, self.seed = window, passes, seed
        self.max_history, self.timeout_s = max_history, timeout_s

    @property
    def llm(self) -> LLM:
        if self._llm is None:  # lazily: loading a model is model trouble, caught by rank()
            with self._load_lock:
                if self._llm is None:
                    loader = self._llm_or_loader
                    assert callable(loader)
                    self._llm = loader()
        return self._llm

    def template_version(self) -> str | None:
        try:
            return library().version(self.template_name)
        except (KeyError, OSError):
            return None

    def _call_model(self, fn: Callable[[], T], timeout_s: float | None) -> T:
        """fn (this reranker's model call) with its template in the LLM call log, given up
        after timeout_s (None: no budget)."""
        with log_context(template=self.template_name, template_version=self.template_version()):
            return call_with_budget(fn, timeout_s)

    def rank(
        self, user: UserContext, candidates: list[Candidate], products: dict[str, Product]
    ) -> RankResult:
        t0 = time.perf_counter()
        deadline = None if self.timeout_s is None else t0 + self.timeout_s
        cands = dedupe(candidates)
        try:
            if len(cands) <= 1:  # nothing to order: no model call
                result = retrieval_order(cands, self.name)
            else:
                result = self._rank(RankJob(user, cands, products, deadline))
        except Exception as e:  # noqa: BLE001 - the contract: never raise for model trouble
            reason = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            result = retrieval_order(cands, self.name, reason=reason[:500])
        if result.degraded:
            logger.warning("%s reranker degraded: %s", self.name, result.reason)
        result.model_id = self._llm.model_id if self._llm is not None else None
        result.template = self.template_name
        result.template_version = self.template_version()
        result.latency_s = time.perf_counter() - t0
        return result

    @abstractmethod
    def _rank(self, job: RankJob) -> RankResult: ...
