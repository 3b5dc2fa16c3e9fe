"""One spelling per concept: the protocol models, the CLI options, the factories and the
stores all use these enums (a StrEnum member is its string, so stored rows, JSON and
prompts see plain values)."""

from __future__ import annotations

from enum import StrEnum


class RerankMode(StrEnum):
    """How the retrieval shortlist is reordered: not at all, by the label-scoring
    verbalizer (LlamaRec), or by a generated listwise ranking with reasons."""

    none = "none"
    verbalizer = "verbalizer"
    reasoning = "reasoning"


class CopyTask(StrEnum):
    """What the copy stage writes. The first three are per product; a headline is for a
    set of products."""

    summary = "summary"
    title = "title"
    blurb = "blurb"
    headline = "headline"


class ProductTask(StrEnum):
    """The copy tasks written per product (every CopyTask but the headline)."""

    summary = CopyTask.summary.value
    title = CopyTask.title.value
    blurb = CopyTask.blurb.value


class RankerLoss(StrEnum):
    """What the reranker's LoRA tuning minimises at the answer position: cross-entropy over
    the label tokens shown (what the served verbalizer reads) or over the whole vocabulary."""

    labels = "labels"
    vocab = "vocab"


class Language(StrEnum):
    en = "en"
    zh = "zh"


class Event(StrEnum):
    """An interaction's kind (ingest maps other spellings, e.g. "buy", onto these)."""

    view = "view"
    cart = "cart"
    purchase = "purchase"
    rating = "rating"


def choices(enum: type[StrEnum]) -> str:
    """ "a, b, c": for error messages that name what is allowed."""
    return ", ".join(m.value for m in enum)
