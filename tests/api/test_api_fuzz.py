"""Property-based fuzzing of the whole OpenAPI document with schemathesis: valid and invalid
requests for every operation, against the real app and models. No 5xx, and every answer
matches the documented status codes, content types and schemas.

Bounded: a few examples per operation, the model-heavy knobs clamped (one example costs
seconds, not minutes; the unclamped values are covered by the deterministic tests), and a
wall-clock budget (RECSMITH_FUZZ_BUDGET_S, default 240 s) after which examples are skipped.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from service.api.app import create_app
from service.llm.prepare import MODELS
from tests.api.support import AUTH, REPO, app_settings, quiesce

BUDGET_S = float(os.environ.get("RECSMITH_FUZZ_BUDGET_S", "240"))
EXAMPLES = int(os.environ.get("RECSMITH_FUZZ_EXAMPLES", "12"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
_started: list[float] = []
_ran: list[str] = []


# The app and its schema exist at import (schemathesis parametrizes at collection; its lazy
# fixture loader does not run on this pytest). Nothing heavy happens until the first call:
# create_app only wires routes, and the lifespan (index sync, model loading) starts with the
# first request, after `fuzz_data` has filled the data directory.
FUZZ_DIR = Path(tempfile.mkdtemp(prefix="recsmith-fuzz-")) / "data"
fuzz_app = create_app(app_settings(FUZZ_DIR, REPO / "var" / "models" / MODELS["smollm2"].folder))
schema = schemathesis.openapi.from_dict(fuzz_app.openapi())
schema.app = fuzz_app
schema.location = "/openapi.json"


@pytest.fixture(scope="module", autouse=True)
def fuzz_data(demo_dir: Path, llm_path: Path) -> Iterator[None]:
    assert llm_path == REPO / "var" / "models" / MODELS["smollm2"].folder
    shutil.copytree(demo_dir, FUZZ_DIR)
    yield
    over = bool(_started) and time.monotonic() - _started[0] > BUDGET_S
    print(f"\nfuzz: {len(_ran)} requests over {len(set(_ran))} operations"
          f"{' (time budget reached)' if over else ''}")  # fmt: skip
    quiesce(fuzz_app)  # jobs and streams the fuzzer started must not outlive the test


def bound_work(case: Any) -> None:
    """Clamp in-range values of the knobs that multiply model work."""
    body = case.body
    if not isinstance(body, dict):
        return
    path = case.operation.path

    def clamp(key: str, low: int, high: int) -> None:
        v = body.get(key)
        if isinstance(v, int) and not isinstance(v, bool) and low <= v and v > high:
            body[key] = high

    if path == "/v1/recommendations" and body.get("rerank") in ("verbalizer", "reasoning"):
        clamp("k", 1, 8)
    if path.startswith("/v1/copy"):
        ids = body.get("product_ids")
        if isinstance(ids, list) and len(ids) > 2:
            body["product_ids"] = ids[:2]
        clamp("variants", 1, 1)
        clamp("max_tokens", 8, 24)
        if path == "/v1/copy/jobs":
            clamp("limit", 1, 2)
            clamp("batch_size", 1, 2)
            body.setdefault("limit", 2)


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
def test_no_server_errors(case: Any) -> None:
    if not _started:
        _started.append(time.monotonic())
    if time.monotonic() - _started[0] > BUDGET_S:
        return  # over budget: the remaining examples are skipped
    bound_work(case)
    _ran.append(case.operation.label)
    case.call_and_validate(headers=AUTH, checks=CHECKS)
