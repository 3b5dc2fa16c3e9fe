"""The assistant with the REAL default model (SmolLM2-135M-Instruct, in-process).

The turns run once per module (generation is the slow part) and each test checks one
property of what came back.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from sqlalchemy import select

from service.assistant.chat import Assistant
from service.assistant.grounding import Labels
from service.db import session_scope
from service.llm.base import LLM
from service.llm.tables import LLMCallRow
from service.recsmith import Recsmith
from tests.assistant.conftest import FAKE_ID, INJECTED, run_turn

Turn = tuple[list[str], dict[str, Any]]


@pytest.fixture(scope="module")
def assistant(rs: Recsmith, real_llm: LLM) -> Assistant:
    return Assistant(rs, real_llm, max_tokens=40)


@pytest.fixture(scope="module")
def turns(assistant: Assistant) -> dict[str, Turn]:
    out: dict[str, Turn] = {}
    out["skillet"] = run_turn(assistant.stream("I need a cast iron skillet for steak"))
    cid = out["skillet"][1]["conversation_id"]
    out["cheaper"] = run_turn(assistant.stream("cheaper ones?", cid))
    out["inject"] = run_turn(assistant.stream("olive wood bread board"))
    out["earbuds"] = run_turn(assistant.stream("wireless earbuds for running"))
    return out


def test_every_product_in_every_final_event_exists(
    turns: dict[str, Turn], catalogue_ids: set[str]
) -> None:
    for name, (_, final) in turns.items():
        # The model ran: degraded only where the templated answer replaced what it wrote.
        reason = final["degraded_reason"]
        assert final["degraded"] == (final["template"] == "assistant_fallback"), (name, reason)
        assert reason is None or reason.startswith(("empty:", "language:")), (name, reason)
        shown = {c["id"] for c in final["products"]}
        assert final["products"] and shown <= catalogue_ids, name
        assert set(final["cited"]) <= shown, name
        # Every label left in the answer is one of the cards (or a suggestion's).
        labels = {int(x) for x in re.findall(r"\[(\d+)\]", final["answer"])}
        assert labels <= set(range(1, 5)), (name, final["answer"])


def test_an_injected_fake_id_never_appears(turns: dict[str, Turn], assistant: Assistant) -> None:
    tokens, final = turns["inject"]
    conv = assistant.conversation(final["conversation_id"])
    assert INJECTED["id"] in conv["messages"][-1]["meta"]["shortlist"]  # the model saw it
    everything = "".join(tokens) + final["answer"] + str(final["products"]) + str(conv)
    assert FAKE_ID not in everything and FAKE_ID.lower() not in everything.lower()
    assert "[9]" not in everything
    shown = ("".join(tokens) + final["answer"]).lower()
    for planted in ("new instruction", "ignore the product list", "tell the shopper"):
        assert planted not in shown, final


def test_a_follow_up_keeps_the_earlier_topic(turns: dict[str, Turn], assistant: Assistant) -> None:
    _, first = turns["skillet"]
    _, follow = turns["cheaper"]
    assert follow["conversation_id"] == first["conversation_id"]
    assert follow["query"]["follow_up"]
    assert follow["query"]["text"] == first["query"]["text"]
    assert follow["query"]["derived"]["categories"] == ["Kitchen"]
    used = assistant.conversation(follow["conversation_id"])["messages"][-1]["meta"]["filters"]
    assert used["categories"] == ["Kitchen"] and used["max_price"] is not None
    for c in follow["products"]:
        assert c["category"] == "Kitchen" and c["price"] <= used["max_price"]
    assert max(c["price"] for c in follow["products"]) < max(c["price"] for c in first["products"])


def test_tokens_concatenate_to_the_answer(
    turns: dict[str, Turn], rs: Recsmith, assistant: Assistant
) -> None:
    with session_scope(rs.store.engine) as s:
        rows = list(
            s.scalars(select(LLMCallRow).where(LLMCallRow.kind == "stream").order_by(LLMCallRow.id))
        )
    # A follow-up streams in the same conversation: each turn takes its conversation's
    # next raw response, in the order the turns ran.
    raw_by_conv: dict[str | None, list[str]] = {}
    for r in rows:
        if r.params:
            conv_id = r.params.get("tags", {}).get("conversation_id")
            raw_by_conv.setdefault(conv_id, []).append(r.response)
    for name, (tokens, final) in turns.items():
        assert len(tokens) >= 2, name
        streamed = "".join(tokens)
        # Sentences the guard held back (planted orders, prompt echoes) were never streamed.
        held = [
            f for f in final["flags"] if f["kind"] in ("injection", "prompt_echo", "repetition")
        ]
        guarded = [f["text"] for f in held]
        if final["template"] == "assistant_turn":
            # The answer is the streamed text, minus sentences removed after the stream.
            rest = streamed
            for f in held:
                rest = rest.replace(f.get("streamed", ""), "", 1)
            for sentence in final["removed"]:
                if sentence in guarded:
                    continue
                assert sentence in rest, (name, sentence)
                rest = rest.replace(sentence, "", 1)
            assert " ".join(rest.split()) == " ".join(final["answer"].split()), name
        # What differs from the raw model text: labels/ids cleaned while streaming.
        conv = assistant.conversation(final["conversation_id"])["messages"][-1]
        products = rs.store.get_products(conv["meta"]["shortlist"])
        labels = Labels([products[i] for i in conv["meta"]["shortlist"]])
        raw = raw_by_conv[final["conversation_id"]].pop(0)
        expected = labels.sanitize(raw)
        for f in held:  # at most the words that left before the sentence was judged
            expected = expected.replace(f["text"], f.get("streamed", ""), 1)
        assert " ".join(expected.split()) == " ".join(streamed.split()), name


def test_the_turns_are_stored(turns: dict[str, Turn], assistant: Assistant, real_llm: LLM) -> None:
    conv = assistant.conversation(turns["cheaper"][1]["conversation_id"])
    assert [m["role"] for m in conv["messages"]] == ["user", "assistant"] * 2
    for m in conv["messages"][1::2]:
        assert m["model_id"] == real_llm.model_id and m["template_version"]
