"""The copy store and the review/export CLI, without a model (rows are written directly)."""

from __future__ import annotations

import csv
import io
import json

import pytest
from typer.testing import CliRunner

from service.config import Settings
from service.copy.cli import copy_app
from service.copy.store import CopyFilter, CopyNotFound, CopyStore, canonical_json, request_key
from service.copy.tables import CopyRow
from service.copy.writer import CopyWriter


def _row(
    store_key: str, product_id: str = "cof-0005", text: str = "A glass French press, 1 L.", **kw
) -> CopyRow:  # noqa: ANN003
    values = dict(
        request_key=store_key, task="summary", product_id=product_id, product_ids=[product_id],
        params={"language": "en", "max_words": 40}, language="en", text=text, model_id="m",
        backend="transformers", template="copy_summary.en", template_version="v1",
        checks={"numbers": {"ok": True, "detail": "", "found": []}}, failed_checks=[], passed=True,
    )  # fmt: skip
    values.update(kw)
    return CopyRow(**values)


@pytest.fixture
def store(db_settings: Settings) -> CopyStore:
    """On SQLite and on PostgreSQL (tests/copy/conftest.py)."""
    return CopyStore(db_settings.db_url)


@pytest.fixture
def sqlite_store(settings: Settings, catalog) -> CopyStore:  # noqa: ANN001
    """The store the CLI reads (the session's settings)."""
    return CopyStore(settings.db_url)


def test_request_key_is_canonical() -> None:
    a = request_key("summary", ["p1"], {"b": 1, "a": [1, 2]}, "m", "v", 0)
    b = request_key("summary", ["p1"], {"a": [1, 2], "b": 1}, "m", "v", 0)
    assert a == b and len(a) == 64
    assert a != request_key("summary", ["p1"], {"a": [1, 2], "b": 1}, "m", "v2", 0)  # template
    assert a != request_key("summary", ["p1"], {"a": [1, 2], "b": 1}, "m2", "v", 0)  # model
    assert a != request_key("summary", ["p1"], {"a": [1, 2], "b": 1}, "m", "v", 1)  # variant
    assert canonical_json({"b": "电", "a": 1}) == '{"a":1,"b":"电"}'


def test_find_skips_rejected_but_serves_refused(store: CopyStore) -> None:
    [r] = store.add([_row("k-reject")])
    assert store.find_many(["k-reject"])["k-reject"].id == r.id
    store.reject(r.id, "off-brand")
    assert store.find_many(["k-reject"]) == {}  # a rejected text is not served again
    [refused] = store.add([_row("k-refused", status="rejected", meta={"refused": True})])
    assert store.find_many(["k-refused"])["k-refused"].id == refused.id


def test_review_flow_and_filters(store: CopyStore) -> None:
    a, b = store.add(
        [_row("k-a", product_id="store-a"), _row("k-b", product_id="store-b", task="title")]
    )
    approved = store.approve(a.id)
    assert approved.status == "approved" and approved.text == a.text
    edited = store.edit(b.id, "  Cast Iron Skillet, 30 cm  ")
    assert edited.status == "draft" and edited.text == "Cast Iron Skillet, 30 cm"
    assert not edited.passed and edited.failed_checks == ["unchecked"]  # no checks given
    assert edited.generated_text == b.text  # the model's text is kept beside the edit
    assert [r.id for r in store.list(CopyFilter(status="approved", product_id="store-a"))] == [a.id]
    assert [r.id for r in store.list(CopyFilter(task="title", product_id="store-b"))] == [b.id]
    with pytest.raises(CopyNotFound):
        store.approve(10**9)
    with pytest.raises(ValueError):
        store.list(CopyFilter(status="published"))
    with pytest.raises(ValueError):
        store.edit(a.id, "   ")


def test_headline_rows_are_found_by_any_of_their_products(store: CopyStore) -> None:
    [h] = store.add(
        [_row("k-h", product_id=None, product_ids=["store-h1", "store-h2"], task="headline")]
    )
    assert h.id in [r.id for r in store.list(CopyFilter(product_id="store-h2"))]


def test_an_edit_is_rechecked(db_settings: Settings, store: CopyStore) -> None:
    [r] = store.add([_row("k-edit", product_id="cof-0005")])
    w = CopyWriter(db_settings, store=store)
    res = w.edit(r.id, "A 2 L French press, guaranteed.")
    assert not res.checks["numbers"].ok and not res.checks["banned"].ok
    assert not res.passed and {"numbers", "banned"} <= set(res.failed_checks)
    assert res.text == "A 2 L French press, guaranteed."
    assert store.get(r.id).passed is False  # the verdict every reader sees


def test_a_job_text_is_stored_once_per_product_task_and_variant(store: CopyStore) -> None:
    """Two workers writing the same item of a job (one presumed dead, still running): the
    second insert finds the first row (ON CONFLICT DO NOTHING), nothing is duplicated."""
    [first] = store.add([_row("k-job-1", product_id="cof-0005", job_id=4242, text="First")])
    [again] = store.add([_row("k-job-2", product_id="cof-0005", job_id=4242, text="Second")])
    assert again.id == first.id and again.text == "First"
    # Another variant, another task or another job is another text.
    others = store.add([
        _row("k-job-3", product_id="cof-0005", job_id=4242, variant=1),
        _row("k-job-4", product_id="cof-0005", job_id=4242, task="title"),
        _row("k-job-5", product_id="cof-0005", job_id=4243),
    ])  # fmt: skip
    assert len({first.id, *(r.id for r in others)}) == 4
    # Outside a job, the same request may be stored again (regenerate).
    a, b = store.add([_row("k-free", product_id="cof-0005"), _row("k-free", product_id="cof-0005")])
    assert a.id != b.id
    assert len(store.list(CopyFilter(job_id=4242), limit=10)) == 3


def test_cli_review_and_export(sqlite_store: CopyStore, tmp_path) -> None:  # noqa: ANN001
    store = sqlite_store
    a, b = store.add([_row("k-cli-a", text="Approved text"), _row("k-cli-b", text="Draft text")])
    runner = CliRunner()
    assert runner.invoke(copy_app, ["approve", str(a.id)]).exit_code == 0
    res = runner.invoke(copy_app, ["export", "--format", "jsonl", "--status", "approved"])
    assert res.exit_code == 0, res.output
    lines = [json.loads(x) for x in res.stdout.splitlines() if x.startswith("{")]
    assert a.id in [x["id"] for x in lines] and b.id not in [x["id"] for x in lines]
    out = tmp_path / "copy.csv"
    res = runner.invoke(copy_app, ["export", "--format", "csv", "--output", str(out)])
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert {str(a.id), str(b.id)} <= {r["id"] for r in rows}
    assert runner.invoke(copy_app, ["export", "--format", "xml"]).exit_code == 2
    assert runner.invoke(copy_app, ["reject", "999999999"]).exit_code == 2  # bad input
    listed = runner.invoke(copy_app, ["list", "--status", "approved"])
    assert listed.exit_code == 0 and "Approved text" in listed.stdout
