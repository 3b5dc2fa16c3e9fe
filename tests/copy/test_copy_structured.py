"""Texts with parts as JSON that always parses: blurb variants in one call and a headline
with per-item notes, on the llama.cpp backend (grammar-constrained, the tiny model's GGUF)
and through the parse-and-retry path a free-running backend takes."""

from __future__ import annotations

import json

import pytest

from service.catalog.store import CatalogStore
from service.config import Settings
from service.copy.structured import StructuredOutputError, conforms, variants_schema
from service.copy.writer import CopyWriter
from tests.fakes import FakeLLM


@pytest.fixture(scope="module")
def gguf_writer(settings: Settings, catalog: CatalogStore) -> CopyWriter:
    from service.llm.llamacpp_backend import LlamaCppLLM

    llm = LlamaCppLLM(settings.model_copy(update={"llm_backend": "llamacpp", "llm_model": "tiny"}))
    return CopyWriter(settings, llm=llm, catalog=catalog)


def test_variants_in_one_call_always_parse_on_llamacpp(gguf_writer: CopyWriter) -> None:
    for pid, n in (("cof-0001", 3), ("kit-zh-01", 2)):
        res = gguf_writer.blurb_variants(pid, n)
        assert len(res["variants"]) == n and res["attempts"] == 1, res
        assert all(v["text"].strip() for v in res["variants"]), res


def test_headline_with_notes_always_parses_on_llamacpp(gguf_writer: CopyWriter) -> None:
    ids = ["cof-0001", "kit-0006", "cof-0005"]
    res = gguf_writer.headline_with_notes(ids, interests=["Glass French Press, 1 L"])
    assert res["headline"] and res["attempts"] == 1 and res["language"] == "en"
    assert [n["product_id"] for n in res["notes"]] == ids
    assert all(n["note"] for n in res["notes"]), res


def test_an_unparseable_answer_is_asked_again(settings: Settings, catalog: CatalogStore) -> None:
    """A backend without constrained decoding (transformers) may answer prose: parsed from
    the text when it contains the JSON, asked again when it does not."""
    good = json.dumps({"variants": ["A first blurb.", "A second blurb."]})
    llm = FakeLLM(replies=("Here you go: variants are nice", "Sure! " + good))
    w = CopyWriter(settings, llm=llm, catalog=catalog)  # type: ignore[arg-type]
    res = w.blurb_variants("kit-0007", 2)
    assert res["attempts"] == 2 and [v["text"] for v in res["variants"]] == [
        "A first blurb.",
        "A second blurb.",
    ]
    assert llm.params[0].json_schema == llm.params[1].json_schema is not None
    wrong_shape = json.dumps({"variants": ["only one"]})
    w2 = CopyWriter(settings, llm=FakeLLM(replies=(wrong_shape,) * 3), catalog=catalog)  # type: ignore[arg-type]
    with pytest.raises(StructuredOutputError, match="did not parse"):
        w2.blurb_variants("kit-0007", 2)


def test_each_part_is_checked_against_its_own_product(
    settings: Settings, catalog: CatalogStore
) -> None:
    reply = json.dumps(
        {
            "headline": "Santoku Knife, 17 cm",
            "notes": ["A 17 cm santoku knife.", "A luxurious espresso machine in red."],
        }
    )
    w = CopyWriter(settings, llm=FakeLLM(replies=(reply,)), catalog=catalog)  # type: ignore[arg-type]
    res = w.headline_with_notes(["kit-0007", "cof-0001"])
    assert "theme" in res["headline_checks"]
    assert res["notes"][0]["passed"] and not res["notes"][1]["passed"]
    assert {"claims", "attributes"} <= set(res["notes"][1]["failed_checks"])


def test_conforms_is_strict_about_shape() -> None:
    s = variants_schema(2, 50)
    assert conforms({"variants": ["a", "b"]}, s)
    for bad in (None, [], {"variants": ["a"]}, {"variants": ["a", ""]}, {"variants": ["a", 3]},
                {"variants": ["a", "b"], "extra": 1}, {"variants": ["a", "x" * 51]}):  # fmt: skip
        assert not conforms(bad, s), bad
