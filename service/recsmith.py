"""The composition root: one object that wires the store, encoder, indexes and retriever
from settings. The CLI and the API both start here; heavy parts load on first use."""

from __future__ import annotations

import threading
from functools import cached_property

from service.catalog.store import CatalogStore, NotFound
from service.config import Settings, get_settings
from service.retrieval.cooccur import CoInteraction
from service.retrieval.dense import DenseIndex
from service.retrieval.encoder import Encoder, get_encoder
from service.retrieval.filters import ProductMeta
from service.retrieval.fusion import FusionStatus, load_fusion
from service.retrieval.indexer import Indexer
from service.retrieval.lexical import LexicalIndex
from service.retrieval.retriever import Candidate, RetrievalRequest, Retriever


class Recsmith:
    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()
        self.settings.ensure_dirs()
        self.store = CatalogStore(self.settings.db_url)
        self._lock = threading.RLock()
        self._co: CoInteraction | None = None
        self._synced = False
        self._verbalizer_llm = None
        # How the retriever fuses its sources; strict settings fail here, at start-up.
        self.fusion_status: FusionStatus | None = None
        if self.settings.fusion_strict:
            load_fusion(self.settings.fusion_file, strict=True)

    # -- parts, loaded on first use ---------------------------------------------------
    @cached_property
    def encoder(self) -> Encoder:
        s = self.settings
        return get_encoder(
            s.encoder_model,
            s.encoder_batch_size,
            s.encoder_max_length,
            str(s.data_dir / "cache" / "embeddings.sqlite"),
        )

    @property
    def index_dir(self):  # noqa: ANN201
        return self.settings.data_dir / "index"

    @cached_property
    def dense(self) -> DenseIndex:
        s = self.settings
        return DenseIndex.load(
            self.index_dir,
            self.encoder.dim,
            self.encoder.model_id,
            s.index_kind,
            s.index_faiss_threshold,
        )

    @cached_property
    def lexical(self) -> LexicalIndex:
        return LexicalIndex(self.index_dir / "lexical.sqlite")

    @cached_property
    def meta(self) -> ProductMeta:
        return ProductMeta()

    @cached_property
    def indexer(self) -> Indexer:
        return Indexer(
            self.store, self.encoder, self.dense, self.lexical, self.meta, self.index_dir
        )

    @property
    def co(self) -> CoInteraction:
        if self._co is None:
            self._co = CoInteraction.build(self.store.all_interactions())
        return self._co

    def sequential_model(self):  # noqa: ANN201 - optional trained retriever (issue 7)
        try:
            from service.training.sequential import load_sequential
        except ImportError:
            return None
        return load_sequential(self.settings, self.store)

    @cached_property
    def retriever(self) -> Retriever:
        s = self.settings
        fusion, self.fusion_status = load_fusion(
            s.fusion_file, s.fusion_strict, self.encoder.model_id
        )
        return Retriever(
            lambda texts: self.encoder.encode_queries(texts),  # e5: "query: " prefix
            self.dense,
            self.lexical,
            self.meta,
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

    def ensure_ready(self) -> None:
        """Indexes in step with the store (cheap when nothing changed)."""
        if not self._synced:
            self.sync_index()

    def history(self, user_id: str, limit: int = 200) -> list[tuple[str, str]]:
        return [(pid, event) for pid, event, _ts in self.store.user_history(user_id, limit)]

    def candidates(self, req: RetrievalRequest) -> list[Candidate]:
        self.ensure_ready()
        history: list[tuple[str, str]] = []
        purchased: set[str] = set()
        if req.user_id:
            cold = not (req.history or req.query or req.seed_product_id)
            if cold and not self.store.has_user(req.user_id):
                raise NotFound(f"unknown user id {req.user_id!r} (no interactions stored)")
            history = self.history(req.user_id)
            purchased = self.store.purchased(req.user_id)
        if req.history:
            unknown = [p for p in req.history if p not in self.dense.row]
            if unknown:
                raise NotFound(f"unknown product id(s) in history: {', '.join(unknown[:5])}")
            history = history + [(p, "view") for p in req.history]
        if req.seed_product_id and req.seed_product_id not in self.dense.row:
            raise NotFound(f"unknown product id {req.seed_product_id!r}")
        return self.retriever.candidates(req, history=history, purchased=purchased)

    def llm(self):  # noqa: ANN201 - the configured LLM backend (loaded on first use)
        from service.llm.factory import get_llm

        return get_llm(self.settings)

    def reranker_llm(self, rerank: str):  # noqa: ANN201
        """The verbalizer uses the LoRA-tuned adapter when one is saved (`recsmith train
        reranker`); loaded once per process. Other rerankers use the base model, since the
        adapter was tuned on the verbalizer's prompt only."""
        if rerank != "verbalizer":
            return self.llm()
        with self._lock:
            if self._verbalizer_llm is None:
                from service.training.lora import reranker_llm

                self._verbalizer_llm = reranker_llm(self.settings)
            return self._verbalizer_llm
