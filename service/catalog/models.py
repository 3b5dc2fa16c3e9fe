"""Validated shapes of a product and an interaction (the ingest and API contract)."""

from __future__ import annotations

import hashlib
import json
import math
import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from service.vocab import Event

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}$"

# Bounds on free-form product data. Every reader serialises `attributes` (API pages, the
# prompt builder, the copy studio), so one product nested 300 levels deep used to break
# every page that listed it; the bounds are far above what a catalogue needs (the demo
# uses depth 2, 8 keys, 200 bytes).
MAX_JSON_DEPTH = 8  # the attributes object itself is level 1
MAX_JSON_NODES = 1_000  # keys + list items, all levels together
MAX_JSON_BYTES = 65_536  # serialised, UTF-8
MAX_KEY_CHARS = 128
MAX_STRING_CHARS = 10_000
MAX_TAGS = 100
MAX_TAG_CHARS = 128


def _loads_bounded(text: str, what: str) -> Any:
    """json.loads that fails with a ValueError (so pydantic reports a 422 naming the field),
    never with the RecursionError a 50k-deep string raises, nor on megabytes of text."""
    if len(text) > MAX_JSON_BYTES:
        raise ValueError(f"{what} JSON is {len(text):,} characters; at most {MAX_JSON_BYTES:,}")
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError(
            f"{what} JSON is nested too deeply (at most {MAX_JSON_DEPTH} levels)"
        ) from None
    except ValueError as e:  # JSONDecodeError, or an int beyond Python's digit limit
        raise ValueError(f"{what} is not valid JSON: {e}") from None


def check_json_bounds(value: Any) -> None:
    """Raise ValueError unless `value` is plain JSON within the bounds above. Iterative,
    so an already-parsed structure of any depth is refused without recursing into it."""
    stack: list[tuple[Any, int, str]] = [(value, 1, "")]
    nodes = 0
    while stack:
        v, depth, path = stack.pop()
        where = f" at {path}" if path else ""
        if isinstance(v, dict | list):
            if depth > MAX_JSON_DEPTH:
                raise ValueError(f"nested more than {MAX_JSON_DEPTH} levels deep{where}")
            nodes += len(v)
            if nodes > MAX_JSON_NODES:
                raise ValueError(f"more than {MAX_JSON_NODES:,} keys and items in all")
            if isinstance(v, dict):
                for k, child in v.items():
                    if not isinstance(k, str):
                        raise ValueError(f"keys must be strings{where}")
                    if len(k) > MAX_KEY_CHARS:
                        raise ValueError(f"a key is longer than {MAX_KEY_CHARS} characters{where}")
                    stack.append((child, depth + 1, f"{path}.{k[:40]}" if path else k[:40]))
            else:
                stack.extend((child, depth + 1, f"{path}[{i}]") for i, child in enumerate(v))
        elif isinstance(v, str):
            if len(v) > MAX_STRING_CHARS:
                raise ValueError(f"a text longer than {MAX_STRING_CHARS:,} characters{where}")
        elif isinstance(v, float):
            if not math.isfinite(v):
                raise ValueError(f"numbers must be finite (no NaN or Infinity){where}")
        elif v is not None and not isinstance(v, bool | int):
            raise ValueError(f"unsupported value of type {type(v).__name__}{where}")
    size = len(json.dumps(value, ensure_ascii=False).encode("utf-8"))
    if size > MAX_JSON_BYTES:
        raise ValueError(f"{size:,} bytes as JSON; at most {MAX_JSON_BYTES:,}")


def _blank_is_none(v: Any) -> Any:
    return None if isinstance(v, str) and not v.strip() else v


# A number that may be absent; a blank text (an empty CSV cell) counts as absent.
OptionalNumber = Annotated[float | None, BeforeValidator(_blank_is_none)]


class Product(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    id: str = Field(pattern=ID_PATTERN, description="Stable product id (letters, digits, _ . : -)")
    title: str = Field(min_length=1, max_length=512)
    description: str = Field(default="", max_length=20_000)
    category: str = Field(default="", max_length=128)
    brand: str = Field(default="", max_length=128)
    price: OptionalNumber = Field(default=None, ge=0, allow_inf_nan=False)
    currency: str = Field(default="USD", pattern=r"^[A-Z]{3}$")
    attributes: dict[str, Any] = Field(
        default_factory=dict,
        description=f"Free-form JSON object: at most {MAX_JSON_DEPTH} levels, "
        f"{MAX_JSON_NODES} keys and items, {MAX_JSON_BYTES} bytes",
    )
    tags: list[str] = Field(default_factory=list, max_length=MAX_TAGS)
    language: str = Field(default="en", pattern=r"^[a-z]{2}(-[A-Za-z]{2,4})?$")
    in_stock: bool = True

    @field_validator("attributes", mode="before")
    @classmethod
    def _attributes_from_json(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = v.strip()
            return _loads_bounded(v, "attributes") if v else {}
        return v

    @field_validator("attributes")
    @classmethod
    def _attributes_bounded(cls, v: dict[str, Any]) -> dict[str, Any]:
        check_json_bounds(v)
        return v

    @field_validator("tags", mode="before")
    @classmethod
    def _tags_from_text(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = v.strip()
            if v.startswith("["):
                return _loads_bounded(v, "tags")
            return [t.strip() for t in v.split("|" if "|" in v else ",") if t.strip()]
        return v

    @field_validator("tags")
    @classmethod
    def _tags_bounded(cls, v: list[str]) -> list[str]:
        tags = [t for t in v if t]
        long = next((t for t in tags if len(t) > MAX_TAG_CHARS), None)
        if long is not None:
            raise ValueError(f"a tag is longer than {MAX_TAG_CHARS} characters ({long[:40]!r}…)")
        return tags

    @field_validator("in_stock", mode="before")
    @classmethod
    def _bool_from_text(cls, v: Any) -> Any:
        if isinstance(v, str):
            s = v.strip().lower()
            if s in {"", "true", "1", "yes", "y"}:
                return True
            if s in {"false", "0", "no", "n"}:
                return False
        return v

    def embedding_text(self) -> str:
        """The text the encoder sees: what a shopper reads first, most important first."""
        parts = [self.title]
        if self.brand:
            parts.append(f"Brand: {self.brand}")
        if self.category:
            parts.append(f"Category: {self.category}")
        if self.description:
            parts.append(self.description)
        if self.tags:
            parts.append("Tags: " + ", ".join(self.tags))
        return "\n".join(parts)

    def content_hash(self) -> str:
        return hashlib.sha256(self.embedding_text().encode("utf-8")).hexdigest()


_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _from_unix(x: float) -> datetime:
    """Unix seconds (or milliseconds beyond 2e10, pydantic's rule) as an aware datetime;
    ValueError, not OverflowError, for NaN, Infinity or a time outside years 1-9999."""
    x = float(x)
    if not math.isfinite(x):
        raise ValueError("a Unix time must be a finite number")
    seconds = x / 1000 if abs(x) > 2e10 else x
    try:
        return _EPOCH + timedelta(seconds=seconds)
    except (OverflowError, ValueError):
        raise ValueError(f"Unix time {x:g} is outside the years 1-9999") from None


# How much each event says about interest; used for profiles and co-interaction.
EVENT_WEIGHT: dict[str, float] = {
    Event.view: 1.0,
    Event.cart: 2.0,
    Event.rating: 2.0,
    Event.purchase: 3.0,
}


class Interaction(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    user_id: str = Field(pattern=ID_PATTERN)
    product_id: str = Field(pattern=ID_PATTERN)
    event: Event = Event.view
    value: OptionalNumber = Field(default=None, allow_inf_nan=False)
    ts: datetime = Field(
        default_factory=lambda: datetime.now(UTC),
        description="ISO 8601, or Unix seconds (milliseconds when beyond 2e10, as pydantic reads)",
    )

    @field_validator("ts", mode="before")
    @classmethod
    def _ts_from_number(cls, v: Any) -> Any:
        if isinstance(v, bool):
            raise ValueError("expected a date-time or Unix seconds, not true/false")
        if isinstance(v, str) and _NUMBER.match(v.strip()):
            v = float(v)
        if isinstance(v, int | float):
            return _from_unix(v)
        return v

    @field_validator("ts")
    @classmethod
    def _ts_in_range(cls, v: datetime) -> datetime:
        # Stored as naive UTC: an offset that pushes year 1 or 9999 out of range fails here,
        # as a 422, not later in the store.
        if v.tzinfo is not None:
            try:
                v.astimezone(UTC)
            except OverflowError:
                raise ValueError(f"{v.isoformat()} is out of range in UTC") from None
        return v

    def naive_utc_ts(self) -> datetime:
        ts = self.ts
        if ts.tzinfo is not None:
            ts = ts.astimezone(UTC).replace(tzinfo=None)
        return ts
