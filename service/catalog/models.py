"""Validated shapes of a product and an interaction (the ingest and API contract)."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}$"


class Product(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    id: str = Field(pattern=ID_PATTERN, description="Stable product id (letters, digits, _ . : -)")
    title: str = Field(min_length=1, max_length=512)
    description: str = Field(default="", max_length=20_000)
    category: str = Field(default="", max_length=128)
    brand: str = Field(default="", max_length=128)
    price: float | None = Field(default=None, ge=0)
    currency: str = Field(default="USD", pattern=r"^[A-Z]{3}$")
    attributes: dict[str, Any] = Field(default_factory=dict)
    tags: list[str] = Field(default_factory=list)
    language: str = Field(default="en", pattern=r"^[a-z]{2}(-[A-Za-z]{2,4})?$")
    in_stock: bool = True

    @field_validator("attributes", mode="before")
    @classmethod
    def _attributes_from_json(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = v.strip()
            return json.loads(v) if v else {}
        return v

    @field_validator("tags", mode="before")
    @classmethod
    def _tags_from_text(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = v.strip()
            if v.startswith("["):
                return json.loads(v)
            return [t.strip() for t in v.split("|" if "|" in v else ",") if t.strip()]
        return v

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

    @field_validator("price", mode="before")
    @classmethod
    def _empty_price(cls, v: Any) -> Any:
        return None if isinstance(v, str) and not v.strip() else v

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


class Event(StrEnum):
    view = "view"
    cart = "cart"
    purchase = "purchase"
    rating = "rating"


# How much each event says about interest; used for profiles and co-interaction.
EVENT_WEIGHT: dict[str, float] = {"view": 1.0, "cart": 2.0, "rating": 2.0, "purchase": 3.0}


class Interaction(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    user_id: str = Field(pattern=ID_PATTERN)
    product_id: str = Field(pattern=ID_PATTERN)
    event: Event = Event.view
    value: float | None = None
    ts: datetime = Field(default_factory=lambda: datetime.now(UTC))

    @field_validator("ts", mode="before")
    @classmethod
    def _ts_from_number(cls, v: Any) -> Any:
        if isinstance(v, int | float) or (isinstance(v, str) and v.strip().isdigit()):
            return datetime.fromtimestamp(float(v), UTC)
        return v

    @field_validator("value", mode="before")
    @classmethod
    def _empty_value(cls, v: Any) -> Any:
        return None if isinstance(v, str) and not v.strip() else v

    def naive_utc_ts(self) -> datetime:
        ts = self.ts
        if ts.tzinfo is not None:
            ts = ts.astimezone(UTC).replace(tzinfo=None)
        return ts
