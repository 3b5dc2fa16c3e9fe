"""The GPU trainer (eval/gpu) trains as `recsmith train reranker` does: every pass shows the
training prompts with their candidates in a new seeded order (service.training.lora
.shuffled_pass), tokenised by the service's own prompt code; validation and test once."""

from __future__ import annotations

import random

import numpy as np
import pytest

from service.offline.datasets import load
from service.training.lora import RankExample, encode_prompt, prompt_messages, shuffled_pass
from service.training.rerank_data import Case
from tests.training.test_lora import _tokenizer_source

gp = pytest.importorskip("eval.gpu.pack")
lr = pytest.importorskip("eval.gpu.lorarun")


@pytest.fixture(scope="module")
def cases() -> dict[str, list[Case]]:
    if _tokenizer_source() is None:
        pytest.skip("needs the prepared SmolLM2 tokenizer (`recsmith models prepare`)")
    ids = [p.id for p in load("ml-100k").products[:80]]
    rng = random.Random(3)

    def case(kind: str, n: int, hit: bool = True) -> Case:
        pick = rng.sample(ids, 30)
        hist, cands = pick[:6], pick[6:26]
        return Case(f"u{n}", hist, cands, cands[n % 20] if hit else pick[29], kind)

    return {
        "train": [case("train", n) for n in range(3)],
        "val": [case("val", 7)],
        "test": [case("test", 8, hit=False)],
    }


def test_each_pass_is_the_cpu_trainers_reshuffle(cases: dict[str, list[Case]]) -> None:
    # lazy: transformers takes ~3 s to import; only this test needs it
    from transformers import AutoTokenizer

    enc = gp.encode_cases(cases, {}, passes=2, seed=0)
    a = enc["arrays"]
    pack = {**a, "meta": {}}
    per_pass = lr.train_passes(pack)
    assert [len(p) for p in per_pass] == [3, 3]
    assert int((a["kind"] == gp.KIND["val"]).sum()) == 1  # val and test are packed once
    assert a["label"][a["kind"] == gp.KIND["test"]].tolist() == [-1]
    tok = AutoTokenizer.from_pretrained(enc["model_path"])
    products = {p.id: p for p in load("ml-100k").products}
    base = [RankExample(c.history, c.candidates, c.target) for c in cases["train"]]
    for e, idx in enumerate(per_pass):
        want = shuffled_pass(base, e, 0)
        for i, ex in zip(idx, want, strict=True):
            got = lr.seqs_of(pack, np.array([i]))[0].tolist()
            assert got == encode_prompt(tok, prompt_messages(ex, products, 8))
            assert int(a["label"][i]) == ex.label_index
    # pass 1 really shows other orders than pass 0
    assert any(
        x.candidates != y.candidates for x, y in zip(base, shuffled_pass(base, 1, 0), strict=True)
    )
    assert [len(p) for p in lr.train_passes(pack, limit=2)] == [2, 2]
