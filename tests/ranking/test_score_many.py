"""The offline evaluation's batched scoring path (`VerbalizerReranker.score_many`, several
users' prompts in one model call) gives the scores the served path (`rank`, one user per
call) gives, on the REAL default model: transformers (padded batches) and llama.cpp
(prefix reuse from one prompt to the next)."""

from __future__ import annotations

import pytest

from service.catalog.models import Product
from service.config import Settings
from service.llm.base import LLM
from service.ranking.base import UserContext
from service.ranking.verbalizer import VerbalizerReranker
from service.retrieval.retriever import Candidate
from tests.ranking.helpers import shortlist


def _probe(catalogue: dict[str, Product]) -> list[tuple[UserContext, list[Candidate]]]:
    """Three users with different histories and shortlists: 6, 20 and 24 candidates (the
    last needs anchored windows: several prompts for one user)."""
    prods = list(catalogue.values())
    return [
        (UserContext(history=prods[:3]), shortlist(catalogue, 6, offset=3)),
        (UserContext(history=prods[5:12]), shortlist(catalogue, 20, offset=12)),
        (UserContext(history=prods[20:22]), shortlist(catalogue, 24, offset=0)),
    ]


def _same_as_rank(llm: LLM, catalogue: dict[str, Product], tol: float) -> None:
    rr = VerbalizerReranker(llm)
    probe = _probe(catalogue)
    timings: dict[str, float] = {}
    batched = rr.score_many(probe, catalogue, timings)
    assert timings["prompts"] == 1 + 1 + 2  # 24 candidates: two windows of 20
    for (ctx, cands), scores in zip(probe, batched, strict=True):
        res = rr.rank(ctx, cands, catalogue)
        assert not res.degraded, res.reason
        served = dict(res.order)
        assert len(scores) == len(cands)
        for c, s in zip(cands, scores, strict=True):
            assert s == pytest.approx(served[c.product_id], abs=tol)
        # the same ranking (ties apart)
        best = max(range(len(cands)), key=lambda i: scores[i])
        assert served[cands[best].product_id] == pytest.approx(max(served.values()), abs=tol)


def test_score_many_equals_rank_transformers(real_llm: LLM, catalogue: dict[str, Product]) -> None:
    _same_as_rank(real_llm, catalogue, tol=1e-3)


def test_score_many_equals_rank_llamacpp(
    test_settings: Settings, catalogue: dict[str, Product]
) -> None:
    # lazy: the llama.cpp binding loads a shared library; only this test needs it
    from service.llm.llamacpp_backend import LlamaCppLLM

    llm = LlamaCppLLM(
        test_settings.model_copy(update={"llm_backend": "llamacpp", "llm_model": "tiny"})
    )
    _same_as_rank(llm, catalogue, tol=1e-3)
