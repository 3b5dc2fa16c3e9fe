"""API keys: every /v1 route refuses a missing or wrong key with 401; probes need none."""

from __future__ import annotations

import re

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from tests.api.support import API_KEY, OTHER_KEY


def v1_operations(app: FastAPI) -> list[tuple[str, str]]:
    ops = []
    for path, item in app.openapi()["paths"].items():
        if not path.startswith("/v1/"):
            continue
        for method in item:
            concrete = re.sub(r"\{[^}]+\}", "x1", path)
            ops.append((method.upper(), concrete))
    return sorted(ops)


def test_every_v1_operation_is_documented_with_security(app: FastAPI) -> None:
    spec = app.openapi()
    schemes = spec["components"]["securitySchemes"]
    assert {"APIKeyHeader", "HTTPBearer"} <= set(schemes)
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if path.startswith("/v1/"):
                assert op.get("security"), f"{method} {path} documents no security"
                assert "401" in op["responses"], f"{method} {path} documents no 401"


@pytest.mark.parametrize("header", [None, {"X-API-Key": "wrong"}, {"Authorization": "Bearer no"}])
def test_missing_or_wrong_key_is_401_on_every_route(
    anon: TestClient, app: FastAPI, header: dict[str, str] | None
) -> None:
    ops = v1_operations(app)
    assert len(ops) >= 8
    for method, path in ops:
        r = anon.request(method, path, headers=header or {}, json={})
        assert r.status_code == 401, (method, path, r.status_code, r.text)
        err = r.json()["error"]
        assert err["code"] == "unauthorized"
        assert "key" in err["message"]
        assert err["fields"][0]["field"] == "X-API-Key"
        assert r.headers["www-authenticate"].startswith("Bearer")


def test_both_header_forms_and_every_key_are_accepted(anon: TestClient) -> None:
    assert anon.get("/v1/products/kit-0001", headers={"X-API-Key": API_KEY}).status_code == 200
    r = anon.get("/v1/products/kit-0001", headers={"Authorization": f"Bearer {OTHER_KEY}"})
    assert r.status_code == 200
    assert r.json()["id"] == "kit-0001"


def test_probes_and_page_need_no_key(anon: TestClient) -> None:
    assert anon.get("/healthz").status_code == 200
    assert anon.get("/readyz").status_code == 200
    assert anon.get("/metrics").status_code == 200
    page = anon.get("/")
    assert page.status_code == 200
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert anon.get("/static/app.js").status_code == 200
    assert anon.get("/openapi.json").status_code == 200
