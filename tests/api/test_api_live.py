"""Against a real uvicorn server on a loopback port: HTTP/1.1 framing, streaming and the
body limit as a network client sees them."""

from __future__ import annotations

import json

import httpx

from tests.api.support import AUTH, LiveServer, parse_sse


def test_live_server_end_to_end(live_server: LiveServer) -> None:
    with httpx.Client(base_url=live_server.url, headers=AUTH, timeout=600) as http:
        assert http.get("/healthz").json() == {"status": "ok"}
        assert http.get("/v1/products/kit-0001", headers={"X-API-Key": "nope"}).status_code == 401

        r = http.post("/v1/recommendations", json={"user_id": "u-dan", "k": 5})
        assert r.status_code == 200
        assert len(r.json()["items"]) == 5

        r = http.get("/v1/products/kit-0001/similar", params={"k": 3})
        assert [i["product_id"] for i in r.json()["items"]]

        # The stream arrives in pieces: several token events before the final one.
        events: list[tuple[str, str]] = []
        chunks = 0
        with http.stream("POST", "/v1/assistant/chat", json={"message": "a tea kettle"}) as s:
            assert s.status_code == 200
            assert s.headers["content-type"].startswith("text/event-stream")
            buf = ""
            for piece in s.iter_text():
                chunks += 1
                buf += piece
            events = parse_sse(buf)
        kinds = [k for k, _ in events]
        assert kinds.count("token") >= 3 and kinds[-1] == "final"
        assert chunks >= 3  # not buffered into one body
        final = json.loads(events[-1][1])
        assert final["products"]

        too_big = b"[" + b"1," * 1_100_000 + b"1]"
        r = http.post(
            "/v1/recommendations", content=too_big, headers={"content-type": "application/json"}
        )
        assert r.status_code == 413
        assert r.json()["error"]["code"] == "body_too_large"
