"""The trained artefacts the service serves, found in the data directory and loaded once:
the fitted source fusion (artefacts/fusion.json), the SASRec retrieval source
(models/sequential/) and the verbalizer's LoRA adapter (models/reranker-lora/).

Missing → the untrained default (no warning: a fresh install has none); corrupt or made
for something else → a warning and the default. With `artefacts_strict` (or the older
`fusion_strict` for the fusion) either is an error naming the file and the fix, raised at
start-up rather than on the first request.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from service.catalog.store import CatalogStore
from service.config import Settings
from service.files import ArtefactStatus
from service.llm.base import LLM
from service.ranking.adapter import AdapterError, adapter_dir, load_adapter_into
from service.ranking.blend import BLEND_FILE, RerankBlend, load_blend
from service.retrieval.fusion import Fusion, FusionStatus, load_fusion
from service.retrieval.sequential import SequentialScorer, load_sequential

logger = logging.getLogger(__name__)


class Artefacts:
    def __init__(self, settings: Settings, strict: bool | None = None) -> None:
        self.settings = settings
        self.strict = settings.artefacts_strict if strict is None else strict
        self._lock = threading.Lock()
        self._tuned: dict[int, LLM] = {}  # base LLM id() → the LLM with the adapter applied
        self._blend: tuple[RerankBlend | None, ArtefactStatus] | None = None

    def fusion(self, encoder_id: str | None = None) -> tuple[Fusion | None, FusionStatus]:
        s = self.settings
        return load_fusion(s.fusion_file, s.fusion_strict or self.strict, encoder_id)

    def rerank_blend(self) -> tuple[RerankBlend | None, ArtefactStatus]:
        """The verbalizer's blend with its shortlist (artefacts/rerank_blend.json), read once."""
        with self._lock:
            if self._blend is None:
                path = Path(self.settings.data_dir) / BLEND_FILE
                self._blend = load_blend(path, self.strict)
            return self._blend

    def sequential(self, store: CatalogStore | None = None) -> SequentialScorer | None:
        return load_sequential(self.settings, store, strict=self.strict)

    def ranker_llm(self, base: LLM) -> LLM:
        """`base` with the LoRA adapter when one is saved and fits it (loaded once per base
        model); otherwise `base` itself. The adapter was tuned on the verbalizer's prompt
        only, so only the verbalizer asks for this."""
        with self._lock:
            tuned = self._tuned.get(id(base))
            if tuned is None:
                tuned = self._tuned[id(base)] = self._apply_adapter(base)
            return tuned

    def _apply_adapter(self, base: LLM) -> LLM:
        path = adapter_dir(self.settings)
        if not (path / "manifest.json").exists():
            if self.strict:
                raise AdapterError(f"no reranker adapter in {path}: run `recsmith train reranker`")
            return base
        try:
            return load_adapter_into(base, path)
        except AdapterError as e:
            if self.strict:
                raise
            logger.warning("verbalizer uses the base model: %s", e)
            return base
