"""The application: one object, built once at API start-up (service/api/app.py's lifespan)
or once per CLI command, that builds every service and offers one method per use case.

Routes, CLI commands, benchmarks and the evaluation are thin adapters over it: they parse
their input, call one method here and convert the domain result. Bad input is refused
here, once, with a domain error naming the field (service/errors.py). Seams (an encoder,
a fusion, the writer's and the ranker's LLM) are constructor parameters.

    Application
      ├─ engine: Recsmith       catalogue store, encoder, dense + BM25 indexes, retriever
      ├─ index: IndexState      RW lock: syncs exclusive, retrieval shared; staleness
      ├─ artefacts: Artefacts   fusion, SASRec source, reranker adapter (loaded once)
      ├─ writer: CopyWriter     copy and headlines, over the copy store
      ├─ jobs: JobRunner        copy batch jobs, one at a time
      └─ assistant              the chat assistant (built on first use: LangChain)
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Unpack

from service.artefacts import Artefacts
from service.catalog.ingest import IngestReport, ingest_file
from service.catalog.models import Interaction, Product
from service.config import Settings, get_settings
from service.copy import batch
from service.copy.store import (
    CopyCheckFailed,
    CopyFilter,
    CopyNotFound,
    CopyStore,
    is_unsafe,
    to_result,
)
from service.copy.tasks import (
    CopyOptions,
    CopyResult,
    HeadlineRequest,
    HeadlineResult,
    JobStatus,
)
from service.copy.writer import CopyWriter
from service.errors import Invalid, NotFound, TooBusy
from service.index_state import IndexState
from service.jobs import JobRunner
from service.llm.base import LLM
from service.llm.log import log_context, prune_llm_calls
from service.ranking.common import call_with_budget
from service.recommend import (
    ListHeadline,
    Recommendation,
    default_ranker_llm,
    public_reason,
    rank_shortlist,
    shortlist,
    source_reason,
)
from service.recsmith import Recsmith
from service.retrieval.encoder import Encoder
from service.retrieval.filters import Filters
from service.retrieval.fusion import Fusion
from service.retrieval.indexer import IndexReport
from service.retrieval.retriever import Candidate, RetrievalRequest
from service.vocab import RerankMode

if TYPE_CHECKING:  # the assistant module loads LangChain: imported where first used
    from service.assistant.chat import TurnOptions

logger = logging.getLogger("service.application")

# Search pages come from one ranked shortlist; the retriever returns at most this many.
MAX_SEARCH_DEPTH = 500


@dataclass
class Page:
    """A page of products: the catalogue in id order, or search results in rank order."""

    items: list[Product]
    total: int | None
    limit: int
    offset: int
    next_offset: int | None = None


@dataclass
class Scored:
    product: Product
    candidate: Candidate


@dataclass
class Similar:
    product_id: str
    items: list[Scored]
    timings_ms: dict[str, float] = field(default_factory=dict)


@dataclass
class Upserted:
    inserted: int
    updated: int
    unchanged: int
    index: IndexReport | None


@dataclass
class Appended:
    added: int
    unknown: list[int]  # positions of events for products the catalogue does not hold


@dataclass
class CopyJobStarted:
    job: JobStatus
    reused: bool  # the identical job already queued or running
    queued: bool  # handed to this process's job runner


class LlmWarm:
    """Loads the configured LLM once, off the request path, and remembers how it went."""

    def __init__(self, load: Callable[[], LLM]) -> None:
        self._load = load
        self.status = "loading"
        self.error: str | None = None
        self.llm: LLM | None = None
        self.thread = threading.Thread(target=self._run, name="llm-warm", daemon=True)

    def start(self) -> LlmWarm:
        self.thread.start()
        return self

    def _run(self) -> None:
        try:
            self.llm = self._load()
            self.status = "ready"
        except Exception as e:  # noqa: BLE001 - reported by /readyz; requests degrade
            self.error = f"{type(e).__name__}: {e}"[:500]
            self.status = "failed"
            logger.warning("LLM did not load: %s", self.error)


class Application:
    def __init__(
        self,
        settings: Settings | None = None,
        *,
        encoder: Encoder | None = None,
        fusion: Fusion | None = None,
        writer_llm: LLM | None = None,
        ranker_llm: LLM | None = None,
    ) -> None:
        self.settings = settings or get_settings()
        self.artefacts = Artefacts(self.settings)
        self.engine = Recsmith(
            self.settings, encoder=encoder, fusion=fusion, artefacts=self.artefacts
        )
        self.catalog = self.engine.store
        self.copies = CopyStore(self.catalog.engine)
        self.index = IndexState(self.engine)
        self._writer_llm = writer_llm
        self._ranker_llm = ranker_llm
        self.writer = self._new_writer()
        self.jobs = JobRunner(self.settings, self._new_writer)
        self.llm_warm: LlmWarm | None = None
        self._assistant: Any = None
        self._lock = threading.Lock()

    # -- parts ------------------------------------------------------------------------------
    def _new_writer(self) -> CopyWriter:
        # One per job too: a job's writer must not share state with interactive requests.
        return CopyWriter(
            self.settings, llm=self._writer_llm, catalog=self.catalog, store=self.copies
        )

    def new_writer(self) -> CopyWriter:
        """A writer of its own (a copy worker's batch loop)."""
        return self._new_writer()

    def llm(self) -> LLM:
        """The writer's model (copy, headlines, chat): the seam, else the configured one."""
        return self._writer_llm if self._writer_llm is not None else self.engine.llm()

    def ranker_llm(self, rerank: str) -> LLM:
        """The reranker's model: the seam, else the configured one (with the LoRA adapter
        for the verbalizer when one is saved)."""
        if self._ranker_llm is not None:
            return self._ranker_llm
        return default_ranker_llm(self.engine, rerank)

    @property
    def assistant(self) -> Any:  # service.assistant.chat.Assistant
        with self._lock:
            if self._assistant is None:
                # lazy: LangChain (service.assistant.chat) adds ~0.9 s to every command's
                # start-up (eval/bench_startup.py); only chat needs it
                from service.assistant.chat import Assistant

                self._assistant = Assistant(self.engine, self._writer_llm)
            return self._assistant

    @property
    def encoder_loaded(self) -> Encoder | None:
        """The encoder when it is loaded (never loads it: for readiness checks)."""
        return self.engine.__dict__.get("encoder")

    # -- life cycle (the API's start-up and shutdown) ---------------------------------------
    def start(self) -> IndexReport:
        """Warm the encoder, bring the indexes in step, prune old LLM call logs, resume the
        copy jobs a dead process left behind and start loading the LLM in the background."""
        self.engine.encoder.encode(["warm up"])  # loads the weights and runs one batch
        report = self.index.sync()
        logger.info("index in step: %s", report.as_dict())
        try:  # shoppers' prompts are kept llm_log_retention_days, no longer
            prune_llm_calls(self.settings)
        except Exception:  # noqa: BLE001 - a log that cannot be pruned must not stop the API
            logger.warning("could not prune llm_calls", exc_info=True)
        self.llm_warm = LlmWarm(self.llm).start()
        self.resume_copy_jobs()
        return report

    def resume_copy_jobs(self) -> list[int]:
        """Copy jobs a dead process left running or queued; never fails the start-up."""
        try:
            return self.jobs.resume_orphans()
        except Exception:  # noqa: BLE001 - a job left behind must not stop the API starting
            logger.warning("could not resume copy jobs", exc_info=True)
            return []

    def close(self, timeout_s: float = 30.0) -> None:
        """Stop batch jobs between batches; they resume when the service restarts."""
        self.jobs.shutdown(timeout_s)

    # -- the index ----------------------------------------------------------------------------
    def sync_index(
        self,
        progress: Callable[[int], None] | None = None,
        on_total: Callable[[int], None] | None = None,
    ) -> IndexReport:
        return self.index.sync(progress, on_total)

    def ingest(self, path: str | Path, kind: str, **options: Any) -> IngestReport:
        """Load a products or interactions file into the catalogue (not indexed yet)."""
        return ingest_file(self.catalog, path, kind, **options)  # type: ignore[arg-type]

    # -- recommendations --------------------------------------------------------------------
    def recommend(
        self,
        *,
        user_id: str | None = None,
        history: list[str] | None = None,
        query: str | None = None,
        k: int = 10,
        filters: Filters | None = None,
        rerank: str = RerankMode.none,
        headline: bool = False,
        explain: bool = False,
        request_id: str = "",
    ) -> Recommendation:
        """retrieve → rerank → headline → explain, each model stage within its budget: a
        failed or slow one is reported in degraded_reason, the list is still served."""
        s = self.settings
        t0 = time.perf_counter()
        query = query.strip() if query else None
        # The read lock covers retrieval only: a model stage holding it would make an index
        # writer wait, and every reader queue behind that writer, for as long as it runs.
        with self.index.reading() as rs:
            sl = shortlist(rs, user_id=user_id, history=history, query=query, k=k,
                           filters=filters)  # fmt: skip
        with log_context(request_id=request_id, route="recommendations"):
            rec = rank_shortlist(self.engine, sl, rerank, s.rerank_timeout_s, self.ranker_llm)
        reasons = [rec.degraded_reason] if rec.degraded else []
        if rec.degraded:
            logger.info("recommendations degraded [request %s]: %s", request_id,
                        rec.degraded_reason)  # fmt: skip
        if headline and rec.items:
            t1 = time.perf_counter()
            try:
                # In a worker thread: past the budget the list is served without the
                # headline, and the model call finishes (or fails) on its own.
                with log_context(request_id=request_id, route="recommendations"):
                    rec.headline = call_with_budget(
                        lambda: self._list_headline(rec, user_id, query), s.headline_timeout_s
                    )
                rec.stages.append("headline")
            except Exception as e:  # noqa: BLE001 - the list is served without it
                raw = f"{type(e).__name__}: {e}"
                logger.warning("headline failed [request %s]: %s", request_id, raw)
                reasons.append(public_reason("headline", raw))
                rec.degraded_stages.append("headline")
            rec.timings_ms["headline"] = round((time.perf_counter() - t1) * 1000, 2)
        fit = rec.headline.fit if rec.headline else {}
        for item in rec.items:
            item.why = (item.why or source_reason(item.sources)) if explain else None
            item.fit = fit.get(item.product_id)
        if explain:
            rec.stages.append("explain")
        else:
            rec.rationale = None
        rec.degraded = bool(reasons)
        rec.degraded_reason = "; ".join(r for r in reasons if r) or None
        rec.timings_ms["total"] = round((time.perf_counter() - t0) * 1000, 2)
        return rec

    def _list_headline(
        self, rec: Recommendation, user_id: str | None, query: str | None
    ) -> ListHeadline:
        """The copy stage writes the headline; each item gets its fit to it."""
        user = user_id if user_id and self.catalog.has_user(user_id) else None
        req = HeadlineRequest(
            product_ids=[i.product_id for i in rec.items][:50],
            user_id=user,
            interests=[query[:128]] if query else [],
        )
        result = self.writer.headline(req)
        h = result.headline
        return ListHeadline(
            text=h.text or "",
            model_id=h.model_id,
            template=h.template,
            template_version=h.template_version,
            flagged=not h.passed,
            fit={i.product_id: i.score for i in result.items},
        )

    # -- the catalogue ----------------------------------------------------------------------
    def search(self, query: str, k: int = 10, filters: Filters | None = None) -> list[Scored]:
        """Dense + BM25 search, the best k (with the filters)."""
        with self.index.reading() as rs:
            cands = rs.candidates(RetrievalRequest(query=query, k=k, filters=filters or Filters()))
        return self._scored(cands)

    def _scored(self, cands: list[Candidate]) -> list[Scored]:
        products = self.catalog.get_products([c.product_id for c in cands])
        # A product deleted since it was indexed is left out.
        return [Scored(products[c.product_id], c) for c in cands if c.product_id in products]

    def search_page(
        self, query: str, category: str | None = None, limit: int = 20, offset: int = 0
    ) -> Page:
        """Dense + BM25 search, paged from one ranked shortlist (at most 500 deep)."""
        if offset >= MAX_SEARCH_DEPTH:
            return Page(items=[], total=None, limit=limit, offset=offset)
        depth = min(offset + limit, MAX_SEARCH_DEPTH)
        filters = Filters(categories=[category] if category else [], exclude_purchased=False)
        with self.index.reading() as rs:
            cands = rs.candidates(RetrievalRequest(query=query, k=depth, filters=filters))
            page_ids = [c.product_id for c in cands[offset : offset + limit]]
            found = self.catalog.get_products(page_ids)
        more = len(cands) == depth and depth < MAX_SEARCH_DEPTH
        return Page(
            items=[found[i] for i in page_ids if i in found],
            total=None,
            limit=limit,
            offset=offset,
            next_offset=offset + limit if more else None,
        )

    def list_products(self, category: str | None = None, limit: int = 20, offset: int = 0) -> Page:
        total = self.catalog.count_products() if not category else None
        items = list(self.catalog.iter_products(category=category, limit=limit + 1, offset=offset))
        more = len(items) > limit
        return Page(
            items=items[:limit],
            total=total,
            limit=limit,
            offset=offset,
            next_offset=offset + limit if more else None,
        )

    def similar(
        self,
        product_id: str,
        k: int = 10,
        *,
        categories: list[str] | None = None,
        in_stock_only: bool = False,
    ) -> Similar:
        """Content similarity fused with co-interaction (bought/viewed together)."""
        t0 = time.perf_counter()
        filters = Filters(
            categories=categories or [],
            in_stock_only=in_stock_only,
            exclude_purchased=False,
        )
        with self.index.reading() as rs:
            req = RetrievalRequest(seed_product_id=product_id, k=k, filters=filters)
            items = self._scored(rs.candidates(req))
        ms = round((time.perf_counter() - t0) * 1000, 2)
        return Similar(product_id=product_id, items=items, timings_ms={"retrieve": ms})

    def get_product(self, product_id: str) -> Product:
        return self.catalog.get_product(product_id)

    def upsert_products(self, products: list[Product]) -> Upserted:
        """Store (and index at once, so a search right after sees them) valid products."""
        if not products:
            raise Invalid("no product in the request is valid")
        # One transaction for the rows, the change log and (pgvector) the vectors.
        inserted, updated, _changed, report = self.index.write_products(products)
        unique = len({p.id for p in products})
        return Upserted(inserted, updated, unique - inserted - updated, report)

    def delete_product(self, product_id: str) -> None:
        self.catalog.delete_product(product_id)
        self.index.apply_changes()

    def add_interactions(self, events: list[Interaction]) -> Appended:
        """Events for products the catalogue holds are appended (exact duplicates skipped);
        the others are reported by position. None for a known product: Invalid."""
        known = set(self.catalog.get_products({e.product_id for e in events}))
        unknown = [n for n, e in enumerate(events) if e.product_id not in known]
        if len(unknown) == len(events):
            raise Invalid(
                "no event is for a known product",
                fields=[(f"interactions[{n}].product_id", "unknown product id")
                        for n in unknown[:50]],
            )  # fmt: skip
        added = self.catalog.add_interactions([e for e in events if e.product_id in known])
        if added:
            self.index.mark_stale()  # co-interaction graph: rebuilt by the next read (throttled)
        return Appended(added, unknown)

    # -- copy ---------------------------------------------------------------------------------
    def _products(self, ids: list[str]) -> dict[str, Product]:
        """The products, or NotFound naming each unknown id's position."""
        found = self.catalog.get_products(ids)
        missing = [(n, p) for n, p in enumerate(ids) if p not in found]
        if missing:
            raise NotFound(
                f"unknown product id(s): {', '.join(p for _, p in missing[:5])}",
                fields=[(f"product_ids[{n}]", "unknown product id") for n, _ in missing[:20]],
            )
        return found

    def write_copy(
        self,
        task: str,
        product_ids: list[str],
        options: CopyOptions | None = None,
        regenerate: bool = False,
    ) -> list[list[CopyResult]]:
        """Per product (in the order asked, duplicates once), per variant."""
        ids = list(dict.fromkeys(product_ids))
        products = self._products(ids)
        return self.writer.generate_for_products(
            task, [products[i] for i in ids], options or CopyOptions(), regenerate=regenerate
        )

    def headline(self, req: HeadlineRequest) -> HeadlineResult:
        self._products(req.product_ids)
        if req.user_id and not req.interests and not self.catalog.has_user(req.user_id):
            raise NotFound(f"unknown user id {req.user_id!r}", fields=[("user_id", "unknown")])
        return self.writer.headline(req)

    def start_copy_job(
        self,
        task: str,
        options: CopyOptions | None = None,
        *,
        category: str | None = None,
        limit: int | None = None,
        batch_size: int = 8,
    ) -> CopyJobStarted:
        try:
            job, reused = batch.submit_job(task, options or CopyOptions(), category=category,
                                           limit=limit, batch_size=batch_size,
                                           settings=self.settings)  # fmt: skip
        except batch.TooManyJobs as e:
            raise TooBusy(str(e)) from None
        queued = job.status == "running" and not reused
        if queued:
            self.jobs.submit(job.id)
        return CopyJobStarted(job, reused, queued)

    def list_copy_jobs(self, limit: int = 20) -> list[JobStatus]:
        return batch.list_jobs(limit=limit, settings=self.settings)

    def get_copy_job(self, job_id: int) -> JobStatus:
        try:
            return batch.get_job(job_id, settings=self.settings)
        except batch.JobNotFound as e:
            raise NotFound(str(e), fields=[("job_id", "unknown job")]) from None

    def cancel_copy_job(self, job_id: int) -> JobStatus:
        try:
            return batch.cancel_job(job_id, settings=self.settings)
        except batch.JobNotFound as e:
            raise NotFound(str(e), fields=[("job_id", "unknown job")]) from None

    def list_copy(
        self, where: CopyFilter | None = None, *, limit: int = 50, offset: int = 0
    ) -> list[CopyResult]:
        """Newest first."""
        return self.copies.list(where, limit=limit, offset=offset)

    def export_copy(
        self, where: CopyFilter | None = None, *, include_unsafe: bool = False
    ) -> Iterator[CopyResult]:
        """Every matching text, oldest first; texts repeating an instruction planted in the
        product data are left out unless asked for."""
        for row in self.copies.iter_all(where):
            if is_unsafe(row) and not include_unsafe:
                continue
            yield to_result(row)

    def get_copy(self, copy_id: int) -> CopyResult:
        with _copy_id():
            return to_result(self.copies.get(copy_id))

    def approve_copy(self, copy_id: int, text: str | None = None) -> CopyResult:
        """Approve, optionally with an edit; an edit that fails a check is Invalid."""
        text = text.strip() if text and text.strip() else None
        with _copy_id():
            try:
                return self.writer.approve(copy_id, text)
            except CopyCheckFailed as e:
                fields = [("text", f"{n}: {c.get('detail') or 'failed'}")
                          for n, c in e.failed.items()]  # fmt: skip
                raise Invalid(str(e), fields=fields) from None

    def reject_copy(self, copy_id: int, reason: str = "") -> CopyResult:
        with _copy_id():
            return self.copies.reject(copy_id, reason)

    def edit_copy(self, copy_id: int, text: str) -> CopyResult:
        with _copy_id():
            try:
                return self.writer.edit(copy_id, text)
            except ValueError as e:
                raise Invalid(str(e), fields=[("text", str(e))]) from None

    # -- the assistant --------------------------------------------------------------------
    def chat(
        self, message: str, conversation_id: str | None = None, **options: Unpack[TurnOptions]
    ) -> Iterator[dict[str, Any]]:
        """One assistant turn as events (token…, final). Retrieval and the conversation
        lookup run before this returns, so their errors come before the first event."""
        with self.index.reading():
            try:
                return self.assistant.stream(message, conversation_id, **options)
            except NotFound:
                raise
            except ValueError as e:
                raise Invalid(str(e), fields=[("message", str(e))]) from None

    def conversation(self, conversation_id: str) -> dict[str, Any]:
        return self.assistant.conversation(conversation_id)


@contextmanager
def _copy_id() -> Iterator[None]:
    """CopyNotFound → NotFound naming copy_id."""
    try:
        yield
    except CopyNotFound as e:
        raise NotFound(str(e), fields=[("copy_id", "unknown copy id")]) from None
