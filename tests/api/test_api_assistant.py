"""The chat assistant over SSE: several token events, then one final event with cards."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient

from tests.api.support import parse_sse


def chat(client: TestClient, **body: object) -> list[tuple[str, dict]]:
    with client.stream("POST", "/v1/assistant/chat", json=body) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        text = "".join(r.iter_text())
    return [(ev, json.loads(data)) for ev, data in parse_sse(text)]


def test_chat_streams_tokens_then_a_final_event(client: TestClient) -> None:
    events = chat(client, message="I need a coffee grinder")
    kinds = [k for k, _ in events]
    assert kinds.count("token") >= 3, kinds
    assert kinds[-1] == "final" and kinds.count("final") == 1
    assert set(kinds) <= {"token", "final"}
    final = events[-1][1]
    assert final["conversation_id"] and final["answer"]
    assert final["products"], final
    for card in final["products"]:
        assert card["id"] and card["title"] and "price" in card
    # Cited ids are among the cards shown.
    assert set(final["cited"]) <= {c["id"] for c in final["products"]}

    # The conversation continues and is stored.
    cid = final["conversation_id"]
    follow = chat(client, message="a cheaper one?", conversation_id=cid)
    assert follow[-1][0] == "final" and follow[-1][1]["conversation_id"] == cid
    conv = client.get(f"/v1/assistant/conversations/{cid}").json()
    assert [m["role"] for m in conv["messages"]] == ["user", "assistant", "user", "assistant"]


def test_chat_without_streaming_returns_the_final_object(client: TestClient) -> None:
    r = client.post("/v1/assistant/chat", json={"message": "a tea set", "stream": False})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["answer"] and body["products"]
