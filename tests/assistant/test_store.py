"""Conversations and messages are stored; an unknown id is a clear, specific error."""

from __future__ import annotations

import pytest

from service.assistant import ConversationNotFound
from service.assistant.store import ConversationStore
from service.catalog.store import NotFound


def test_messages_round_trip_in_order(db_url: str) -> None:
    store = ConversationStore(db_url)
    cid = store.create(user_id="u1", title="skillets")
    store.add(cid, "user", "a skillet?")
    store.add(
        cid, "assistant", "Try [1].", cited_ids=["kit-0001"], product_ids=["kit-0001"],
        model_id="m", template="assistant_turn", template_version="abc", meta={"topic": "x"},
    )  # fmt: skip
    msgs = store.messages(cid)
    assert [m.role for m in msgs] == ["user", "assistant"]
    assert msgs[1].cited_ids == ["kit-0001"] and msgs[1].template_version == "abc"
    assert msgs[1].created_at is not None
    conv = store.get(cid)
    assert conv["user_id"] == "u1" and len(conv["messages"]) == 2
    assert store.messages(cid, limit=1)[0].role == "assistant"


def test_unknown_conversation_raises_a_specific_not_found(db_url: str) -> None:
    store = ConversationStore(db_url)
    for call in (store.get, store.messages, store.require):
        with pytest.raises(ConversationNotFound, match="unknown conversation id"):
            call("nope")
    with pytest.raises(NotFound):  # the API's 404 mapping for NotFound covers it
        store.add("nope", "user", "hi")
