"""The listwise-answer parser on crafted model output: it takes what is usable and never
lets anything but UnparseableOutput escape."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.ranking.common import UnparseableOutput
from service.ranking.parse import extract_json_object, parse_ranking

LABELS = list("ABCDEFGH")
IDS = {"kit-0011": "E", "cof-0003": "F"}


def test_clean_json() -> None:
    text = json.dumps(
        {"ranking": ["C", "A", "B"], "reasons": {"C": "same pan family"}, "rationale": "Pans."}
    )
    p = parse_ranking(text, LABELS)
    assert p.labels == ["C", "A", "B"]
    assert p.reasons == {"C": "same pan family"}
    assert p.rationale == "Pans."
    assert not p.repaired and not p.dropped


@pytest.mark.parametrize(
    "text, labels",
    [
        ('Sure! Here it is:\n```json\n{"ranking": ["B", "D"]}\n```', ["B", "D"]),
        ('{"ranking": ["H", "G", "F', ["H", "G", "F"]),  # cut off mid-list
        ('{"ranking": ["H", "G"], "reasons": {"H": "go', ["H", "G"]),  # cut off in reasons
        (
            '{"ranking": ["c", "A.", "[B]", "D. Stand mixer", 5, "7"]}',
            ["C", "A", "B", "D", "E", "G"],
        ),
        ('{"ranking": ["kit-0011", "cof-0003", "Z", "Q"]}', ["E", "F"]),  # ids; invented labels
        ('{"ranking": ["A", "A", "B", "A"]}', ["A", "B"]),  # repeats
        ('{"order": "C, B > A"}', ["C", "B", "A"]),  # a string instead of a list
        ('{"ranking": [{"label": "D"}, {"id": "kit-0011"}, null, true, 3.5]}', ["D", "E"]),
        ("1. C\n2. A\n3. B\n4. C\n9. Z\n10. I", ["C", "A", "B"]),  # a numbered list
        ('ranking: "B", "A" and then "H"', ["B", "A", "H"]),  # quoted labels after "ranking"
    ],
)
def test_lenient_forms(text: str, labels: list[str]) -> None:
    assert parse_ranking(text, LABELS, IDS).labels == labels


def test_hallucinations_are_reported_and_reasons_mapped() -> None:
    text = (
        '{"ranking": ["C", "Z", "C", "kit-0011"], "reasons": {"C": "fits <<<pans>>>", '
        '"Q": "ghost", "kit-0011": 42, "E": "mixer"}, "rationale": "  Because\\n  pans '
    )
    p = parse_ranking(text, LABELS, IDS)
    assert p.labels == ["C", "E"]
    assert p.dropped == ["Z", "C"]
    assert p.reasons == {"C": "fits pans", "E": "mixer"}  # fences stripped, ghosts dropped
    assert p.rationale == "Because pans"
    assert p.repaired


def test_inner_object_does_not_win_over_the_cut_off_outer_one() -> None:
    text = '{"ranking": ["B", "A"], "reasons": {"B": "x"}, "rationale": "cut'
    obj, repaired = extract_json_object(text)
    assert obj is not None and obj["ranking"] == ["B", "A"] and repaired


def test_long_reason_is_clipped() -> None:
    p = parse_ranking(json.dumps({"ranking": ["A"], "reasons": {"A": "x" * 1000}}), LABELS)
    assert len(p.reasons["A"]) <= 160


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "I cannot rank these products.",
        "A great choice would be the mixer",  # prose starting with a capital "A"
        '{"rationale": "only words"}',
        '{"ranking": []}',
        '{"ranking": ["Z", "Y"]}',
        "{{{{[[[[",
        "}}}]]]",
        '{"ranking": "',
        "null",
        "[1, 2, 3]" * 1000,
    ],
)
def test_unusable_answers_raise_only_unparseable(text: str) -> None:
    with pytest.raises(UnparseableOutput):
        parse_ranking(text, LABELS, IDS)


def test_non_string_answer() -> None:
    with pytest.raises(UnparseableOutput):
        parse_ranking(None, LABELS)  # type: ignore[arg-type]


_json_ish = st.text(alphabet=st.sampled_from(list('{}[]",:ABCZ0123 \\\nabc.-')), max_size=200)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=300), _json_ish))
def test_fuzz_never_escapes(text: str) -> None:
    try:
        p = parse_ranking(text, LABELS, IDS)
    except UnparseableOutput:
        return
    assert p.labels and len(set(p.labels)) == len(p.labels)
    assert set(p.labels) <= set(LABELS)
    assert set(p.reasons) <= set(LABELS)
