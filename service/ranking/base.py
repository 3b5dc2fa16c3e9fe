"""The reranker interface: order a retrieval shortlist for one user context."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from service.catalog.models import Product
from service.retrieval.retriever import Candidate


@dataclass
class UserContext:
    """What the model may know about the shopper: recent items (oldest first) and/or a query."""

    history: list[Product] = field(default_factory=list)
    query: str | None = None
    language: str = "en"


@dataclass
class RankResult:
    order: list[tuple[str, float]]  # (product_id, score), best first; a permutation of the input
    method: str
    degraded: bool = False
    reason: str | None = None  # why degraded
    rationale: str | None = None  # the model's overall "why"
    reasons: dict[str, str] = field(default_factory=dict)  # product_id -> a short why
    model_id: str | None = None
    template: str | None = None
    template_version: str | None = None
    latency_s: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)  # passes, windows, parse notes, …


@dataclass
class RankJob:
    """One `rank` call as an implementation's `_rank` gets it: the deduplicated shortlist
    (two or more), their products, and when the call's time budget ends (None: no limit)."""

    user: UserContext
    candidates: list[Candidate]
    products: dict[str, Product]
    deadline: float | None

    def remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.perf_counter()


class Reranker(ABC):
    name: str

    @abstractmethod
    def rank(
        self, user: UserContext, candidates: list[Candidate], products: dict[str, Product]
    ) -> RankResult:
        """Must return every candidate exactly once. Never raises for model trouble: returns
        the retrieval order with degraded=True and the reason."""


def retrieval_order(
    candidates: list[Candidate], method: str, reason: str | None = None
) -> RankResult:
    return RankResult(
        order=[(c.product_id, c.score) for c in candidates],
        method=method,
        degraded=reason is not None,
        reason=reason,
    )
