"""Lenient reading of a listwise-ranking answer: the model's JSON may be wrapped in prose or
code fences, cut off by the token limit, use "B." or "b" for "B", name product ids, repeat
or invent labels. We take what is usable and report what we dropped; only an answer with
no usable label at all is unparseable.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from service.ranking.common import UnparseableOutput

MAX_REASON_CHARS = 160
MAX_RATIONALE_CHARS = 300
_LEADING_LABEL = re.compile(r"^\s*[\[(\"']?\s*([A-Za-z])\s*(?:[.):\]\"'\-]|\s|$)")
_QUOTED_LABEL = re.compile(r"\"\s*([A-Za-z])\s*[.)]?\s*\"")
# A list line: "1. C", "- C", "C. Stand mixer", "[C]" (upper case only: "A great…" is prose).
_LINE_LABEL = re.compile(r"^\s*(?:[-*•]\s*|\d{1,2}[.):]\s*)?\[?([A-Z])(?:[.):\]]|\s*$)")


@dataclass
class ParsedRanking:
    labels: list[str]  # valid labels, first mention wins, in the model's order
    rationale: str | None = None
    reasons: dict[str, str] = field(default_factory=dict)  # label -> reason
    dropped: list[str] = field(default_factory=list)  # hallucinated or repeated entries
    repaired: bool = False  # the JSON was cut off or malformed and had to be mended


def clean_text(value: Any, limit: int) -> str | None:
    """Model text shown to shoppers: one line, bounded, no data fences echoed back."""
    if not isinstance(value, str):
        return None
    text = " ".join(value.replace("<<<", "").replace(">>>", "").split())
    if not text:
        return None
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _close(stack: Sequence[str]) -> str:
    return "".join(reversed(stack))


def _repairs(s: str) -> list[str]:
    """Candidate completions of a JSON object cut off mid-way (the usual failure of a token
    limit): close an open string and every open bracket, or cut back to the last comma."""
    stack: list[str] = []
    in_str = esc = False
    cuts: list[tuple[int, tuple[str, ...]]] = []
    for i, ch in enumerate(s):
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
            continue
        if ch == '"':
            in_str = True
        elif ch in "{[":
            stack.append("}" if ch == "{" else "]")
        elif ch in "}]":
            if not stack or stack[-1] != ch:
                break  # mismatched: try what we have so far
            stack.pop()
            if not stack:
                return [s[: i + 1]]
        elif ch == ",":
            cuts.append((i, tuple(stack)))
    tail = s.rstrip()
    if esc:
        tail = tail[:-1]
    out = [tail + ('"' if in_str else "") + _close(stack)]
    out += [s[:i] + _close(st) for i, st in reversed(cuts[-40:])]
    return out


def extract_json_object(
    text: str, want: Sequence[str] = ("ranking", "order", "ranked", "rank")
) -> tuple[dict[str, Any] | None, bool]:
    """The first JSON object in text (mended if cut off) that has one of the `want` keys,
    else the first object at all. Returns (object, repaired). Each '{' is tried outermost
    first, so a complete inner object ({"C": "…"} inside a cut-off answer) does not win."""
    decoder = json.JSONDecoder()
    fallback: tuple[dict[str, Any] | None, bool] = (None, False)
    for m in list(re.finditer(r"\{", text))[:8]:
        found: tuple[dict[str, Any], bool] | None = None
        try:
            obj, _ = decoder.raw_decode(text, m.start())
            if isinstance(obj, dict):
                found = (obj, False)
        except ValueError:
            for attempt in _repairs(text[m.start() :]):
                try:
                    obj = json.loads(attempt)
                except ValueError:
                    continue
                if isinstance(obj, dict) and obj:
                    found = (obj, True)
                    break
        if found is None:
            continue
        if any(k in found[0] for k in want):
            return found
        if fallback[0] is None:
            fallback = found
    return fallback


def _as_label(entry: Any, labels: Sequence[str], ids: Mapping[str, str]) -> str | None:
    """'B', 'b', 'B.', '[B]', 'B. Running shoes', a product id, or a 1-based number."""
    if isinstance(entry, bool):
        return None
    if isinstance(entry, int):
        return labels[entry - 1] if 1 <= entry <= len(labels) else None
    if isinstance(entry, dict):  # {"label": "B", ...} / {"id": "p1"}
        for key in ("label", "letter", "id", "product_id", "item"):
            if key in entry:
                return _as_label(entry[key], labels, ids)
        return None
    if not isinstance(entry, str):
        return None
    s = entry.strip()
    if s in ids:
        return ids[s]
    if s.isdigit():
        return _as_label(int(s), labels, ids)
    m = _LEADING_LABEL.match(s)
    if m and m.group(1).upper() in labels:
        return m.group(1).upper()
    return None


def _first(obj: Mapping[str, Any], keys: Sequence[str], kind: type) -> Any:
    for k in keys:
        v = obj.get(k)
        if isinstance(v, kind):
            return v
    return None


def parse_ranking(
    text: str, labels: Sequence[str], ids: Mapping[str, str] | None = None
) -> ParsedRanking:
    """Read labels (and rationale, reasons) from a model answer. `ids` maps product ids to
    labels so an answer naming ids still counts. Raises UnparseableOutput if nothing usable."""
    ids = ids or {}
    if not isinstance(text, str) or not text.strip():
        raise UnparseableOutput("empty answer")
    obj, repaired = extract_json_object(text)
    entries: list[Any] = []
    rationale = reasons_raw = None
    if obj is not None:
        ranking = _first(obj, ("ranking", "order", "ranked", "rank"), list)
        if ranking is None:
            ranking = _first(obj, ("ranking", "order"), str)  # "B, A, C"
            ranking = re.split(r"[,\s>]+", ranking) if ranking else None
        entries = list(ranking or [])
        rationale = _first(obj, ("rationale", "why", "reasoning", "explanation"), str)
        reasons_raw = _first(obj, ("reasons", "why", "explanations"), dict)
        if reasons_raw is None:
            reasons_raw = _first(obj, ("reasons", "why"), list)
    if not entries:  # no usable JSON list: quoted labels after "ranking", if any
        seg = text[text.lower().find("ranking") :] if "ranking" in text.lower() else ""
        entries = _QUOTED_LABEL.findall(seg)
        repaired = repaired or bool(entries)
    if not entries:  # or a plain list, one label per line (small models do this)
        entries = [m.group(1) for ln in text.splitlines() if (m := _LINE_LABEL.match(ln))]
        repaired = repaired or bool(entries)

    out: list[str] = []
    dropped: list[str] = []
    for e in entries:
        label = _as_label(e, labels, ids)
        if label is None or label in out:
            dropped.append(str(e)[:40])
        else:
            out.append(label)
    if not out:
        raise UnparseableOutput(f"no candidate label in the answer: {text[:120]!r}")

    reasons: dict[str, str] = {}
    pairs: list[tuple[Any, Any]] = []
    if isinstance(reasons_raw, dict):
        pairs = list(reasons_raw.items())
    elif isinstance(reasons_raw, list):  # [{"label": "B", "reason": "..."}]
        pairs = [
            (r, _first(r, ("reason", "why", "text"), str))
            for r in reasons_raw
            if isinstance(r, dict)
        ]
    for key, value in pairs:
        label = _as_label(key, labels, ids)
        reason = clean_text(value, MAX_REASON_CHARS)
        if label is not None and reason and label not in reasons:
            reasons[label] = reason
    return ParsedRanking(
        labels=out,
        rationale=clean_text(rationale, MAX_RATIONALE_CHARS),
        reasons=reasons,
        dropped=dropped,
        repaired=repaired,
    )
