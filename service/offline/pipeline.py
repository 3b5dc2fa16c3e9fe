"""The served pipeline over an offline data set, shared by training (LlamaRec prompts from
its shortlists, the fitted fusion) and the ranking evaluation: an `Application` over a data
dir holding every user's history up to a split target, and each retrieval source's lists
for those users."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from service.application import Application
from service.catalog.models import Event, Interaction
from service.config import Settings
from service.offline.datasets import Dataset
from service.offline.split import Split, Target
from service.retrieval.encoder import encoder_for
from service.retrieval.retriever import RetrievalRequest

HISTORY_LIMIT = 200  # what Recsmith.history() hands the retriever for a known user
PIPELINE_K = 50  # items asked of recommend(); the rest of the catalogue counts as misses


class Encoder(Protocol):
    """What the harness needs from service.retrieval.encoder.Encoder (tests pass a fake)."""

    dim: int
    model_id: str
    model_calls: int

    def encode(
        self, texts: Sequence[str], progress: Callable[[int], None] | None = None
    ) -> Any: ...


class Reporter:
    """Progress hooks; the CLI draws them with rich, the library stays quiet."""

    def stage(self, label: str, total: int | None = None) -> None:
        pass

    def advance(self, n: int = 1) -> None:
        pass

    def note(self, text: str) -> None:
        pass


def default_encoder() -> Encoder:
    """The packaged all-MiniLM-L6-v2, with the data directory's embedding cache."""
    return encoder_for(Settings())


def ingest_histories(rs: Any, ds: Dataset, split: Split, target: Target = "test") -> int:
    """Products, and every user's history for `target` (never that target, nor anything
    after it). Each rated item is stored as a purchase, so the service's own
    exclude-purchased filter hides what the user has seen, as the protocol requires (one
    event kind for all: rankings are the same as with ratings). Times are synthetic, one
    second apart in split order, so the store replays the split's order (ties included)."""
    for start in range(0, len(ds.products), 2000):
        rs.store.upsert_products(ds.products[start : start + 2000])
    t0 = datetime(2000, 1, 1, tzinfo=UTC)
    batch: list[Interaction] = []
    n = 0
    for user, hist in zip(split.users, split.history(target), strict=True):
        for pos, item in enumerate(hist):
            batch.append(
                Interaction(
                    user_id=user,
                    product_id=split.item_ids[item],
                    event=Event.purchase,
                    ts=t0 + timedelta(seconds=pos),
                )
            )
        if len(batch) >= 20_000:
            n += rs.store.add_interactions(batch)
            batch = []
    n += rs.store.add_interactions(batch)
    return n


def application_over(
    root: Path,
    encoder: Encoder,
    ds: Dataset,
    split: Split,
    target: Target,
    sequential: Path | None = None,
) -> Any:
    """The service's `Application` over `root` holding every user's history for `target`,
    sharing `encoder` (and its embedding cache) with the content baseline; `sequential`: a
    trained model folder put where the service loads it from (DATA_DIR/models/sequential)."""
    if sequential is not None:
        shutil.copytree(sequential, root / "models" / "sequential")
    app = Application(Settings(data_dir=root, database_url=""), encoder=encoder)
    ingest_histories(app.engine, ds, split, target)
    app.sync_index()
    return app


def source_lists(
    rs: Any, split: Split, rows: np.ndarray, target: Target, k: int, reporter: Reporter
) -> tuple[list[dict[str, list[tuple[str, float]]]], list[float]]:
    """Every source's list per user, from the service's own `Retriever.source_lists`."""
    hist = split.history(target)
    out, latency = [], []
    for r in rows:
        ids = [split.item_ids[i] for i in hist[r]]
        recent = [(pid, Event.purchase.value) for pid in ids[-HISTORY_LIMIT:]]
        req = RetrievalRequest(user_id=split.users[r], k=k)
        t0 = time.perf_counter()
        out.append(rs.retriever.source_lists(req, history=recent, purchased=set(ids)))
        latency.append(time.perf_counter() - t0)
        reporter.advance()
    return out, latency
