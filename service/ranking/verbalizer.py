"""LlamaRec-style verbalizer reranker: a full ranking from one forward pass per prompt.

The prompt lists the shopper's recent items (oldest → newest, and says that order
matters) and the candidates as "A. …", "B. …". Instead of generating, we read the
log-probabilities of the label tokens at the answer position (`LLM.choice_logprobs`) and
renormalise them over the labels shown: log P(candidate | the answer is one of them).

More candidates than labels (20 by default): anchored buckets. The top `anchors`
candidates by retrieval (4 by default) appear in every window; the others are dealt
round-robin into buckets that fill the remaining slots, so windows are balanced in size
and in retrieval quality. Every window is scored independently (all of them, for every
pass, in ONE `choice_logprobs_batch` call). Scores from different windows become
comparable by subtracting, in each window, the mean score of the anchors: every candidate
is then measured in log-odds against the same reference set. An anchor's score is the mean
over windows. Each pass is finally a log-softmax over the whole list, so the output is a
full permutation with comparable scores.

Several passes (`passes=n`) shuffle the candidates with a seeded RNG (position bias,
LLMRank/RankGPT) and aggregate per candidate: mean of log-probabilities, or Borda points.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Unpack

from service.catalog.models import Product
from service.llm.base import LLM, Message
from service.prompts import Rendered
from service.ranking.base import RankJob, RankResult, UserContext
from service.ranking.blend import RerankBlend
from service.ranking.common import (
    ALL_LABELS,
    Item,
    LLMReranker,
    RerankerOptions,
    UnparseableOutput,
    aggregate,
    dedupe,
    labelled,
    log_softmax,
    order_by_scores,
    pass_orders,
    product_text,
    user_prompt,
)
from service.retrieval.retriever import Candidate

TEMPLATE = "rank_verbalizer"
# A label the backend could not score (not in an API's top-k, -inf) gets this instead of
# -inf: still last, but arithmetic on it stays finite.
LOGPROB_FLOOR = -50.0


@dataclass
class Plan:
    """One shortlist's prompts: `jobs[j]` = (pass, candidate indexes in the order prompt j
    shows them under labels A, B, …)."""

    n: int
    anchors: list[int]
    windows: int
    jobs: list[tuple[int, list[int]]]
    prompts: list[list[Message]]


def plan_windows(n: int, window: int, anchors: int) -> tuple[list[int], list[list[int]]]:
    """Candidate indexes (retrieval order) of the anchors and of each window."""
    if n <= window:
        return [], [list(range(n))]
    a = max(1, min(anchors, window - 2))  # at least two free slots per window
    anchor_idx = list(range(a))
    rest = list(range(a, n))
    k = math.ceil(len(rest) / (window - a))
    return anchor_idx, [anchor_idx + rest[b::k] for b in range(k)]


def _clamp(x: Any) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return LOGPROB_FLOOR
    return v if math.isfinite(v) and v >= LOGPROB_FLOOR else LOGPROB_FLOOR


def build_prompt(
    user: UserContext, items: list[Item], max_history: int = 8
) -> tuple[list[Message], Rendered]:
    """The chat prompt for one window; the model's next token should be a label."""
    return user_prompt(TEMPLATE, user, items, max_history)


class VerbalizerReranker(LLMReranker):
    name = "verbalizer"
    template_name = TEMPLATE

    min_window = 3
    window_note = " (single-token labels)"

    def __init__(
        self,
        llm: LLM | Callable[[], LLM],
        *,
        anchors: int = 4,
        aggregate: str = "mean",
        blend: RerankBlend | None = None,
        **options: Unpack[RerankerOptions],
    ) -> None:
        super().__init__(llm, **options)
        # Fitted on the validation target (service/ranking/blend.py): the LLM's scores mixed
        # with the shortlist's, weight 0 = the shortlist order. None: the LLM's order.
        self.blend = blend
        if aggregate not in ("mean", "borda"):
            raise ValueError("aggregate must be 'mean' or 'borda'")
        self.anchors, self.how = anchors, aggregate

    def plan(
        self, user: UserContext, candidates: list[Candidate], products: dict[str, Product]
    ) -> Plan:
        """The prompts for one shortlist: every window of every pass (no model call)."""
        n = len(candidates)
        anchor_idx, windows = plan_windows(n, self.window, self.anchors)
        texts = [product_text(products.get(c.product_id), c.product_id) for c in candidates]
        jobs: list[tuple[int, list[int]]] = []  # (pass, candidate indexes in prompt order)
        for p, order in enumerate(pass_orders(n, self.passes, self.seed)):
            pos = {i: k for k, i in enumerate(order)}
            jobs += [(p, sorted(w, key=pos.__getitem__)) for w in windows]
        prompts = []
        for _, idxs in jobs:
            prompts.append(build_prompt(user, labelled(texts, idxs), self.max_history)[0])
        return Plan(n, anchor_idx, len(windows), jobs, prompts)

    def combine(self, plan: Plan, lps: Sequence[Any]) -> list[float]:
        """The LLM's score per candidate (shortlist order) from the label log-probabilities
        of each of the plan's prompts: windows calibrated on the anchors, passes aggregated."""
        if not isinstance(lps, list | tuple) or len(lps) != len(plan.prompts):
            raise UnparseableOutput(f"expected {len(plan.prompts)} score sets, got {len(lps)}")
        n, anchor_idx = plan.n, plan.anchors
        per_pass: list[list[float]] = [[0.0] * n for _ in range(self.passes)]
        anchor_vals: list[dict[int, list[float]]] = [{} for _ in range(self.passes)]
        for (p, idxs), lp in zip(plan.jobs, lps, strict=True):
            if not isinstance(lp, dict):
                raise UnparseableOutput(f"label scores are {type(lp).__name__}, not a mapping")
            raw = [_clamp(lp.get(ALL_LABELS[k])) for k in range(len(idxs))]
            if all(v == LOGPROB_FLOOR for v in raw):
                raise UnparseableOutput("the model gave no usable label log-probabilities")
            s = log_softmax(raw)  # renormalised over the labels this window shows
            offset = 0.0
            if anchor_idx:  # calibrate the window against the shared anchors
                offset = sum(s[k] for k, i in enumerate(idxs) if i in anchor_idx) / len(anchor_idx)
            for k, i in enumerate(idxs):
                if i in anchor_idx:
                    anchor_vals[p].setdefault(i, []).append(s[k] - offset)
                else:
                    per_pass[p][i] = s[k] - offset
        for p in range(self.passes):
            for i, vals in anchor_vals[p].items():
                per_pass[p][i] = sum(vals) / len(vals)
        return aggregate(per_pass, self.how)

    def score_many(
        self,
        shortlists: Sequence[tuple[UserContext, list[Candidate]]],
        products: dict[str, Product],
        timings: dict[str, float] | None = None,
    ) -> list[list[float]]:
        """The LLM's scores for several users' shortlists (offline evaluation): every prompt
        of every user in ONE `choice_logprobs_batch` call, so a batching backend pads them
        into shared forward passes and llama.cpp keeps its context (prefix reuse) from one
        prompt to the next. Same prompts and arithmetic as `rank`; no blend, no budget;
        model trouble raises. `timings` gets the seconds spent building prompts and in the
        model."""
        t0 = time.perf_counter()
        plans = [self.plan(u, dedupe(c), products) for u, c in shortlists]
        prompts = [m for p in plans for m in p.prompts]
        labels = list(ALL_LABELS[: max(len(i) for p in plans for _, i in p.jobs)])
        t1 = time.perf_counter()
        lps = self._call_model(lambda: self.llm.choice_logprobs_batch(prompts, labels), None)
        t2 = time.perf_counter()
        out, k = [], 0
        for p in plans:
            out.append(self.combine(p, lps[k : k + len(p.prompts)]))
            k += len(p.prompts)
        if timings is not None:
            timings["prompts_s"] = timings.get("prompts_s", 0.0) + (t1 - t0)
            timings["llm_s"] = timings.get("llm_s", 0.0) + (t2 - t1)
            timings["prompts"] = timings.get("prompts", 0) + len(prompts)
        return out

    def _rank(self, job: RankJob) -> RankResult:
        candidates = job.candidates
        plan = self.plan(job.user, candidates, job.products)
        prompts = plan.prompts
        labels = list(ALL_LABELS[: max(len(idxs) for _, idxs in plan.jobs)])

        def score() -> list[dict[str, float]]:
            llm = self.llm  # a first call may load the model: inside the budget too
            if len(prompts) == 1:
                return [llm.choice_logprobs(prompts[0], labels)]
            return llm.choice_logprobs_batch(prompts, labels)  # all windows and passes at once

        lps = self._call_model(score, job.remaining())
        scores = self.combine(plan, lps)
        if self.blend is not None:
            scores = self.blend.scores([c.score for c in candidates], scores)
        return RankResult(
            order=order_by_scores(candidates, scores),
            method=self.name,
            meta={
                "passes": self.passes,
                "seed": self.seed,
                "aggregate": self.how,
                "windows": plan.windows,
                "anchors": len(plan.anchors),
                "prompts": len(prompts),
                "labels": len(labels),
                "blend_weight": self.blend.weight if self.blend is not None else None,
            },
        )
