"""The rerankers against a REAL vLLM server (the session's one server, tests/conftest.py):
the verbalizer agrees with the in-process model, and vLLM's structured outputs give the
reasoning reranker parseable JSON."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest

from service.catalog.models import Product
from service.config import Settings
from service.llm.base import LLM
from service.llm.openai_backend import OpenAILLM
from service.ranking.base import UserContext
from service.ranking.factory import get_reranker
from tests.ranking.helpers import shortlist

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def vllm_llm(settings: Settings, vllm_url: str) -> Iterator[LLM]:
    llm = OpenAILLM(settings.model_copy(update={"llm_base_url": vllm_url}))
    yield llm
    llm.close()


def test_verbalizer_on_vllm_matches_in_process(
    vllm_llm: LLM, real_llm: LLM, catalogue: dict[str, Product], user: UserContext
) -> None:
    cands = shortlist(catalogue, 20)
    remote = get_reranker("verbalizer", vllm_llm).rank(user, cands, catalogue)
    assert not remote.degraded, remote.reason
    ids = [pid for pid, _ in remote.order]
    assert sorted(ids) == sorted(c.product_id for c in cands)
    assert all(math.isfinite(s) for _, s in remote.order)
    assert remote.model_id == vllm_llm.model_id and remote.template == "rank_verbalizer"
    local = dict(get_reranker("verbalizer", real_llm).rank(user, cands, catalogue).order)
    # same weights in fp32 on both engines: the label log-probabilities agree closely
    diff = max(abs(s - local[pid]) for pid, s in remote.order)
    assert diff < 0.1, f"vLLM and in-process verbalizer scores differ by {diff:.3f}"


def test_verbalizer_passes_and_windows_on_vllm(
    vllm_llm: LLM, catalogue: dict[str, Product], user: UserContext
) -> None:
    """2 passes x 2 windows = 4 prompts in one batched request (kept small: labels missing
    from the server's top-20 logprobs are scored exactly, one extra sequence each)."""
    cands = shortlist(catalogue, 24)
    res = get_reranker("verbalizer", vllm_llm, passes=2, seed=3).rank(user, cands, catalogue)
    assert not res.degraded, res.reason
    assert res.meta["prompts"] == 4 and res.meta["windows"] == 2
    assert sorted(p for p, _ in res.order) == sorted(c.product_id for c in cands)
    assert all(math.isfinite(s) for _, s in res.order)


def test_reasoning_structured_output_on_vllm(
    vllm_llm: LLM, catalogue: dict[str, Product], user: UserContext
) -> None:
    """vLLM enforces the JSON schema, so the answer parses (cut off at most)."""
    cands = shortlist(catalogue, 6)
    res = get_reranker("reasoning", vllm_llm, max_tokens=96).rank(user, cands, catalogue)
    assert not res.degraded, res.reason
    assert sorted(p for p, _ in res.order) == sorted(c.product_id for c in cands)
    detail = res.meta["pass_details"][0]
    assert detail["parsed"] and detail["ranked_by_model"] >= 1
    assert set(res.reasons) <= {c.product_id for c in cands}


def test_time_budget_on_vllm(
    vllm_llm: LLM, catalogue: dict[str, Product], user: UserContext
) -> None:
    cands = shortlist(catalogue, 20)
    res = get_reranker("reasoning", vllm_llm, timeout_s=0.01).rank(user, cands, catalogue)
    assert res.degraded and "RerankTimeout" in (res.reason or "")
    assert res.order == [(c.product_id, c.score) for c in cands]
    assert res.latency_s < 1.0
