"""The rerankers with the REAL default model (SmolLM2-135M-Instruct, in-process), and with
an OpenAI backend pointed at a closed port. Kept small: 2 shared CPU cores."""

from __future__ import annotations

import math
import socket
import time

from service.catalog.models import Product
from service.config import Settings
from service.llm.base import LLM
from service.llm.openai_backend import OpenAILLM
from service.ranking.base import RankResult, UserContext
from service.ranking.common import ALL_LABELS
from service.ranking.factory import get_reranker
from service.retrieval.retriever import Candidate
from tests.ranking.helpers import shortlist


def assert_permutation(res: RankResult, cands: list[Candidate]) -> None:
    ids = [pid for pid, _ in res.order]
    assert sorted(ids) == sorted(c.product_id for c in cands)
    assert len(ids) == len(set(ids))
    assert all(math.isfinite(s) for _, s in res.order)


def test_labels_are_single_tokens(test_settings: Settings) -> None:
    """The verbalizer reads ONE next-token distribution: every label must be one token, in
    the form that follows the chat template's "assistant\\n" (no leading space)."""
    # lazy: transformers takes ~3 s to import; only this path needs it
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(test_settings.llm_model)
    for label in ALL_LABELS:
        assert len(tok(label, add_special_tokens=False)["input_ids"]) == 1, label
        assert len(tok(" " + label, add_special_tokens=False)["input_ids"]) == 1, label
    prompt = tok.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False,
                                     add_generation_prompt=True)  # fmt: skip
    assert prompt.endswith("\n")  # so the answer letter comes without a space


def test_verbalizer_20_candidates(
    real_llm: LLM, catalogue: dict[str, Product], user: UserContext
) -> None:
    cands = shortlist(catalogue, 20)
    res = get_reranker("verbalizer", real_llm).rank(user, cands, catalogue)
    assert not res.degraded, res.reason
    assert_permutation(res, cands)
    assert res.model_id == real_llm.model_id
    assert res.template == "rank_verbalizer" and res.template_version
    assert res.meta["windows"] == 1 and res.meta["prompts"] == 1
    # log-probabilities over the list: they sum to 1 and are not all the same
    assert math.isclose(sum(math.exp(s) for _, s in res.order), 1.0, rel_tol=1e-6)
    assert len({round(s, 6) for _, s in res.order}) > 1


def test_verbalizer_windows_with_30_candidates(
    real_llm: LLM, catalogue: dict[str, Product], user: UserContext
) -> None:
    cands = shortlist(catalogue, 30)
    res = get_reranker("verbalizer", real_llm).rank(user, cands, catalogue)
    assert not res.degraded, res.reason
    assert_permutation(res, cands)
    assert res.meta["windows"] == 2 and res.meta["prompts"] == 2


def test_shuffled_passes_are_deterministic(
    real_llm: LLM, catalogue: dict[str, Product], user: UserContext
) -> None:
    cands = shortlist(catalogue, 8)
    runs = [
        get_reranker("verbalizer", real_llm, passes=3, seed=s).rank(user, cands, catalogue)
        for s in (42, 42)
    ]
    assert not runs[0].degraded, runs[0].reason
    assert_permutation(runs[0], cands)
    assert [p for p, _ in runs[0].order] == [p for p, _ in runs[1].order]
    for (_, a), (_, b) in zip(runs[0].order, runs[1].order, strict=True):
        assert math.isclose(a, b, abs_tol=1e-4)


def test_reasoning_real_run_never_raises(
    real_llm: LLM, catalogue: dict[str, Product], user: UserContext
) -> None:
    """Whatever the small model writes in 40 tokens (often not JSON), the answer is a
    permutation; if nothing was usable it is the retrieval order, flagged degraded."""
    cands = shortlist(catalogue, 5)
    res = get_reranker("reasoning", real_llm, max_tokens=40).rank(user, cands, catalogue)
    assert_permutation(res, cands)
    assert res.model_id == real_llm.model_id and res.template == "rank_reasoning"
    if res.degraded:
        assert res.reason and res.order == [(c.product_id, c.score) for c in cands]
    else:
        assert res.meta["pass_details"][0]["parsed"]


def test_reasoning_cut_off_after_two_tokens_degrades(
    real_llm: LLM, catalogue: dict[str, Product], user: UserContext
) -> None:
    """A real, certainly malformed answer: two tokens cannot hold a ranking."""
    cands = shortlist(catalogue, 4)
    res = get_reranker("reasoning", real_llm, max_tokens=2).rank(user, cands, catalogue)
    assert_permutation(res, cands)
    if res.degraded:
        assert res.reason and "UnparseableOutput" in res.reason


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed as soon as we leave: nobody listens


def test_unreachable_server_degrades(
    tmp_path,
    catalogue: dict[str, Product],
    user: UserContext,  # noqa: ANN001
) -> None:
    settings = Settings(
        data_dir=tmp_path,
        llm_backend="openai",
        llm_base_url=f"http://127.0.0.1:{_closed_port()}/v1",
        llm_max_retries=1,
        llm_timeout_s=5.0,
    )
    llm = OpenAILLM(settings)
    cands = shortlist(catalogue, 20)
    try:
        for name in ("verbalizer", "reasoning"):
            t0 = time.perf_counter()
            res = get_reranker(name, llm).rank(user, cands, catalogue)
            took = time.perf_counter() - t0
            assert res.degraded and res.reason, name
            assert res.order == [(c.product_id, c.score) for c in cands]
            assert res.model_id == llm.model_id and res.template == f"rank_{name}"
            assert took < 10, f"{name} took {took:.1f} s to give up"
    finally:
        llm.close()
