"""Request and response models of the HTTP API (the OpenAPI document is built from these).

Catalogue shapes (Product, Interaction) are reused from service.catalog.models; everything
here adds API limits (list sizes, text lengths, k ≤ 100) and response envelopes.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from service.application import Appended, Page, Scored, Similar, Upserted
from service.assistant.store import StoredMessage
from service.catalog.models import ID_PATTERN, Interaction, Product
from service.copy.store import CopyFilter
from service.copy.tasks import (
    CopyOptions,
    CopyResult,
    HeadlineRequest,
    HeadlineResult,
    JobStatus,
    ProductTask,
)
from service.recommend import ListHeadline, Recommendation, RecommendedItem
from service.retrieval.filters import Filters
from service.vocab import CopyTask, Language, RerankMode

# -- limits -------------------------------------------------------------------------------
MAX_K = 100
MAX_QUERY_CHARS = 500
MAX_HISTORY = 200
MAX_UPSERT = 1000
MAX_INTERACTIONS = 5000
MAX_PAGE = 200
MAX_EXCLUDE = 500

ProductId = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
ShortText = Annotated[str, StringConstraints(max_length=128)]


class _Strict(BaseModel):
    # Unknown fields are an error, not silently ignored: a typo ("rerank_mode") is named.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


# -- errors -------------------------------------------------------------------------------
class FieldError(BaseModel):
    field: str = Field(description="Dotted path of the field, e.g. products[3].price")
    problem: str


class ErrorBody(BaseModel):
    code: str = Field(description="Stable machine-readable code, e.g. invalid_request")
    message: str
    fields: list[FieldError] = Field(default_factory=list)


class ErrorResponse(BaseModel):
    error: ErrorBody


# -- products -----------------------------------------------------------------------------
# Items are validated one by one in the route (bad ones are reported, good ones stored), so
# the body accepts any objects while the schema still documents the product shape.
ProductItem = Annotated[dict[str, Any], WithJsonSchema(Product.model_json_schema())]


class ProductsUpsert(_Strict):
    products: list[ProductItem] = Field(min_length=1, max_length=MAX_UPSERT)


class ItemError(BaseModel):
    index: int = Field(description="Position of the item in the request list")
    id: str | None = None
    fields: list[FieldError]


class IndexReportOut(BaseModel):
    total: int
    encoded: int
    removed: int
    model_calls: int


class UpsertResult(BaseModel):
    received: int
    inserted: int
    updated: int
    unchanged: int
    errors: list[ItemError] = Field(
        default_factory=list, description="Items that were not stored, and why"
    )
    index: IndexReportOut | None = None

    @classmethod
    def from_domain(cls, u: Upserted, received: int, errors: list[ItemError]) -> UpsertResult:
        return cls(
            received=received,
            inserted=u.inserted,
            updated=u.updated,
            unchanged=u.unchanged,
            errors=errors,
            index=IndexReportOut(**u.index.as_dict()) if u.index else None,
        )


class ProductPage(BaseModel):
    items: list[Product]
    total: int | None = Field(description="All matches (None for a text search)")
    limit: int
    offset: int
    next_offset: int | None = None

    @classmethod
    def from_domain(cls, page: Page) -> ProductPage:
        return cls(**vars(page))


class ScoredProduct(BaseModel):
    product_id: str
    title: str
    category: str
    brand: str = ""
    price: float | None
    currency: str
    in_stock: bool = True
    score: float
    sources: dict[str, float] = Field(
        default_factory=dict, description="Score per retrieval source that found it"
    )

    @classmethod
    def from_domain(cls, s: Scored) -> ScoredProduct:
        # Every field but the id and the scores is the product's own, under the same name.
        shown = cls.model_fields.keys() - {"product_id", "score", "sources"}
        return cls(
            product_id=s.product.id,
            **{name: getattr(s.product, name) for name in shown},
            score=round(float(s.candidate.score), 6),
            sources=s.candidate.sources,
        )


class SimilarResponse(BaseModel):
    product_id: str
    items: list[ScoredProduct]
    timings_ms: dict[str, float] = Field(default_factory=dict)

    @classmethod
    def from_domain(cls, s: Similar) -> SimilarResponse:
        items = [ScoredProduct.from_domain(i) for i in s.items]
        return cls(product_id=s.product_id, items=items, timings_ms=s.timings_ms)


# -- interactions -------------------------------------------------------------------------
class InteractionsAppend(_Strict):
    interactions: list[Interaction] = Field(min_length=1, max_length=MAX_INTERACTIONS)


class AppendResult(BaseModel):
    received: int
    added: int = Field(description="New events (exact duplicates are skipped)")
    errors: list[ItemError] = Field(default_factory=list)

    @classmethod
    def from_domain(cls, a: Appended, events: list[Interaction]) -> AppendResult:
        problem = [FieldError(field="product_id", problem="unknown product id")]
        errors = [ItemError(index=n, id=events[n].product_id, fields=problem) for n in a.unknown]
        return cls(received=len(events), added=a.added, errors=errors)


# -- recommendations ----------------------------------------------------------------------
class FiltersIn(Filters):
    """Business filters, with API bounds on every list and string."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    categories: list[ShortText] = Field(default_factory=list, max_length=50)
    exclude_ids: list[ProductId] = Field(default_factory=list, max_length=MAX_EXCLUDE)


class RecommendationRequest(_Strict):
    user_id: Annotated[str, StringConstraints(pattern=ID_PATTERN)] | None = Field(
        default=None, description="Known user: their stored interactions are the history"
    )
    history: list[ProductId] = Field(
        default_factory=list,
        max_length=MAX_HISTORY,
        description="Explicit recent product ids, oldest first (added to the stored ones)",
    )
    query: Annotated[str, StringConstraints(max_length=MAX_QUERY_CHARS)] | None = Field(
        default=None, description="What the shopper is looking for, in words"
    )
    k: int = Field(default=10, ge=1, le=MAX_K)
    filters: FiltersIn = Field(default_factory=FiltersIn)
    rerank: RerankMode = Field(
        default=RerankMode.none,
        description="none: retrieval order; verbalizer: one LLM pass per pair; "
        "reasoning: the LLM writes a ranking with reasons",
    )
    headline: bool = Field(default=False, description="Also write a headline for the list")
    explain: bool = Field(default=False, description="Include a short 'why' per item")

    @model_validator(mode="after")
    def _something_to_go_on(self) -> RecommendationRequest:
        if not (self.user_id or self.history or (self.query and self.query.strip())):
            raise ValueError("give at least one of user_id, history or query")
        return self


class RecommendedItemOut(BaseModel):
    product_id: str
    title: str
    category: str
    price: float | None
    currency: str
    score: float = Field(description="Final score (the reranker's when one ran)")
    retrieval_score: float
    sources: dict[str, float]
    why: str | None = Field(default=None, description="Present when explain=true")
    fit: float | None = Field(default=None, description="Headline fit score, when headline=true")

    @classmethod
    def from_domain(cls, i: RecommendedItem) -> RecommendedItemOut:
        # The same fields as the domain item; the scores are rounded for the wire.
        rounded = {"score": i.score, "retrieval_score": i.retrieval_score}
        return cls(**(vars(i) | {k: round(float(v), 6) for k, v in rounded.items()}))


class HeadlineOut(BaseModel):
    text: str
    model_id: str | None = None
    template: str | None = None
    template_version: str | None = None
    flagged: bool = False
    fit: dict[str, float] = Field(default_factory=dict)

    @classmethod
    def from_domain(cls, h: ListHeadline) -> HeadlineOut:
        return cls(**vars(h))


class RecommendationResponse(BaseModel):
    request_id: str
    items: list[RecommendedItemOut]
    stages: list[str] = Field(
        description="Stages that ran, in order, e.g. retrieve, rerank:verbalizer"
    )
    rerank: RerankMode
    degraded: bool = Field(description="A model stage failed or timed out; retrieval order served")
    degraded_reason: str | None = None
    rationale: str | None = None
    headline: HeadlineOut | None = None
    model_id: str | None = None
    template: str | None = None
    template_version: str | None = None
    timings_ms: dict[str, float]

    @classmethod
    def from_domain(cls, rec: Recommendation, request_id: str) -> RecommendationResponse:
        return cls(
            request_id=request_id,
            items=[RecommendedItemOut.from_domain(i) for i in rec.items],
            stages=rec.stages,
            rerank=rec.rerank,
            degraded=rec.degraded,
            degraded_reason=rec.degraded_reason,
            rationale=rec.rationale,
            headline=HeadlineOut.from_domain(rec.headline) if rec.headline else None,
            model_id=rec.model_id,
            template=rec.template,
            template_version=rec.template_version,
            timings_ms=rec.timings_ms,
        )


# -- health -------------------------------------------------------------------------------
class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    ready: bool
    checks: dict[str, dict[str, Any]]


# -- assistant ----------------------------------------------------------------------------
CONVERSATION_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
MAX_MESSAGE_CHARS = 1000


class ChatRequest(_Strict):
    message: Annotated[str, StringConstraints(min_length=1, max_length=MAX_MESSAGE_CHARS)]
    conversation_id: Annotated[str, StringConstraints(pattern=CONVERSATION_ID_PATTERN)] | None = (
        Field(default=None, description="Continue this conversation (from a final event)")
    )
    user_id: Annotated[str, StringConstraints(pattern=ID_PATTERN)] | None = None
    filters: FiltersIn | None = None
    stream: bool = Field(default=True, description="false: one JSON answer instead of SSE")

    @model_validator(mode="after")
    def _not_blank(self) -> ChatRequest:
        if not self.message.strip():
            raise ValueError("message must not be blank")
        return self


class ProductCard(BaseModel):
    id: str
    title: str
    price: float | None = None
    currency: str = "USD"
    category: str = ""
    in_stock: bool = True
    label: int | None = Field(default=None, description="The [n] label the answer cites")


class ChatFinal(BaseModel):
    conversation_id: str
    message_id: int | None = None
    answer: str
    products: list[ProductCard] = Field(default_factory=list)
    cited: list[str] = Field(default_factory=list, description="Product ids cited in answer")
    suggested: bool = Field(default=False, description="Cards are suggestions, not citations")
    degraded: bool = False
    degraded_reason: str | None = None
    removed: list[str] = Field(default_factory=list)
    flags: list[dict[str, Any]] = Field(default_factory=list)
    query: dict[str, Any] = Field(default_factory=dict)
    model_id: str | None = None
    template: str | None = None
    template_version: str | None = None


class Conversation(BaseModel):
    id: str
    user_id: str | None = None
    title: str = ""
    created_at: str
    updated_at: str
    messages: list[StoredMessage]


# -- copy ---------------------------------------------------------------------------------
class _UtcTimes(BaseModel):
    """The stores keep naive UTC datetimes; on the wire every time carries its offset
    (RFC 3339 date-time, as the schema says)."""

    @field_validator("*", mode="after")
    @classmethod
    def _aware(cls, v: Any) -> Any:
        if isinstance(v, datetime) and v.tzinfo is None:
            return v.replace(tzinfo=UTC)
        return v


class CopyOut(CopyResult, _UtcTimes):
    """A stored text. `text` is what to show: the edit if there is one, else the generated
    text; None when the checks refused it."""

    @classmethod
    def of(cls, r: CopyResult) -> CopyOut:
        return cls.model_validate(r.model_dump())


class HeadlineWritten(HeadlineResult):
    headline: CopyOut
    variants: list[CopyOut]

    @classmethod
    def of(cls, r: HeadlineResult) -> HeadlineWritten:
        return cls.model_validate(r.model_dump())


MAX_COPY_PRODUCTS = 20
MAX_EDIT_CHARS = 5000


MAX_SEED = 2**31 - 1  # what every sampler accepts


class CopyGenerate(CopyOptions):
    """One task (summary, title or blurb) for up to 20 products, written in one model call."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    product_ids: list[ProductId] = Field(min_length=1, max_length=MAX_COPY_PRODUCTS)
    seed: int = Field(default=0, ge=0, le=MAX_SEED, description="Sampling seed of variant 1")
    regenerate: bool = Field(default=False, description="Ignore stored texts; call the model")

    @model_validator(mode="after")
    def _bounded_work(self) -> CopyGenerate:
        # One request is one model call: keep it interactive.
        if len(self.product_ids) * self.variants > MAX_COPY_PRODUCTS:
            raise ValueError(
                f"products × variants must be at most {MAX_COPY_PRODUCTS}, "
                f"got {len(self.product_ids)} × {self.variants}"
            )
        return self


class HeadlineGenerate(HeadlineRequest):
    """A theme headline for a set of products, with each product's fit to it."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    product_ids: list[ProductId] = Field(min_length=1, max_length=50)
    interests: list[ShortText] = Field(default_factory=list, max_length=10)
    seed: int = Field(default=0, ge=0, le=MAX_SEED)


class CopyGenerated(BaseModel):
    task: str
    results: list[CopyOut] = Field(description="Per product (in the order asked), per variant")


class CopyJobCreate(CopyOptions):
    """A batch job: one task over a category (or the whole catalogue), in id order."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    task: ProductTask
    seed: int = Field(default=0, ge=0, le=MAX_SEED)
    category: ShortText | None = None
    limit: int | None = Field(default=None, ge=1, le=1_000_000, description="At most this many")
    batch_size: int = Field(default=8, ge=1, le=64)


class CopyJob(JobStatus, _UtcTimes):
    progress: float = Field(description="(done + failed) / total, 0..1")
    queued: bool = Field(default=False, description="Waiting for the job runner")

    @classmethod
    def from_domain(cls, s: JobStatus, queued: bool = False) -> CopyJob:
        progress = (s.done + s.failed) / s.total if s.total else 1.0
        return cls(**s.model_dump(), progress=round(progress, 4), queued=queued)


CopyStatus = Literal["draft", "approved", "rejected"]


class CopyQuery(BaseModel):
    """GET /v1/copy's query string: the filters (none given: every text) and the page."""

    status: CopyStatus | None = None
    task: CopyTask | None = None
    product_id: str | None = Field(default=None, max_length=128)
    language: Language | None = None
    job_id: int | None = Field(default=None, ge=1, le=2**62)
    passed: bool | None = None
    limit: int = Field(default=50, ge=1, le=MAX_PAGE)
    offset: int = Field(default=0, ge=0, le=1_000_000)

    def where(self) -> CopyFilter:
        return CopyFilter(**self.model_dump(exclude={"limit", "offset"}))


class CopyPage(BaseModel):
    items: list[CopyOut]
    limit: int
    offset: int
    next_offset: int | None = None


class CopyApprove(_Strict):
    text: Annotated[str, StringConstraints(min_length=1, max_length=MAX_EDIT_CHARS)] | None = Field(
        default=None, description="Approve this edited text instead"
    )


class CopyReject(_Strict):
    reason: Annotated[str, StringConstraints(max_length=500)] = ""


class CopyEdit(_Strict):
    text: Annotated[str, StringConstraints(min_length=1, max_length=MAX_EDIT_CHARS)]

    @model_validator(mode="after")
    def _not_blank(self) -> CopyEdit:
        if not self.text.strip():
            raise ValueError("text must not be blank")
        return self
