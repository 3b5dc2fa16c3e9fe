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
from service.retrieval.dense import DenseIndex
from service.retrieval.filters import Filters, ProductMeta
from service.retrieval.fusion import Fusion
from service.retrieval.lexical import LexicalIndex

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
        dense: DenseIndex,
        lexical: LexicalIndex,
        meta: ProductMeta,
        co: CoInteraction | None = None,
        sequential: SequenceScorer | None = None,
        weights: SourceWeights | None = None,
        half_life: float = 5.0,
        fusion: Fusion | None = None,
    ) -> None:
        self.encode_query = encode_query
        self.dense = dense
        self.lexical = lexical
        self.meta = meta
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
        mask = self.meta.mask(self.dense.ids, f, excluded)
        # Each source over-fetches so fusion has room to reorder.
        depth = max(req.k * 3, 50)
        ranked: dict[str, list[tuple[str, float]]] = {}

        def allowed(pid: str) -> bool:
            return self.meta.allowed(pid, f, excluded)

        item_weights = self.profile_weights(history) if history else {}
        if item_weights:
            vecs, ws = [], []
            for pid, w in item_weights.items():
                v = self.dense.vector(pid)
                if v is not None:
                    vecs.append(v)
                    ws.append(w)
            if vecs:
                profile = np.average(np.stack(vecs), axis=0, weights=np.asarray(ws))
                profile /= np.linalg.norm(profile) + 1e-12
                ranked["dense_history"] = self.dense.search(profile, depth, mask)
            if self.co:
                # Over-fetch past the excluded items too: a heavy user's own items fill the top.
                fetch = depth * 3 + len(excluded)
                ranked["co_interaction"] = [
                    (p, s) for p, s in self.co.neighbours(item_weights, fetch) if allowed(p)
                ][:depth]
                ranked["item_knn"] = [
                    (p, s)
                    for p, s in self.co.recent_neighbours([p for p, _ in history], fetch)
                    if allowed(p)
                ][:depth]
            if self.sequential is not None:
                # A broken trained model must not break retrieval.
                with contextlib.suppress(Exception):
                    seq = [p for p, _ in history]
                    ranked["sequential"] = self.sequential.top_k(seq, depth, allowed)
        if req.query and req.query.strip():
            q = self.encode_query([req.query.strip()])[0]
            ranked["dense_query"] = self.dense.search(q, depth, mask)
            lex = self.lexical.search(req.query, depth * 3)
            ranked["lexical"] = [(p, s) for p, s in lex if allowed(p)][:depth]
        if req.seed_product_id:
            v = self.dense.vector(req.seed_product_id)
            if v is not None:
                ranked["similar"] = self.dense.search(v, depth, mask)
            if self.co:
                ranked["co_interaction_seed"] = [
                    (p, s)
                    for p, s in self.co.neighbours({req.seed_product_id: 1.0}, depth * 3)
                    if allowed(p)
                ][:depth]
        if not any(ranked.values()) and self.co:
            # Cold start: nothing personal to go on, so the most popular allowed items.
            ranked["popularity"] = [
                (p, s) for p, s in self.co.most_popular(depth * 5) if allowed(p)
            ][:depth]
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
        if source == "item_knn":
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
