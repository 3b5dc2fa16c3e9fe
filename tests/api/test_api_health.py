"""Probes, metrics and the OpenAPI document."""

from __future__ import annotations

from fastapi.testclient import TestClient


def test_healthz_and_readyz(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 200
    body = r.json()
    assert body["ready"] is True
    checks = body["checks"]
    assert checks["store"]["ok"] and checks["store"]["products"] >= 238
    assert checks["encoder"]["ok"] and checks["index"]["ok"]
    assert checks["encoder"]["runtime"] == "onnx"  # auto, a local model, ORT installed
    llm = checks["llm"]
    assert llm["state"] == "ready" and llm["backend"] == "transformers" and llm["model_id"]


def test_metrics_count_routes_by_template_and_model_calls(client: TestClient) -> None:
    client.get("/v1/products/kit-0001")
    client.get("/v1/products/kit-0002")
    client.post("/v1/recommendations", json={"user_id": "u-carol", "k": 3, "rerank": "verbalizer"})
    text = client.get("/metrics").text
    assert (
        'recsmith_http_requests_total{method="GET",route="/v1/products/{product_id}",status="200"}'
        in text
    )
    assert "kit-0001" not in text  # ids never become labels
    assert (
        'recsmith_http_request_duration_seconds_count{method="POST",route="/v1/recommendations"}'
        in text
    )
    assert 'recsmith_llm_calls_total{backend="transformers"' in text
    assert 'recsmith_recommendations_total{rerank="verbalizer"}' in text
    assert "recsmith_llm_tokens_total" in text


def test_openapi_is_complete(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    for path in [
        "/v1/recommendations",
        "/v1/products",
        "/v1/products/{product_id}",
        "/v1/products/{product_id}/similar",
        "/v1/interactions",
        "/v1/assistant/chat",
        "/healthz",
        "/readyz",
        "/metrics",
    ]:
        assert path in paths, path
    assert "ErrorResponse" in spec["components"]["schemas"]
    for path, item in paths.items():
        for method, op in item.items():
            assert op.get("summary"), f"{method} {path} has no summary"
            if path.startswith("/v1/"):
                codes = set(op["responses"])
                assert {"401", "422"} <= codes, (method, path, codes)
                ref = op["responses"]["422"]["content"]["application/json"]["schema"]["$ref"]
                assert ref.endswith("/ErrorResponse")
