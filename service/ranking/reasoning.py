"""Generation-based listwise reranker with reasons (RankGPT/LLMRank style, zero-shot).

The model writes JSON {"rationale": …, "ranking": [labels…], "reasons": {label: …}}. The
schema goes out as GenParams(json_schema=…), which vLLM enforces (structured_outputs);
in-process output is parsed leniently (service/ranking/parse.py): first JSON object, mended
if cut off, labels mapped back, hallucinated or repeated ones dropped, and any candidate
the model left out appended in retrieval order. The rationale and per-item reasons become
the "why" of each recommendation.

Only the first `window` candidates (20) are reranked: generation cost grows with the list
and a small model loses track of long ones. The rest follow in retrieval order, scored
below every reranked item. `passes=n` generates n seeded shuffles in one batched call and
aggregates by Borda (mean rank points in [0, 1]).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Unpack

from service.llm.base import LLM, GenParams, Message
from service.prompts import Rendered
from service.ranking import common
from service.ranking.base import RankJob, RankResult, UserContext, retrieval_order
from service.ranking.parse import (
    MAX_RATIONALE_CHARS,
    MAX_REASON_CHARS,
    ParsedRanking,
    parse_ranking,
)

TEMPLATE = "rank_reasoning"


def ranking_schema(labels: list[str]) -> dict[str, Any]:
    """JSON schema of the answer. The order comes first, then reasons, then the overall
    rationale: with a token limit (and a 135M model that rambles) a cut loses words, never
    the ranking. A larger model might rank better reasoning first; measure before changing."""
    reason = {"type": "string", "maxLength": MAX_REASON_CHARS}
    return {
        "type": "object",
        "properties": {
            "ranking": {
                "type": "array",
                "items": {"type": "string", "enum": labels},
                "minItems": 1,
                "maxItems": len(labels),
            },
            "reasons": {
                "type": "object",
                "properties": {label: reason for label in labels},
                "additionalProperties": False,
            },
            "rationale": {"type": "string", "maxLength": MAX_RATIONALE_CHARS},
        },
        "required": ["ranking", "reasons", "rationale"],
        "additionalProperties": False,
    }


def build_prompt(
    user: UserContext, items: list[common.Item], max_history: int = 8, top_reasons: int = 3
) -> tuple[list[Message], Rendered]:
    return common.user_prompt(TEMPLATE, user, items, max_history, top_reasons=top_reasons)


class ReasoningReranker(common.LLMReranker):
    name = "reasoning"
    template_name = TEMPLATE

    def __init__(
        self,
        llm: LLM | Callable[[], LLM],
        *,
        max_tokens: int = 192,
        top_reasons: int = 3,
        **options: Unpack[common.RerankerOptions],
    ) -> None:
        super().__init__(llm, **options)
        self.max_tokens, self.top_reasons = max_tokens, top_reasons

    def _rank(self, job: RankJob) -> RankResult:
        user, candidates, products = job.user, job.candidates, job.products
        head, tail = candidates[: self.window], candidates[self.window :]
        n = len(head)
        labels = list(common.ALL_LABELS[:n])
        texts = [common.product_text(products.get(c.product_id), c.product_id) for c in head]
        orders = common.pass_orders(n, self.passes, self.seed)
        prompts = []
        for order in orders:  # pass p shows candidate order[k] under label k
            items = common.labelled(texts, order)
            prompts.append(build_prompt(user, items, self.max_history, self.top_reasons)[0])
        params = GenParams(
            max_tokens=self.max_tokens,
            temperature=0.0,
            json_schema=ranking_schema(labels),
            seed=self.seed,
        )
        # self.llm inside: a first call may load the model, within the budget too
        gens = self._call_model(lambda: self.llm.generate(prompts, params), job.remaining())
        if len(gens) != len(prompts):
            raise common.UnparseableOutput(f"expected {len(prompts)} answers, got {len(gens)}")

        per_pass: list[list[float]] = []
        parsed: list[tuple[ParsedRanking, list[int]]] = []  # with the pass's order
        errors: list[str] = []
        pass_meta: list[dict[str, Any]] = []
        for order, gen in zip(orders, gens, strict=True):
            ids = {head[i].product_id: labels[k] for k, i in enumerate(order)}
            try:
                pr = parse_ranking(gen.text, labels, ids)
            except common.UnparseableOutput as e:
                errors.append(str(e))
                pass_meta.append(
                    {
                        "parsed": False,
                        "error": str(e)[:200],
                        "completion_tokens": gen.completion_tokens,
                        "finish_reason": gen.finish_reason,
                    }
                )
                continue
            shown = [order[labels.index(lab)] for lab in pr.labels]  # label -> candidate index
            omitted = sorted(set(range(n)) - set(shown))  # retrieval order
            full = shown + omitted
            pos = {i: r for r, i in enumerate(full)}
            per_pass.append([float(n - pos[i]) for i in range(n)])
            parsed.append((pr, order))
            pass_meta.append(
                {
                    "parsed": True,
                    "ranked_by_model": len(shown),
                    "appended": len(omitted),
                    "dropped": pr.dropped,
                    "repaired": pr.repaired,
                    "completion_tokens": gen.completion_tokens,
                }
            )
        if not per_pass:  # degraded, but keep what the model said for the record
            msg = errors[0] if len(errors) == 1 else "; ".join(errors)
            res = retrieval_order(candidates, self.name, reason=f"UnparseableOutput: {msg}"[:500])
            res.meta = {"passes": self.passes, "seed": self.seed, "pass_details": pass_meta}
            return res

        scores = common.aggregate(per_pass, "borda")
        order = common.order_by_scores(head, scores)
        order += [(c.product_id, -(k + 1) / len(tail)) for k, c in enumerate(tail)]

        reasons: dict[str, str] = {}  # per product, the first pass that gave one wins
        for pr, pass_order in parsed:
            for lab, why in pr.reasons.items():
                reasons.setdefault(head[pass_order[labels.index(lab)]].product_id, why)
        return RankResult(
            order=order,
            method=self.name,
            rationale=next((pr.rationale for pr, _ in parsed if pr.rationale), None),
            reasons=reasons,
            meta={
                "passes": self.passes,
                "seed": self.seed,
                "aggregate": "borda",
                "reranked": n,
                "tail_in_retrieval_order": len(tail),
                "pass_details": pass_meta,
            },
        )
