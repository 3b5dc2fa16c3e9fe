"""Texts with parts, as JSON that always parses: several blurb variants in one call, and a
headline with a note per item.

The schema goes to the backend as `GenParams.json_schema`: llama.cpp turns it into a
grammar and vLLM into structured output, so their answers parse by construction; the
transformers backend decodes freely and its answer is parsed (the first JSON value in the
text). An answer that does not parse or has the wrong shape is asked again (a fresh seed),
up to `retries` times, then `StructuredOutputError`. Every part is then checked like any copy
(`checks.run_checks`), against the data of the product(s) it is about.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from service.llm.base import LLM, GenParams, Message, extract_json


class StructuredOutputError(ValueError):
    """The model's answer did not parse into the schema's shape after the retries."""


def variants_schema(n: int, max_chars: int) -> dict[str, Any]:
    """{"variants": [n strings]}."""
    text = {"type": "string", "minLength": 1, "maxLength": max_chars}
    return {
        "type": "object",
        "properties": {"variants": {"type": "array", "items": text, "minItems": n, "maxItems": n}},
        "required": ["variants"],
        "additionalProperties": False,
    }


def headline_notes_schema(n: int, headline_chars: int, note_chars: int) -> dict[str, Any]:
    """{"headline": str, "notes": [n strings, one per item in the order given]}."""
    return {
        "type": "object",
        "properties": {
            "headline": {"type": "string", "minLength": 1, "maxLength": headline_chars},
            "notes": {
                "type": "array",
                "items": {"type": "string", "minLength": 1, "maxLength": note_chars},
                "minItems": n,
                "maxItems": n,
            },
        },
        "required": ["headline", "notes"],
        "additionalProperties": False,
    }


def conforms(value: Any, schema: dict[str, Any]) -> bool:
    """The subset of JSON Schema these schemas use: object/array/string, required,
    additionalProperties false, min/max items, min/max length."""
    kind = schema.get("type")
    if kind == "object":
        if not isinstance(value, dict):
            return False
        props = schema.get("properties", {})
        if any(k not in value for k in schema.get("required", [])):
            return False
        if schema.get("additionalProperties") is False and set(value) - set(props):
            return False
        return all(conforms(value[k], s) for k, s in props.items() if k in value)
    if kind == "array":
        if not isinstance(value, list):
            return False
        if not schema.get("minItems", 0) <= len(value) <= schema.get("maxItems", len(value)):
            return False
        return all(conforms(v, schema.get("items", {})) for v in value)
    if kind == "string":
        if not isinstance(value, str):
            return False
        text = value.strip()
        return schema.get("minLength", 0) <= len(text) <= schema.get("maxLength", len(text))
    return True


def _lenient_json(text: str) -> Any | None:
    """The first JSON object in text, raw control characters allowed inside strings (a
    grammar's string rule may let a newline through; strict json refuses it)."""
    dec = json.JSONDecoder(strict=False)
    start = text.find("{")
    while start >= 0:
        try:
            return dec.raw_decode(text[start:])[0]
        except ValueError:
            start = text.find("{", start + 1)
    return None


@dataclass
class StructuredResult:
    data: dict[str, Any]
    attempts: int
    text: str  # the raw answer that parsed


def generate_json(
    llm: LLM,
    messages: Sequence[Message],
    schema: dict[str, Any],
    *,
    max_tokens: int,
    repetition_penalty: float = 1.0,
    temperature: float = 0.0,
    seed: int = 0,
    retries: int = 2,
) -> StructuredResult:
    """One JSON answer in the schema's shape, asked again while it does not parse."""
    last = ""
    for attempt in range(1 + max(retries, 0)):
        params = GenParams(
            max_tokens=max_tokens,
            json_schema=schema,
            repetition_penalty=repetition_penalty,
            temperature=temperature if attempt == 0 else max(temperature, 0.7),
            top_p=0.95 if attempt or temperature > 0 else 1.0,
            seed=seed + 1000 * attempt,
        )
        g = llm.generate([list(messages)], params)[0]
        last = g.text
        data = g.meta.get("json") if g.meta.get("structured") == "json" else None
        if data is None:
            data = extract_json(g.text) or _lenient_json(g.text)
        if conforms(data, schema):
            return StructuredResult(data=data, attempts=attempt + 1, text=g.text)
    raise StructuredOutputError(
        f"the model's answer did not parse as the requested JSON after {1 + retries} "
        f"attempts (last: {last[:120]!r})"
    )
