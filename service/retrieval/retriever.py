"""Candidate generation: several sources, business filters inside, fused by weighted RRF.

Sources: dense (user profile, query, or seed item embeddings), lexical BM25 (query),
co-interaction (history or seed item), an optional trained sequential model, and
popularity as the cold-start fallback. Each candidate keeps its score per source.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from pydantic import BaseModel, Field, model_validator

from service.catalog.models import EVENT_WEIGHT
from service.retrieval.cooccur import CoInteraction
from service.retrieval.filters import Filters
from service.retrieval.fusion import Fusion
from service.retrieval.lexical import LexicalIndex
from service.retrieval.vector_index import VectorIndex

RRF_K = 60  # the usual reciprocal-rank-fusion constant: flattens the head, keeps the tail


class RetrievalRequest(BaseModel):
    user_id: str | None = None
    history: list[str] = Field(default_factory=list, max_length=500)
    query: str | None = Field(default=None, max_length=1000)
    seed_product_id: str | None = None
    k: int = Field(default=20, ge=1, le=500)
    filters: Filters = Field(default_factory=Filters)

    @model_validator(mode="after")
    def _something_to_go_on(self) -> RetrievalRequest:
        if not (
            self.user_id
            or self.history
            or (self.query and self.query.strip())
            or self.seed_product_id
        ):
            raise ValueError("give at least one of user_id, history, query or seed_product_id")
        return self


@dataclass
class Candidate:
    product_id: str
    score: float
    sources: dict[str, float] = field(default_factory=dict)


class SequenceScorer(Protocol):
    """A trained next-item model (e.g. SASRec) usable as a candidate source."""

    def top_k(
        self, history: list[str], k: int, allowed: Callable[[str], bool]
    ) -> list[tuple[str, float]]: ...


@dataclass
class SourceWeights:
    dense: float = 1.0
    lexical: float = 1.0
    co_interaction: float = 1.0
    # Listed (in `sources`) but not fused unless a fitted fusion weighs it: on small logs
    # (the demo's) two co-occurrence sources agreeing outvote the user's taste.
    item_knn: float = 0.0
    sequential: float = 1.5
    popularity: float = 0.2


class Retriever:
    def __init__(
        self,
        encode_query: Callable[[list[str]], np.ndarray],
        dense: VectorIndex,
        lexical: LexicalIndex,
        co: CoInteraction | None = None,
        sequential: SequenceScorer | None = None,
        weights: SourceWeights | None = None,
        half_life: float = 5.0,
        fusion: Fusion | None = None,
    ) -> None:
        self.encode_query = encode_query
        self.dense = dense
        self.lexical = lexical
        self.co = co
        self.sequential = sequential
        self.weights = weights or SourceWeights()
        self.half_life = half_life
        # A fusion learned on the validation target (service.retrieval.fusion); None means
        # weighted RRF with `weights`.
        self.fusion = fusion

    def profile_weights(self, history: list[tuple[str, str]]) -> dict[str, float]:
        """(product_id, event) oldest first -> weight 0.5**(age/half_life) * event weight."""
        weights: dict[str, float] = {}
        n = len(history)
        for i, (pid, event) in enumerate(history):
            age = n - 1 - i
            w = 0.5 ** (age / self.half_life) * EVENT_WEIGHT.get(event, 1.0)
            weights[pid] = weights.get(pid, 0.0) + w
        return weights

    def candidates(
        self,
        req: RetrievalRequest,
        history: list[tuple[str, str]] | None = None,
        purchased: set[str] | None = None,
    ) -> list[Candidate]:
        """history: (product_id, event) oldest first (from the store or the request)."""
        return self.fuse(self.source_lists(req, history, purchased), req.k)

    def source_lists(
        self,
        req: RetrievalRequest,
        history: list[tuple[str, str]] | None = None,
        purchased: set[str] | None = None,
    ) -> dict[str, list[tuple[str, float]]]:
        """Each source's ranked (product_id, score) list for the request, before fusion."""
        history = history if history is not None else [(p, "view") for p in req.history]
        f = req.filters
        excluded = set(f.exclude_ids)
        if f.exclude_purchased and purchased:
            excluded |= purchased
        if req.seed_product_id:
            excluded.add(req.seed_product_id)
        # Each source over-fetches so fusion has room to reorder.
        depth = max(req.k * 3, 50)
        ranked: dict[str, list[tuple[str, float]]] = {}
        # The dense index filters inside its search (in SQL for pgvector); the other
        # sources' lists are filtered by it in one call each.
        test = self.dense.allows(f, excluded)

        def keep(items: list[tuple[str, float]]) -> list[tuple[str, float]]:
            if test is not None:
                return [(p, s) for p, s in items if test(p)][:depth]
            ok = self.dense.allowed([p for p, _ in items], f, excluded)
            return [(p, s) for p, s in items if p in ok][:depth]

        item_weights = self.profile_weights(history) if history else {}
        if item_weights:
            stored = self.dense.vectors(list(item_weights))
            vecs = [stored[p] for p in item_weights if p in stored]
            ws = [w for p, w in item_weights.items() if p in stored]
            if vecs:
                profile = np.average(np.stack(vecs), axis=0, weights=np.asarray(ws))
                profile /= np.linalg.norm(profile) + 1e-12
                ranked["dense_history"] = self.dense.search(profile, depth, f, excluded)
            if self.co:
                # Over-fetch past the excluded items too: a heavy user's own items fill the top.
                fetch = depth * 3 + len(excluded)
                ranked["co_interaction"] = keep(self.co.neighbours(item_weights, fetch))
                ranked["item_knn"] = keep(self.co.recent_neighbours([p for p, _ in history], fetch))
                ranked["next_item"] = keep(self.co.next_neighbours([p for p, _ in history], fetch))
            if self.sequential is not None:
                # A broken trained model must not break retrieval.
                with contextlib.suppress(Exception):
                    seq = [p for p, _ in history]
                    if test is not None:
                        ranked["sequential"] = self.sequential.top_k(seq, depth, test)
                    else:  # no per-id test (pgvector): over-fetch, then filter in one query
                        wide = self.sequential.top_k(
                            seq, depth * 4 + len(excluded), lambda p: p not in excluded
                        )
                        ranked["sequential"] = keep(wide)
        if req.query and req.query.strip():
            q = self.encode_query([req.query.strip()])[0]
            ranked["dense_query"] = self.dense.search(q, depth, f, excluded)
            ranked["lexical"] = keep(self.lexical.search(req.query, depth * 3))
        if req.seed_product_id:
            v = self.dense.vector(req.seed_product_id)
            if v is not None:
                ranked["similar"] = self.dense.search(v, depth, f, excluded)
            if self.co:
                ranked["co_interaction_seed"] = keep(
                    self.co.neighbours({req.seed_product_id: 1.0}, depth * 3)
                )
        if not any(ranked.values()) and self.co:
            # Cold start: nothing personal to go on, so the most popular allowed items.
            ranked["popularity"] = keep(self.co.most_popular(depth * 5))
        return ranked

    def source_weight(self, source: str) -> float:
        """A source's weighted-RRF weight (also a fitted fusion's weight for sources it
        holds none for)."""
        w = self.weights
        if source.startswith("dense") or source == "similar":
            return w.dense
        if source == "lexical":
            return w.lexical
        if source.startswith("co_interaction"):
            return w.co_interaction
        if source in ("item_knn", "next_item"):  # both unweighted until a fusion is fitted
            return w.item_knn
        if source == "sequential":
            return w.sequential
        return w.popularity

    def fuse(self, ranked: dict[str, list[tuple[str, float]]], k: int) -> list[Candidate]:
        by_id: dict[str, Candidate] = {}
        for source, items in ranked.items():
            w = self.source_weight(source)
            for rank, (pid, score) in enumerate(items):
                c = by_id.setdefault(pid, Candidate(pid, 0.0))
                c.score += w / (RRF_K + rank + 1)
                c.sources[source] = round(float(score), 6)
        if self.fusion is not None:
            for pid, fused in self.fusion.scores(ranked, self.source_weight).items():
                by_id[pid].score = fused
        out = sorted(by_id.values(), key=lambda c: (-c.score, c.product_id))
        return out[:k]
