"""The retrieval engine: the catalogue store, encoder, indexes and retriever, wired from
settings (heavy parts load on first use). service/application.py builds one per process
and composes it with the model stages; trained artefacts come through service/artefacts.py.
Seams (an encoder, a fusion, the artefact loader) are constructor parameters."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from functools import cached_property

import numpy as np

from service.artefacts import Artefacts
from service.catalog.store import CatalogStore, NotFound
from service.config import Settings, get_settings
from service.llm.base import LLM
from service.llm.factory import Role, get_llm
from service.retrieval.cooccur import CoInteraction
from service.retrieval.encoder import Encoder, encoder_for
from service.retrieval.fusion import Fusion, FusionStatus
from service.retrieval.indexer import Indexer, IndexReport
from service.retrieval.lexical import LexicalIndex
from service.retrieval.retriever import Candidate, RetrievalRequest, Retriever
from service.retrieval.sequential import SequentialScorer
from service.retrieval.vector_index import MemoryVectorIndex, VectorIndex
from service.retrieval.vector_index_pg import PgVectorIndex


class Recsmith:
    def __init__(
        self,
        settings: Settings | None = None,
        *,
        encoder: Encoder | None = None,
        fusion: Fusion | None = None,
        artefacts: Artefacts | None = None,
    ) -> None:
        self.settings = settings or get_settings()
        self.settings.ensure_dirs()
        self.store = CatalogStore(self.settings.db_url)
        self.artefacts = artefacts or Artefacts(self.settings)
        self._lock = threading.RLock()
        self._co: CoInteraction | None = None
        self._synced = False
        if encoder is not None:  # a caller's encoder (e.g. one sharing an embedding cache)
            self.__dict__["encoder"] = encoder
        self._fusion = fusion  # a caller's fusion replaces the fitted artefact
        # How the retriever fuses its sources; strict settings fail here, at start-up.
        self.fusion_status: FusionStatus | None = None
        if fusion is None and (self.settings.fusion_strict or self.artefacts.strict):
            self.artefacts.fusion()

    # -- parts, loaded on first use ---------------------------------------------------
    @cached_property
    def encoder(self) -> Encoder:
        return encoder_for(self.settings)

    @property
    def index_dir(self):  # noqa: ANN201
        return self.settings.data_dir / "index"

    @cached_property
    def dense(self) -> VectorIndex:
        """The vector index the settings choose (service/retrieval/vector_index.py)."""
        s = self.settings
        if s.vector_index == "pgvector":
            return PgVectorIndex(
                self.store.engine,
                self.encoder.dim,
                s.pgvector_ef_search,
                s.pgvector_exact_below,
                iterative=s.pgvector_iterative_scan,
            )
        return MemoryVectorIndex.load(
            self.index_dir,
            self.encoder.dim,
            self.encoder.model_id,
            kind=s.index_kind,
            faiss_threshold=s.index_faiss_threshold,
            ivf_threshold=s.index_ivf_threshold,
            ivf_nprobe=s.index_ivf_nprobe,
        )

    @cached_property
    def lexical(self) -> LexicalIndex:
        return LexicalIndex(self.index_dir / "lexical.sqlite")

    @cached_property
    def indexer(self) -> Indexer:
        return Indexer(
            self.store, self.encoder, self.dense, self.lexical, self.index_dir, margin=self._margin
        )

    @property
    def _margin(self) -> int:
        # PostgreSQL may commit ids out of order: re-read a few below the newest applied.
        return 64 if self.store.engine.dialect.name == "postgresql" else 0

    @property
    def co(self) -> CoInteraction:
        if self._co is None:
            self._co = CoInteraction.from_store(self.store, margin=self._margin)
        return self._co

    def sequential_model(self) -> SequentialScorer | None:  # optional trained source
        return self.artefacts.sequential(self.store)

    @cached_property
    def retriever(self) -> Retriever:
        if self._fusion is not None:
            fusion = self._fusion
            self.fusion_status = FusionStatus("fitted", "given by the caller", None)
        else:
            fusion, self.fusion_status = self.artefacts.fusion(self.encoder.model_id)
        return Retriever(
            lambda texts: self.encoder.encode_queries(texts),  # e5: "query: " prefix
            self.dense,
            self.lexical,
            co=self.co,
            sequential=self.sequential_model(),
            half_life=self.settings.history_recency_half_life,
            fusion=fusion,
        )

    # -- operations -------------------------------------------------------------------
    def sync_index(self, progress=None, on_total=None):  # noqa: ANN001, ANN201
        with self._lock:
            report = self.indexer.sync(progress, on_total)
            self._co = None  # the interaction log may have grown
            if "retriever" in self.__dict__:
                self.retriever.co = self.co
            self._synced = True
            return report

    def apply_changes(self, fresh: Mapping[str, np.ndarray] | None = None) -> IndexReport:
        """Index only the products written or deleted since the version applied (by this
        process or another): the incremental path of a product write (`fresh`: its vectors,
        prepared before it; Indexer.prepare)."""
        with self._lock:
            if not self._synced:
                return self.sync_index()
            report = self.indexer.apply_changes(fresh)
            if report is None:  # the change log was pruned past our version
                return self.sync_index()
            if report.removed_ids and self._co is not None:
                self._co.forget_products(self.store, report.removed_ids)
            return report

    def apply_events(self) -> int:
        """Bring co-interaction in step with the events logged since (any process's);
        returns the users touched."""
        with self._lock:
            if self._co is None:
                return 0  # built from the whole log on first use anyway
            return self._co.apply_events(self.store, self._margin)

    def versions(self) -> tuple[int, int]:
        """(catalogue version, event version) this process has applied."""
        co = self._co
        return self.indexer.seq, co.event_id if co is not None else 0

    @property
    def synced(self) -> bool:
        return self._synced

    def ensure_ready(self) -> None:
        """Indexes in step with the store (cheap when nothing changed)."""
        if not self._synced:
            self.sync_index()

    def history(self, user_id: str, limit: int = 200) -> list[tuple[str, str]]:
        return [(pid, event) for pid, event, _ts in self.store.user_history(user_id, limit)]

    def candidates(self, req: RetrievalRequest) -> list[Candidate]:
        self.ensure_ready()
        self.check_ids(req)
        history: list[tuple[str, str]] = []
        purchased: set[str] = set()
        if req.user_id:
            history = self.history(req.user_id)
            purchased = self.store.purchased(req.user_id)
        if req.history:
            history = history + [(p, "view") for p in req.history]
        return self.retriever.candidates(req, history=history, purchased=purchased)

    def check_ids(self, req: RetrievalRequest) -> None:
        """The one check of a request's ids: an unknown one is the caller's mistake (a
        NotFound naming the field), not a degraded list. A user without interactions is
        fine when a query, history or seed gives retrieval something to go on."""
        if req.history:
            known = self.dense.known(req.history)
            missing = [(n, p) for n, p in enumerate(req.history) if p not in known]
            if missing:
                raise NotFound(
                    f"unknown product id(s) in history: {', '.join(p for _, p in missing[:5])}",
                    fields=[(f"history[{n}]", "unknown product id") for n, _ in missing[:20]],
                )
        cold = not (req.history or req.query or req.seed_product_id)
        if req.user_id and cold and not self.store.has_user(req.user_id):
            raise NotFound(
                f"unknown user id {req.user_id!r} (no interactions stored); "
                "send a query or history for a new user",
                fields=[("user_id", "unknown user")],
            )
        if req.seed_product_id and req.seed_product_id not in self.dense:
            raise NotFound(f"unknown product id {req.seed_product_id!r}")

    def llm(self, role: Role = "writer") -> LLM:
        """The configured model of a role (loaded on first use): the writer (copy, chat,
        headlines) or the ranker (the verbalizer's base model)."""
        return get_llm(self.settings, role=role)
