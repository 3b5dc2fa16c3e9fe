"""The LLM contract, run on every backend: in-process transformers, in-process llama.cpp (the
same model's GGUF) and a real vLLM server.

Greedy float32 decoding of the same token ids gives the same text on both backends (the
prompts here were checked to 16 tokens: exact equality, no prefix fallback needed), and
choice log-probabilities agree to ~1e-5 nats (we assert 0.05).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import func, select

from service.config import Settings
from service.db import get_engine, session_scope
from service.llm.base import LLM, Generation, GenParams, Prompt
from service.llm.tables import LLMCallRow

CHAT: list[dict[str, str]] = [{"role": "user", "content": "Name three fruits."}]
TEXT = "The capital of France is"
COUNT = "1, 2, 3, 4,"
P16 = GenParams(max_tokens=16)

_greedy: dict[tuple[str, str], Generation] = {}


def greedy(llm: LLM, prompt: Prompt) -> Generation:
    """One greedy generation per backend and prompt, shared by the tests that need it."""
    key = (llm.backend, json.dumps(prompt))
    if key not in _greedy:
        _greedy[key] = llm.generate([prompt], P16)[0]
    return _greedy[key]


# ---- one backend at a time --------------------------------------------------------------
def test_generate_returns_text_and_provenance(llm: LLM) -> None:
    g = greedy(llm, CHAT)
    assert g.text.strip()
    assert g.backend == llm.backend and g.model_id == llm.model_id
    assert g.prompt_tokens > 0 and 0 < g.completion_tokens <= 16
    assert g.finish_reason in {"stop", "length"}


def test_batch_returns_one_result_per_prompt_in_order(llm: LLM) -> None:
    prompts: list[Prompt] = [TEXT, CHAT, COUNT]
    out = llm.generate(prompts, P16)
    assert len(out) == 3
    # Each batched answer is the one the prompt gets alone (so nothing was reordered).
    for p, g in zip(prompts, out, strict=True):
        assert g.text == greedy(llm, p).text
    assert llm.generate([], P16) == []


def test_stop_strings_truncate_at_first_stop(llm: LLM) -> None:
    full = greedy(llm, CHAT).text
    assert "\n" in full, "the reference answer should span lines for this test to bite"
    g = llm.generate([CHAT], GenParams(max_tokens=16, stop=("\n", "zzz-never")))[0]
    assert g.text == full.split("\n")[0]
    assert g.finish_reason == "stop"


def test_stream_concatenation_equals_generate(llm: LLM) -> None:
    assert "".join(llm.stream(CHAT, P16)) == greedy(llm, CHAT).text
    pieces = list(llm.stream(CHAT, GenParams(max_tokens=16, stop=("\n",))))
    assert "".join(pieces) == greedy(llm, CHAT).text.split("\n")[0]


def test_stream_closed_early_frees_the_model(llm: LLM) -> None:
    it = llm.stream(TEXT, P16)
    first = next(it)
    assert first
    it.close()  # the consumer leaves; the next call must not hang on a held lock
    assert llm.generate([TEXT], GenParams(max_tokens=2))[0].completion_tokens > 0


def test_choice_logprobs_are_logprobs(llm: LLM) -> None:
    scores = llm.choice_logprobs(CHAT, ["Apple", "Banana", "zzz"])
    assert list(scores) == ["Apple", "Banana", "zzz"]
    assert all(v <= 0 for v in scores.values())
    assert sum(2.718281828**v for v in scores.values()) <= 1.0 + 1e-6


def test_choice_logprobs_batch_matches_single_calls(llm: LLM) -> None:
    choices = [" Paris", " London", "yes"]
    batch = llm.choice_logprobs_batch([TEXT, CHAT], choices)
    assert len(batch) == 2
    for prompt, got in zip([TEXT, CHAT], batch, strict=True):
        single = llm.choice_logprobs(prompt, choices)
        for c in choices:
            assert got[c] == pytest.approx(single[c], abs=1e-3)
    assert max(batch[0], key=batch[0].__getitem__) == " Paris"


def test_structured_choice_is_one_of_the_choices(llm: LLM) -> None:
    choices = ("red", "green", "blue")
    out = llm.generate([CHAT, TEXT], GenParams(choices=choices, max_tokens=8))
    assert [g.text in choices for g in out] == [True, True]


def test_json_schema_output(llm: LLM) -> None:
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {"fruit": {"type": "string"}},
        "required": ["fruit"],
    }
    g = llm.generate([CHAT], GenParams(max_tokens=24, json_schema=schema))[0]
    assert g.text
    assert g.meta.get("structured") == "json"
    if llm.backend in ("openai", "llamacpp"):  # enforced (server, grammar); transformers parses
        assert isinstance(json.loads(g.text)["fruit"], str)


def test_repetition_penalty_is_accepted_and_acts(llm: LLM) -> None:
    """Same parameter on every backend; on a prompt that invites a loop it changes the text
    and the penalised answer repeats fewer words."""
    loop = "Repeat after me: go go go go go go go go"
    plain = llm.generate([loop], GenParams(max_tokens=16))[0]
    pen = llm.generate([loop], GenParams(max_tokens=16, repetition_penalty=1.5))[0]
    assert pen.text and pen.text != plain.text
    assert pen.text.lower().count("go") < plain.text.lower().count("go")


def _count(settings: Settings, backend: str, kind: str) -> int:
    with session_scope(get_engine(settings.db_url)) as s:
        q = select(func.count()).select_from(LLMCallRow)
        q = q.where(LLMCallRow.backend == backend, LLMCallRow.kind == kind)
        return int(s.scalar(q) or 0)


def test_every_call_leaves_a_row(llm: LLM, settings: Settings) -> None:
    kinds = ("generate", "stream", "choice_logprobs")
    before = {k: _count(settings, llm.backend, k) for k in kinds}
    llm.generate([TEXT, COUNT], GenParams(max_tokens=2))
    "".join(llm.stream(TEXT, GenParams(max_tokens=2)))
    llm.choice_logprobs(TEXT, [" Paris", " Rome"])
    llm.choice_logprobs_batch([TEXT, COUNT], [" Paris", " 5"])
    after = {k: _count(settings, llm.backend, k) for k in kinds}
    assert after["generate"] - before["generate"] == 2  # one row per prompt
    assert after["stream"] - before["stream"] == 1
    assert after["choice_logprobs"] - before["choice_logprobs"] == 3
    with session_scope(get_engine(settings.db_url)) as s:
        row = s.scalars(
            select(LLMCallRow)
            .where(LLMCallRow.backend == llm.backend, LLMCallRow.kind == "stream")
            .order_by(LLMCallRow.id.desc())
        ).first()
        assert row is not None and row.prompt == TEXT and row.response
        assert row.model_id == llm.model_id and row.latency_ms > 0 and row.error is None


def test_health(llm: LLM) -> None:
    h = llm.health()
    assert h["ok"] is True and h["backend"] == llm.backend
    if llm.backend == "openai":
        assert h["circuit"]["state"] == "closed" and h["server"] == "up"


# ---- both backends side by side ---------------------------------------------------------
@pytest.mark.vllm
@pytest.mark.parametrize("prompt", [CHAT, TEXT], ids=["chat", "text"])
def test_same_greedy_text_on_both_backends(inproc: LLM, remote: LLM, prompt: Prompt) -> None:
    a, b = greedy(inproc, prompt), greedy(remote, prompt)
    assert a.text == b.text
    assert a.prompt_tokens == b.prompt_tokens  # the same token ids went in


@pytest.mark.vllm
@pytest.mark.parametrize(
    "prompt,choices",
    [
        (CHAT, ["Apple", "Banana", "yes", "zzz"]),  # single tokens: the verbalizer path
        (TEXT, [" Paris", " London", "Apple, banana"]),  # multi-token: full scoring
    ],
    ids=["single-token", "multi-token"],
)
def test_choice_logprobs_agree_across_backends(
    inproc: LLM, remote: LLM, prompt: Prompt, choices: list[str]
) -> None:
    a, b = inproc.choice_logprobs(prompt, choices), remote.choice_logprobs(prompt, choices)
    assert max(a, key=a.__getitem__) == max(b, key=b.__getitem__)
    for c in choices:
        assert abs(a[c] - b[c]) < 0.05, (c, a[c], b[c])


@pytest.mark.vllm
def test_rare_single_token_choice_outside_top20_is_exact(inproc: LLM, remote: LLM) -> None:
    """A choice the model finds very unlikely is not in vLLM's top-20: still scored exactly."""
    choices = ["1", "zzz"]
    a, b = inproc.choice_logprobs(CHAT, choices), remote.choice_logprobs(CHAT, choices)
    assert a["zzz"] < -8 and abs(a["zzz"] - b["zzz"]) < 0.05
