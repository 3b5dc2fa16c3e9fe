"""The trained SASRec next-item model as a retrieval source: the network, loading a saved
checkpoint (DATA_DIR/models/sequential/, written by `recsmith train retriever`) and top-k
scoring. Training lives in service/training/sequential.py, which builds on this module."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    import torch

    from service.catalog.store import CatalogStore
    from service.config import Settings

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MODEL_DIR = "sequential"
FILES = ("model.safetensors", "config.json", "items.json", "metrics.json", "manifest.json")
EVAL_BATCH = 512


class SequentialModelError(RuntimeError):
    """No usable trained sequential model (missing, corrupted, or incompatible)."""


@dataclass
class SASRecConfig:
    max_len: int = 50
    dim: int = 64
    layers: int = 2
    heads: int = 1
    dropout: float = 0.2
    loss: Literal["ce", "bce"] = "ce"
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 128
    max_epochs: int = 200
    patience: int = 5  # epochs without a better validation NDCG@10
    max_minutes: float | None = 3.0
    seed: int = 0
    # Cut long training sequences into several max_len windows (the original keeps only the
    # last one): ML-100k users average ~100 items, so this uses twice the data per epoch.
    all_windows: bool = True
    threads: int = 0  # torch threads while training; 0 = auto (see train_threads)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SASRecConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def first_occurrences(items: Iterable[str]) -> list[str]:
    """Distinct items in order of first appearance: targets are always new to the user."""
    return list(dict.fromkeys(items))


def pad_inputs(histories: Sequence[np.ndarray], max_len: int) -> np.ndarray:
    """The last max_len items of each history, left-padded; item i is i+1."""
    out = np.zeros((len(histories), max_len), dtype=np.int64)
    for r, h in enumerate(histories):
        tail = np.asarray(h[-max_len:], dtype=np.int64) + 1
        if len(tail):
            out[r, max_len - len(tail) :] = tail
    return out


def _build_model(n_items: int, cfg: SASRecConfig) -> torch.nn.Module:
    # lazy: torch (+1.3 s after the CLI, eval/bench_startup.py) loads only when a trained model
    # is present: most installs have none, and the API's start-up imports this module
    import torch
    from torch import nn
    from torch.nn import functional as F  # noqa: N812

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            d = cfg.dim
            self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
            self.ff = nn.Sequential(
                nn.Linear(d, d), nn.GELU(), nn.Dropout(cfg.dropout), nn.Linear(d, d)
            )
            self.drop = nn.Dropout(cfg.dropout)

        def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            b, n, d = x.shape
            h = cfg.heads
            q, k, v = self.qkv(self.ln1(x)).view(b, n, 3, h, d // h).permute(2, 0, 3, 1, 4)
            a = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=cfg.dropout if self.training else 0.0
            )
            x = x + self.drop(self.proj(a.transpose(1, 2).reshape(b, n, d)))
            return x + self.drop(self.ff(self.ln2(x)))

    class SASRec(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.n_items = n_items
            self.item = nn.Embedding(n_items + 1, cfg.dim, padding_idx=0)
            self.pos = nn.Embedding(cfg.max_len, cfg.dim)
            nn.init.normal_(self.item.weight, std=0.02)
            nn.init.normal_(self.pos.weight, std=0.02)
            with torch.no_grad():
                self.item.weight[0].zero_()
            self.drop = nn.Dropout(cfg.dropout)
            self.blocks = nn.ModuleList(Block() for _ in range(cfg.layers))
            self.ln = nn.LayerNorm(cfg.dim)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            """[b, L] item ids (0 = pad) -> [b, L, dim] hidden states."""
            n = x.shape[1]
            valid = x > 0
            e = self.item(x) * math.sqrt(cfg.dim) + self.pos.weight[:n]
            e = self.drop(e) * valid.unsqueeze(-1)
            causal = torch.ones(n, n, dtype=torch.bool, device=x.device).tril()
            eye = torch.eye(n, dtype=torch.bool, device=x.device)
            # Attend to earlier real items; a pad row attends to itself only (never all-masked).
            mask = (causal & valid[:, None, :]) | eye
            mask = mask.unsqueeze(1)
            for blk in self.blocks:
                e = blk(e, mask)
            return self.ln(e)

        def item_logits(self, h: torch.Tensor) -> torch.Tensor:
            """[..., dim] -> [..., n_items] (column j is item j, i.e. embedding row j+1)."""
            return h @ self.item.weight[1:].T

        def score_last(self, x: torch.Tensor) -> torch.Tensor:
            return self.item_logits(self(x)[:, -1])

    return SASRec()


def score_histories(
    model: torch.nn.Module, histories: Sequence[np.ndarray], max_len: int
) -> np.ndarray:
    """float32 [len(histories), n_items]: next-item scores (item indices are 0-based)."""
    # lazy: torch, as in _build_model
    import torch

    model.eval()
    out = []
    with torch.inference_mode():
        for start in range(0, len(histories), EVAL_BATCH):
            x = torch.from_numpy(pad_inputs(histories[start : start + EVAL_BATCH], max_len))
            out.append(model.score_last(x).float().numpy())
    n = model.n_items  # type: ignore[attr-defined]
    return np.concatenate(out) if out else np.zeros((0, n), dtype=np.float32)


class SequentialScorer:
    """A trained SASRec as a `SequenceScorer` for the Retriever."""

    def __init__(
        self,
        model: Any,
        item_ids: list[str],
        config: SASRecConfig,
        info: dict[str, Any] | None = None,
    ) -> None:
        self.model = model.eval()
        self.item_ids = item_ids
        self.index = {p: i for i, p in enumerate(item_ids)}
        self.config = config
        self.info = info or {}
        self._lock = threading.Lock()  # torch modules are not documented thread-safe

    def encode_history(self, history: Sequence[str]) -> np.ndarray:
        """Known items only (unknown ones are skipped), first occurrences, oldest first."""
        known = [self.index[p] for p in first_occurrences(history) if p in self.index]
        return np.array(known, dtype=np.int64)

    def scores(self, history: Sequence[str]) -> np.ndarray | None:
        """Next-item score of every vocabulary item, or None without a known item."""
        h = self.encode_history(history)
        if len(h) == 0:
            return None
        with self._lock:
            return score_histories(self.model, [h], self.config.max_len)[0]

    def top_k(
        self, history: list[str], k: int, allowed: Callable[[str], bool]
    ) -> list[tuple[str, float]]:
        s = self.scores(history)
        if s is None:
            return []  # cold user: the other sources cover it
        seen = set(self.encode_history(history).tolist())
        out: list[tuple[str, float]] = []
        for i in np.argsort(-s, kind="stable"):
            if int(i) in seen:
                continue
            pid = self.item_ids[i]
            if allowed(pid):
                out.append((pid, float(s[i])))
                if len(out) >= k:
                    break
        return out


def model_dir(settings: Settings) -> Path:
    return Path(settings.data_dir) / "models" / MODEL_DIR


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_model(directory: Path) -> SequentialScorer:
    """Load and check a saved model; SequentialModelError says what is wrong."""
    # lazy: safetensors.torch pulls torch (as in _build_model); only a present model needs it
    from safetensors.torch import load_file

    if not (directory / "manifest.json").exists():
        raise SequentialModelError(
            f"no trained sequential model in {directory}: run `recsmith train retriever`"
        )
    try:
        manifest = json.loads((directory / "manifest.json").read_text())
        if manifest.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"format version {manifest.get('format_version')!r}")
        for name, digest in manifest["sha256"].items():
            if _sha256(directory / name) != digest:
                raise ValueError(f"{name} does not match its checksum")
        cfg_d = json.loads((directory / "config.json").read_text())
        cfg = SASRecConfig.from_dict(cfg_d)
        item_ids = json.loads((directory / "items.json").read_text())
        if len(item_ids) != cfg_d["n_items"]:
            raise ValueError("items.json and config.json disagree on the vocabulary size")
        model = _build_model(len(item_ids), cfg)
        model.load_state_dict(load_file(str(directory / "model.safetensors")), strict=True)
        metrics = json.loads((directory / "metrics.json").read_text())
    except SequentialModelError:
        raise
    except Exception as e:  # noqa: BLE001 - any defect means the same thing: retrain
        raise SequentialModelError(
            f"the sequential model in {directory} is unusable ({type(e).__name__}: {e}); "
            "retrain it with `recsmith train retriever` or delete the folder"
        ) from e
    return SequentialScorer(model, item_ids, cfg, {"manifest": manifest, "metrics": metrics})


def load_sequential(
    settings: Settings, store: CatalogStore | None = None, strict: bool = False
) -> SequentialScorer | None:
    """The trained model for the service, or None (absent, or broken: logged) so retrieval
    falls back to the untrained sources. strict=True raises SequentialModelError instead."""
    directory = model_dir(settings)
    if not strict and not (directory / "manifest.json").exists():
        return None
    try:
        scorer = read_model(directory)
        if store is not None:
            _check_against_store(scorer, store)
    except SequentialModelError as e:
        if strict:
            raise
        logger.warning("sequential retrieval disabled: %s", e)
        return None
    return scorer


def _check_against_store(scorer: SequentialScorer, store: CatalogStore) -> None:
    """A model of another catalogue (e.g. ML-100k in the service's data dir) is useless;
    an older log only makes it stale."""
    sample = scorer.item_ids[:: max(1, len(scorer.item_ids) // 200)][:200]
    if sample and not store.get_products(sample):
        raise SequentialModelError(
            f"none of the model's items is in this catalogue (trained on another data set?); "
            f"retrain with `recsmith train retriever` in {store.engine.url}"
        )
    saved = scorer.info.get("manifest", {}).get("n_interactions")
    now = store.count_interactions()
    if saved is not None and saved != now:
        logger.info(
            "sequential model trained on %s interactions, the log now has %s: "
            "`recsmith train retriever` refreshes it",
            saved,
            now,
        )
