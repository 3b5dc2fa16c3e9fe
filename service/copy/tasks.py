"""Request and result models of the copy tasks (the API contract), and per-task defaults."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from service.catalog.models import ID_PATTERN
from service.vocab import CopyTask, Language, ProductTask

# The spellings live in service/vocab.py; these names are kept for the copy stage's readers.
Task = CopyTask
Length = Literal["short", "medium", "long"]
LANGUAGES: tuple[str, ...] = tuple(m.value for m in Language)


def normalise_language(value: str | None) -> str | None:
    """'zh-CN' / 'ZH' → 'zh'; None stays None. Unsupported languages raise ValueError."""
    if value is None or value == "":
        return None
    base = value.strip().lower().replace("_", "-").split("-")[0]
    if base not in LANGUAGES:
        raise ValueError(f"unsupported language {value!r}: use one of {', '.join(LANGUAGES)}")
    return base


# A requested language in any common spelling ('zh-CN', 'ZH'), read as the Language it names.
LanguageIn = Annotated[
    Language | None, BeforeValidator(lambda v: normalise_language(v) if isinstance(v, str) else v)
]


@dataclass(frozen=True)
class TaskSpec:
    """Defaults of one task: length limits (words for English, characters for Chinese),
    how many tokens to let the model write, and which checks apply."""

    max_words: int
    max_chars: int
    max_tokens: int
    single_line: bool = False
    topic_check: bool = True


SPECS: dict[str, TaskSpec] = {
    "summary": TaskSpec(max_words=40, max_chars=80, max_tokens=80),
    "title": TaskSpec(max_words=12, max_chars=30, max_tokens=32, single_line=True),
    "blurb": TaskSpec(max_words=50, max_chars=100, max_tokens=100),
    "headline": TaskSpec(
        max_words=8, max_chars=16, max_tokens=24, single_line=True, topic_check=False
    ),
}
# A blurb's `length` picks its word budget (and characters for Chinese, about twice as many).
BLURB_WORDS: dict[str, int] = {"short": 25, "medium": 50, "long": 80}


class CopyOptions(BaseModel):
    """Knobs shared by every task. None means the task's default."""

    model_config = ConfigDict(extra="forbid")

    language: LanguageIn = Field(
        default=None, description="Output language; default the product's language"
    )
    max_words: int | None = Field(default=None, ge=1, le=300, description="English word limit")
    max_chars: int | None = Field(default=None, ge=1, le=600, description="Chinese character limit")
    tone: str = Field(default="friendly", max_length=40, description="Blurb tone, e.g. playful")
    length: Length = Field(default="medium", description="Blurb length")
    keywords: list[str] = Field(
        default_factory=list, max_length=10, description="Blurb: must include"
    )
    variants: int = Field(default=1, ge=1, le=8, description="How many alternative texts")
    seed: int = Field(default=0, ge=0, description="Sampling seed of the first variant")
    temperature: float | None = Field(
        default=None, ge=0, le=2, description="Default: greedy for one variant, 0.8 for several"
    )
    max_tokens: int | None = Field(default=None, ge=8, le=512)

    @field_validator("keywords")
    @classmethod
    def _keywords(cls, v: list[str]) -> list[str]:
        out = [" ".join(k.split()) for k in v]
        if any(not k or len(k) > 60 for k in out):
            raise ValueError("keywords must be 1-60 characters each")
        return list(dict.fromkeys(out))


class CopyRequest(CopyOptions):
    """One product, one task (summary, title or blurb), one or more variants."""

    task: ProductTask
    product_id: str = Field(pattern=ID_PATTERN)
    regenerate: bool = Field(default=False, description="Ignore a stored text; call the model")


class HeadlineRequest(BaseModel):
    """A theme headline for a set of recommended items, personalised with the user's
    recent interests (their history, or interests given explicitly)."""

    model_config = ConfigDict(extra="forbid")

    product_ids: list[str] = Field(min_length=1, max_length=50)
    user_id: str | None = Field(default=None, pattern=ID_PATTERN)
    interests: list[str] = Field(default_factory=list, max_length=10)
    language: LanguageIn = None
    max_words: int | None = Field(default=None, ge=1, le=30)
    max_chars: int | None = Field(default=None, ge=1, le=60)
    variants: int = Field(default=1, ge=1, le=8)
    seed: int = Field(default=0, ge=0)
    temperature: float | None = Field(default=None, ge=0, le=2)
    # Items whose fit (cosine of headline and item text) is below this are dropped.
    threshold: float = Field(default=0.2, ge=-1, le=1)
    regenerate: bool = False

    @field_validator("product_ids")
    @classmethod
    def _ids(cls, v: list[str]) -> list[str]:
        return list(dict.fromkeys(v))


class CheckOutcome(BaseModel):
    ok: bool
    detail: str = ""
    found: list[str] = Field(default_factory=list)


class CopyResult(BaseModel):
    """A stored text as the API returns it. `text` is what to show: the edited text if
    there is one, else the generated one; None when the text was refused."""

    id: int
    request_key: str
    task: Task
    product_id: str | None
    product_ids: list[str]
    language: str
    variant: int
    text: str | None
    generated_text: str
    edited_text: str | None = None
    status: Literal["draft", "approved", "rejected"]
    passed: bool
    refused: bool = False
    failed_checks: list[str]
    checks: dict[str, CheckOutcome]
    attempts: int
    cached: bool = False  # served from the store without a model call
    model_id: str
    backend: str
    template: str
    template_version: str
    params: dict[str, Any]
    note: str = ""
    meta: dict[str, Any] = Field(default_factory=dict)
    job_id: int | None = None
    created_at: datetime
    updated_at: datetime


class ItemFit(BaseModel):
    product_id: str
    score: float  # cosine between the headline and the item's text, in [-1, 1]
    keep: bool  # score >= threshold


class HeadlineResult(BaseModel):
    headline: CopyResult  # the first variant that passed its checks, else the first
    variants: list[CopyResult]
    items: list[ItemFit]  # in the order asked
    kept: list[str]  # ids whose fit reaches the threshold, in the order asked
    interests: list[str]  # what personalised the headline
    threshold: float


class JobStatus(BaseModel):
    id: int
    task: str
    params: dict[str, Any]
    category: str | None
    max_products: int | None
    batch_size: int
    total: int
    done: int
    failed: int
    pending: int
    status: Literal["running", "done", "cancelled", "failed"]
    cancel_requested: bool
    error: str = ""
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None = None


def token_budget(max_words: int | None, max_chars: int | None) -> int:
    """max_tokens from a length limit (2 tokens a word or character + 16), with a margin so
    an overlong text is seen whole and fails the length check rather than being cut off
    mid-sentence: English runs ~1.3 tokens a word, Chinese up to ~1.5 a character with
    these tokenisers."""
    units = max_chars if max_chars is not None else (max_words or 40)
    return max(24, min(units * 2 + 16, 512))
