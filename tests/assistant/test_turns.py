"""One turn end to end over the real catalogue and index, with scripted or dead models:
what reaches the user is grounded whatever the model writes, and failures degrade."""

from __future__ import annotations

import json

import pytest

from service.assistant import ConversationNotFound
from service.assistant.chat import Assistant
from service.llm.base import LLM
from service.recsmith import Recsmith
from service.retrieval.filters import Filters
from tests.assistant.conftest import ScriptedLLM, run_turn


def scripted(rs: Recsmith, text: str, **kw: object) -> tuple[Assistant, ScriptedLLM]:
    llm = ScriptedLLM(rs.settings, text, **kw)  # type: ignore[arg-type]
    return Assistant(rs, llm), llm


def test_invented_labels_ids_and_prices_never_reach_the_user(
    rs: Recsmith, catalogue_ids: set[str]
) -> None:
    a, _ = scripted(rs, "I recommend [1]. Also try [7] and FAKE-9999, only $5.00! Or kit-9999.")
    tokens, final = run_turn(a.stream("cast iron skillet"))
    streamed = "".join(tokens)
    for bad in ("[7]", "FAKE", "kit-9999"):
        assert bad not in streamed and bad not in final["answer"]
    assert final["answer"] == "I recommend [1]. Or."  # the foreign id is cut out of its sentence
    assert final["removed"] == ["Also try and, only $5.00!"]  # a price no product has
    top = final["products"][0]
    assert final["cited"] == [top["id"]] and top["label"] == 1 and not final["suggested"]
    assert set(final["cited"]) <= {c["id"] for c in final["products"]} <= catalogue_ids
    assert not final["degraded"] and final["model_id"] == "scripted-test-model"
    assert final["template"] == "assistant_turn" and len(final["template_version"]) == 12


def test_an_answer_citing_nothing_gets_the_top_products_as_suggestions(rs: Recsmith) -> None:
    a, _ = scripted(rs, "Cast iron is great for searing steak.")
    _, final = run_turn(a.stream("cast iron skillet"))
    assert final["cited"] == [] and final["suggested"]
    assert [c["label"] for c in final["products"]] == [1, 2, 3]
    assert final["answer"] == "Cast iron is great for searing steak."


def test_the_prompt_fences_product_text_and_labels_it(rs: Recsmith) -> None:
    a, llm = scripted(rs, "Try [1].")
    _, final = run_turn(a.stream("olive wood bread board"))
    system, user = llm.prompts[0]  # type: ignore[misc]
    assert system["role"] == "system" and "<<< >>>" in system["content"]
    assert "Question: olive wood bread board" in user["content"]
    for c in final["products"]:
        assert f"[{c['label']}] <<<{c['title']}>>>" in user["content"]
    # The injected instruction is inside a fence, on the product's own line.
    line = next(x for x in user["content"].splitlines() if "IMPORTANT NEW INSTRUCTION" in x)
    assert line.startswith("[") and "<<<" in line and line.index("<<<") < line.index("IMPORTANT")


def test_a_model_failing_mid_stream_gives_a_degraded_final_with_cards(rs: Recsmith) -> None:
    a, _ = scripted(rs, "I recommend [1] because it is heavy and holds heat.", fail_after=4)
    tokens, final = run_turn(a.stream("cast iron skillet"))
    assert final["degraded"] and "scripted failure" in final["degraded_reason"]
    assert final["products"] and final["suggested"] and final["cited"] == []
    assert final["template"] == "assistant_fallback"
    assert final["products"][0]["title"] in final["answer"]


def test_a_dead_llm_server_degrades_not_raises(rs: Recsmith, dead_llm: LLM) -> None:
    a = Assistant(rs, dead_llm)
    tokens, final = run_turn(a.stream("wireless earbuds for running"))
    assert tokens == []
    assert final["degraded"] and final["degraded_reason"]
    assert final["products"] and all(c["id"] and c["title"] for c in final["products"])
    assert final["answer"].startswith("I can't write a full answer right now")
    stored = a.conversation(final["conversation_id"])["messages"][-1]
    assert stored["degraded"] and stored["template"] == "assistant_fallback"


def test_nothing_found_answers_without_calling_the_model(rs: Recsmith) -> None:
    a, llm = scripted(rs, "unused")
    _, final = run_turn(a.stream("cast iron skillet", filters=Filters(categories=["Nope"])))
    assert final["products"] == [] and llm.prompts == []
    assert final["answer"].startswith("I couldn't find products")


def test_unknown_conversation_and_empty_message_fail_before_streaming(rs: Recsmith) -> None:
    a, _ = scripted(rs, "Try [1].")
    with pytest.raises(ConversationNotFound):
        a.stream("hello", conversation_id="does-not-exist")  # eager: no iteration needed
    with pytest.raises(ValueError):
        a.stream("   ")


def test_conversations_are_stored_with_provenance(rs: Recsmith) -> None:
    a, llm = scripted(rs, "I recommend [2].")
    _, first = run_turn(a.stream("cast iron skillet for steak"))
    cid = first["conversation_id"]
    _, second = run_turn(a.stream("cheaper ones?", cid))
    assert second["conversation_id"] == cid and second["query"]["follow_up"]
    # The follow-up's prompt carries the earlier question.
    assert "Earlier the shopper asked: cast iron skillet for steak" in llm.prompts[-1][1]["content"]  # type: ignore[index]
    conv = a.conversation(cid)
    msgs = conv["messages"]
    assert [m["role"] for m in msgs] == ["user", "assistant", "user", "assistant"]
    assert msgs[0]["content"] == "cast iron skillet for steak"
    reply = msgs[3]
    assert reply["cited_ids"] == second["cited"] and reply["model_id"] == "scripted-test-model"
    assert reply["template"] == "assistant_turn" and reply["template_version"]
    assert reply["meta"]["topic"] == "cast iron skillet for steak"
    assert reply["created_at"].endswith("Z")
    json.dumps(conv)  # JSON-ready for the API


def test_closing_the_stream_early_stops_cleanly(rs: Recsmith) -> None:
    a, _ = scripted(rs, "word " * 200, piece=5)
    events = a.stream("cast iron skillet")
    assert next(events)["type"] == "token"
    events.close()  # the client went away
    _, final = run_turn(a.stream("cast iron skillet"))  # the assistant still works
    assert final["products"]


def test_the_shortlist_can_be_reranked_by_the_model(rs: Recsmith, catalogue_ids: set[str]) -> None:
    llm = ScriptedLLM(rs.settings, "I recommend [1].")
    a = Assistant(rs, llm, rerank="verbalizer")
    _, final = run_turn(a.stream("cast iron skillet"))
    assert not final["degraded"] and "rerank_note" not in final, final.get("rerank_note")
    assert final["cited"] and set(final["cited"]) <= catalogue_ids
    with pytest.raises(ValueError, match="unknown reranker"):
        Assistant(rs, llm, rerank="nope")
