"""The fuzz run's hostile-payload half: every operation of the OpenAPI document that takes
a JSON body gets deep, huge and malformed bodies — whole bodies and one field at a time —
and must answer with a 4xx in the common error shape (or a 2xx where the value is fine),
never a 5xx. Reads that follow must still work (nothing bad was stored).

Deterministic and bounded: the payloads are built here, not drawn; the app's model is a
server that is not there (`llm_down_client`), so no example waits for a model.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.api.support import AUTH

DEEP = 20_000  # levels: far past any recursion limit of a parser or a serialiser
BIG_STRING = 1_500_000  # characters: under the 2 MB body limit, over every field limit
BIG_ARRAY = 150_000


def _deep_json(levels: int, leaf: str = "1") -> str:
    return '{"a":' * levels + leaf + "}" * levels


def _json_ops(openapi: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(method, concrete path, body schema) of every operation with a JSON body."""
    out = []
    for path, item in openapi["paths"].items():
        for method, op in item.items():
            content = (op.get("requestBody") or {}).get("content", {})
            if "application/json" not in content:
                continue
            concrete = path
            for p in op.get("parameters", []):
                if p.get("in") == "path":
                    value = "1" if p.get("schema", {}).get("type") == "integer" else "x-1"
                    concrete = concrete.replace("{" + p["name"] + "}", value)
            out.append((method, concrete, _resolve(openapi, content["application/json"]["schema"])))
    return out


def _resolve(openapi: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        schema = openapi["components"]["schemas"][name]
    return schema


# Valid items of the bulk writes: their fields are replaced one at a time, so a hostile
# value arrives inside an otherwise good item (the audit's 300-deep `attributes`).
ITEMS: dict[str, tuple[str, dict[str, Any]]] = {
    "/v1/products": (
        "products",
        {
            "id": "fz-1",
            "title": "Fuzz kettle",
            "category": "Kitchen",
            "price": 10.0,
            "attributes": {"volume": "1 l"},
            "tags": ["steel"],
        },
    ),  # fmt: skip
    "/v1/interactions": (
        "interactions",
        {"user_id": "u-fz", "product_id": "cof-0001", "event": "view", "ts": 1_700_000_000},
    ),
}


def _item_payloads(path: str) -> list[tuple[str, str]]:
    if path not in ITEMS:
        return []
    key, item = ITEMS[path]
    out = []
    for name in item:
        rest = json.dumps({k: v for k, v in item.items() if k != name})[1:-1]
        for label, raw in _field_payloads(name):
            value = raw[len(name) + 4 : -1]  # the hostile value of '{"name":VALUE}'
            out.append((f"{key}[0].{label}", f'{{"{key}":[{{{rest},"{name}":{value}}}]}}'))
    return out


def _field_payloads(name: str) -> list[tuple[str, str]]:
    """(label, raw JSON body) replacing one field with a hostile value."""
    return [
        (f"{name}=deep", f'{{"{name}":{_deep_json(DEEP)}}}'),
        # Deep enough to store and then break a reader's serialiser, shallow enough to parse.
        (f"{name}=nested-300", f'{{"{name}":{_deep_json(300)}}}'),
        (f"{name}=deep-list", '{{"{}":{}}}'.format(name, "[" * DEEP + "]" * DEEP)),
        (f"{name}=huge-string", '{{"{}":"{}"}}'.format(name, "x" * BIG_STRING)),
        (f"{name}=huge-array", '{{"{}":[{}]}}'.format(name, ",".join(["0"] * BIG_ARRAY))),
        (f"{name}=nan", f'{{"{name}":NaN}}'),
        (f"{name}=huge-number", f'{{"{name}":1e999999}}'),
    ]


WHOLE_BODIES = [
    ("deep-object", _deep_json(DEEP)),
    ("deep-array", "[" * DEEP + "]" * DEEP),
    ("huge-array", "[" + ",".join(["{}"] * BIG_ARRAY) + "]"),
    ("truncated", '{"a": [1, 2'),
    ("not-utf8", b'{"q": "\xff\xfe"}'),
    ("lone-surrogate", '{"q": "\\ud800"}'),
]


def _check(resp: Any, label: str) -> None:
    assert resp.status_code < 500, f"{label}: {resp.status_code} {resp.text[:300]}"
    if resp.status_code >= 400:
        body = resp.json()
        assert "error" in body and body["error"].get("message"), f"{label}: {body}"


@pytest.mark.slow
def test_hostile_bodies_never_5xx(llm_down_client: TestClient) -> None:
    c = llm_down_client
    before = c.get("/v1/products", params={"limit": 5}).json()
    ops = _json_ops(c.get("/openapi.json").json())
    assert len(ops) >= 8  # every write operation is covered, not a lucky few
    sent = 0
    for method, path, schema in ops:
        fields = list(schema.get("properties", {}))[:12]
        payloads = list(WHOLE_BODIES)
        for name in fields:
            payloads += _field_payloads(name)
        payloads += _item_payloads(path)
        for label, raw in payloads:
            data = raw if isinstance(raw, bytes) else raw.encode()
            resp = c.request(
                method.upper(),
                path,
                content=data,
                headers={**AUTH, "Content-Type": "application/json"},
            )
            _check(resp, f"{method.upper()} {path} {label}")
            sent += 1
    # An over-limit body is refused by size, before it is parsed.
    resp = c.post("/v1/products", content=b"[" + b" " * 3_000_000 + b"]",
                  headers={**AUTH, "Content-Type": "application/json"})  # fmt: skip
    assert resp.status_code == 413
    assert sent > 200
    # Nothing hostile was stored, and reads still answer.
    assert c.get("/v1/products/fz-1").status_code in (200, 404)
    after = c.get("/v1/products", params={"limit": 5})
    assert after.status_code == 200 and after.json() == before
    assert c.get("/v1/products", params={"q": "coffee"}).status_code == 200
