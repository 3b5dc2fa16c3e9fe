"""A SASRec-style next-item model trained on the interaction log, served as a retrieval source.

Model (Kang & McAuley 2018, pre-LN variant): item embeddings (shared with the output
layer) plus learned positions, `layers` causal self-attention blocks, a final LayerNorm;
the hidden state at the last position, dotted with every item embedding, scores the next
item. Sequences are left-padded to `max_len`, so the most recent item always sits at the
last position (positions read as "recency").

Loss: full softmax cross-entropy over the catalogue by default. With a catalogue of a few
thousand items the full softmax costs about as much as one sampled negative, and every
step then pushes down every wrong item instead of one: it converges in a fraction of the
epochs and ranks markedly better (Klenitskiy & Vasilev, RecSys 2023; measured here on
ML-100k, see eval/results/*learned*). BCE with one sampled negative (the original SASRec
loss) stays available for catalogues too large for a full softmax.

Protocol (LlamaRec's leave-one-out): per user the distinct items in time order (first
occurrence); the last item is the test target, the one before it the validation target,
and the model trains on the rest. Early stopping keeps the epoch with the best validation
NDCG@10. Users with fewer than 3 items only contribute training pairs.

Artefacts in DATA_DIR/models/sequential/: model.safetensors, config.json, items.json
(the vocabulary: row i+1 of the embedding is items[i]), metrics.json and manifest.json
(data version = sha256 of the interaction log it saw, file checksums, versions).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

    from service.config import Settings

# The inference side (network, checkpoint format, scorer) is the serving module's; training
# builds on it, never the other way round.
from service.offline.metrics import summarize, target_ranks
from service.retrieval.sequential import (  # noqa: E402
    EVAL_BATCH,
    FILES,
    FORMAT_VERSION,
    SASRecConfig,
    SequentialModelError,
    SequentialScorer,
    _build_model,
    _sha256,
    first_occurrences,
    model_dir,
    score_histories,
)

logger = logging.getLogger(__name__)

MIN_ITEMS = 3  # a user needs train + validation + test items to be evaluated
KS = (5, 10, 20)


@dataclass
class EpochReport:
    epoch: int
    max_epochs: int
    loss: float
    val: dict[str, float]
    best_epoch: int
    elapsed_s: float


# -- data ---------------------------------------------------------------------------------
Row = tuple[str, str, str, Any]  # (user_id, product_id, event, ts) as CatalogStore returns


def data_version(rows: Iterable[Row]) -> str:
    """sha256 of the interaction log (user, product, event, time), in the given order."""
    h = hashlib.sha256()
    for user, pid, event, ts in rows:
        t = ts.isoformat() if hasattr(ts, "isoformat") else str(ts)
        h.update(f"{user}\t{pid}\t{event}\t{t}\n".encode())
    return h.hexdigest()


def sequences_from_log(rows: Sequence[Row]) -> tuple[list[str], list[str], list[np.ndarray]]:
    """(item vocabulary, users, per-user item-index sequences) from rows ordered by user,
    then time (CatalogStore.all_interactions order; time ties keep the log's order)."""
    per_user: dict[str, list[str]] = {}
    for user, pid, _event, _ts in rows:
        per_user.setdefault(user, []).append(pid)
    item_ids = sorted({pid for _u, pid, _e, _t in rows})
    index = {p: i for i, p in enumerate(item_ids)}
    users = list(per_user)
    seqs = [
        np.array([index[p] for p in first_occurrences(per_user[u])], dtype=np.int64) for u in users
    ]
    return item_ids, users, seqs


@dataclass
class LeaveOneOut:
    """Training sequences plus validation and test inputs/targets (item indices, 0-based)."""

    train: list[np.ndarray]
    val_inputs: list[np.ndarray]
    val_targets: np.ndarray
    test_inputs: list[np.ndarray] = field(default_factory=list)
    test_targets: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


def leave_one_out(seqs: Sequence[np.ndarray], with_test: bool = True) -> LeaveOneOut:
    """with_test: the last item is the test target and the one before it validation.
    Without: the sequences are already cut for a target (eval harness histories): their
    last item is the validation target."""
    cut = 2 if with_test else 1
    train, vi, vt, ti, tt = [], [], [], [], []
    for s in seqs:
        if len(s) < MIN_ITEMS + (0 if with_test else -1):
            train.append(s)  # too short to evaluate: every pair is training data
            continue
        train.append(s[:-cut])
        vi.append(s[:-cut])
        vt.append(int(s[-cut]))
        if with_test:
            ti.append(s[:-1])
            tt.append(int(s[-1]))
    return LeaveOneOut(train, vi, np.array(vt, dtype=np.int64), ti, np.array(tt, dtype=np.int64))


def training_windows(
    seqs: Sequence[np.ndarray], max_len: int, all_windows: bool
) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, next-item targets), both [n, max_len], left-padded with 0; item i is i+1."""
    xs, ys = [], []
    for s in seqs:
        s = s + 1
        end = len(s)
        while end >= 2:
            w = s[max(0, end - max_len - 1) : end]
            x = np.zeros(max_len, dtype=np.int64)
            y = np.zeros(max_len, dtype=np.int64)
            x[max_len - len(w) + 1 :] = w[:-1]
            y[max_len - len(w) + 1 :] = w[1:]
            xs.append(x)
            ys.append(y)
            if not all_windows:
                break
            end -= max_len
    if not xs:
        return np.zeros((0, max_len), np.int64), np.zeros((0, max_len), np.int64)
    return np.stack(xs), np.stack(ys)


# -- model ----------------------------------------------------------------------------------
def rank_metrics(
    model: torch.nn.Module, inputs: Sequence[np.ndarray], targets: np.ndarray, max_len: int
) -> dict[str, float]:
    """Full-ranking Recall/NDCG@5/10/20 and MRR over items unseen in the input history
    (service.offline.metrics; ties by item index)."""
    if len(targets) == 0:
        return {}
    ranks = []
    for start in range(0, len(inputs), EVAL_BATCH):
        hist = inputs[start : start + EVAL_BATCH]
        scores = score_histories(model, hist, max_len)
        seen = np.zeros(scores.shape, dtype=bool)
        for r, h in enumerate(hist):
            seen[r, h] = True
        ranks.append(target_ranks(scores, targets[start : start + EVAL_BATCH], seen).stable)
    return summarize(np.concatenate(ranks), KS)


# -- training -------------------------------------------------------------------------------
@dataclass
class FitResult:
    model: Any
    best_epoch: int
    epochs_run: int
    best_val: dict[str, float]
    history: list[dict[str, float]]
    train_s: float
    stopped: str  # "patience" | "max_epochs" | "time"
    cpu_s: float = 0.0  # this process's CPU time: comparable across busy and idle machines
    threads: int = 1


def fit_sasrec(
    n_items: int,
    data: LeaveOneOut,
    cfg: SASRecConfig,
    progress: Callable[[EpochReport], None] | None = None,
) -> FitResult:
    """Train on data.train, early-stop on data.val_*; returns the best epoch's model."""
    # lazy: torch takes ~5 s to import; only this path needs it
    import torch

    t0, c0 = time.perf_counter(), time.process_time()
    prev_threads = torch.get_num_threads()
    threads = train_threads(cfg.threads)
    torch.set_num_threads(threads)
    try:
        result = _fit(n_items, data, cfg, progress, t0)
        result.cpu_s, result.threads = time.process_time() - c0, threads
        return result
    finally:
        torch.set_num_threads(prev_threads)


def train_threads(requested: int = 0) -> int:
    """Threads for training. On a CPU shared with other busy processes, extra torch threads
    spin waiting for each other: measured here with load 16 on 2 cores, one thread ran a
    SASRec step in 1.8 s and two threads in 6 s. So auto = the cores left idle, at least 1."""
    # lazy: torch takes ~5 s to import; only this path needs it
    import torch

    if requested > 0:
        return requested
    cores = os.cpu_count() or 1
    try:
        idle = cores - os.getloadavg()[0]
    except OSError:
        idle = cores
    return max(1, min(torch.get_num_threads(), math.floor(idle + 0.5)))


def _fit(
    n_items: int,
    data: LeaveOneOut,
    cfg: SASRecConfig,
    progress: Callable[[EpochReport], None] | None,
    t0: float,
) -> FitResult:
    # lazy: torch takes ~5 s to import; only this path needs it
    import torch
    from torch.nn import functional as F  # noqa: N812

    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model = _build_model(n_items, cfg)
    x_all, y_all = training_windows(data.train, cfg.max_len, cfg.all_windows)
    if len(x_all) == 0:
        raise SequentialModelError("no training pairs: every user has fewer than 2 items")
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    best_ndcg, best_epoch, best_state, best_val = -1.0, 0, None, {}
    history: list[dict[str, float]] = []
    stopped = "max_epochs"
    epoch = 0
    for epoch in range(1, cfg.max_epochs + 1):
        model.train()
        order = rng.permutation(len(x_all))
        total, count = 0.0, 0
        for start in range(0, len(order), cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            x = torch.from_numpy(x_all[idx])
            y = torch.from_numpy(y_all[idx])
            h = model(x)
            valid = y > 0
            hv, yv = h[valid], y[valid] - 1
            if cfg.loss == "ce":
                loss = F.cross_entropy(model.item_logits(hv), yv)
            else:  # one uniform negative per position (collisions with the positive are rare)
                neg = torch.randint(0, n_items, yv.shape)
                w = model.item.weight
                pos_l = (hv * w[yv + 1]).sum(-1)
                neg_l = (hv * w[neg + 1]).sum(-1)
                loss = F.softplus(-pos_l).mean() + F.softplus(neg_l).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
            count += len(idx)
        val = rank_metrics(model, data.val_inputs, data.val_targets, cfg.max_len)
        ndcg = val.get("ndcg@10", 0.0)
        history.append({"epoch": epoch, "loss": total / max(count, 1), **val})
        if ndcg > best_ndcg or best_state is None:
            best_ndcg, best_epoch, best_val = ndcg, epoch, val
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        elapsed = time.perf_counter() - t0
        if progress:
            progress(
                EpochReport(epoch, cfg.max_epochs, total / max(count, 1), val, best_epoch, elapsed)
            )
        if epoch - best_epoch >= cfg.patience:
            stopped = "patience"
            break
        if cfg.max_minutes is not None and elapsed >= cfg.max_minutes * 60:
            stopped = "time"
            break
    assert best_state is not None
    model.load_state_dict(best_state)
    model.eval()
    return FitResult(model, best_epoch, epoch, best_val, history, time.perf_counter() - t0, stopped)


def save_model(
    directory: Path,
    model: Any,
    item_ids: list[str],
    cfg: SASRecConfig,
    metrics: dict[str, Any],
    data_ver: str,
    n_interactions: int,
) -> Path:
    """Write every file into a temporary sibling, then swap it in: a reader never sees a
    half-written model."""
    # lazy: torch takes ~5 s to import; only this path needs it
    import torch
    from safetensors.torch import save_file

    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.parent / f".{directory.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / "model.safetensors"))
        (tmp / "config.json").write_text(
            json.dumps({**asdict(cfg), "n_items": len(item_ids)}, indent=2) + "\n"
        )
        (tmp / "items.json").write_text(json.dumps(item_ids) + "\n")
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        manifest = {
            "format_version": FORMAT_VERSION,
            "kind": "sasrec",
            "data_version": data_ver,
            "n_interactions": n_interactions,
            "n_items": len(item_ids),
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "torch_version": torch.__version__,
            "sha256": {f: _sha256(tmp / f) for f in FILES[:4]},
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        old = directory.parent / f".{directory.name}.old-{os.getpid()}"
        if directory.exists():
            directory.rename(old)
        tmp.rename(directory)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory


# -- entry points ------------------------------------------------------------------------------
def train_on_sequences(
    item_ids: list[str],
    seqs: Sequence[np.ndarray],
    settings: Settings,
    data_ver: str,
    n_interactions: int,
    progress: Callable[[EpochReport], None] | None = None,
    config: SASRecConfig | None = None,
    extra: dict[str, Any] | None = None,
    save: bool = True,
) -> dict[str, Any]:
    """Fit with early stopping, measure the test target, save; returns the metrics."""
    cfg = config or SASRecConfig()
    data = leave_one_out(seqs, with_test=True)
    if len(data.val_targets) == 0:
        raise SequentialModelError(
            f"no user has {MIN_ITEMS} or more distinct items: nothing to validate on"
        )
    fit = fit_sasrec(len(item_ids), data, cfg, progress)
    t0 = time.perf_counter()
    test = rank_metrics(fit.model, data.test_inputs, data.test_targets, cfg.max_len)
    metrics: dict[str, Any] = {
        "val": fit.best_val,
        "test": test,
        "best_epoch": fit.best_epoch,
        "epochs_run": fit.epochs_run,
        "stopped": fit.stopped,
        "train_s": round(fit.train_s, 1),
        "train_cpu_s": round(fit.cpu_s, 1),
        "threads": fit.threads,
        "test_eval_s": round(time.perf_counter() - t0, 2),
        "users": len(seqs),
        "users_evaluated": int(len(data.test_targets)),
        "items": len(item_ids),
        "interactions": n_interactions,
        "history": fit.history,
        "protocol": "leave-one-out: last item test, second-to-last validation; full ranking "
        "over items unseen in the history, ties by item index",
        **(extra or {}),
    }
    if save:
        path = save_model(
            model_dir(settings), fit.model, item_ids, cfg, metrics, data_ver, n_interactions
        )
        metrics["path"] = str(path)
    return metrics


def train_sequential(
    interactions: Sequence[Row],
    settings: Settings,
    progress: Callable[[EpochReport], None] | None = None,
    config: SASRecConfig | None = None,
) -> dict[str, Any]:
    """Train on (user, product, event, ts) rows ordered by user then time (the store's
    `all_interactions()`), save to DATA_DIR/models/sequential/; returns the metrics."""
    item_ids, _users, seqs = sequences_from_log(interactions)
    return train_on_sequences(
        item_ids,
        seqs,
        settings,
        data_version(interactions),
        len(interactions),
        progress,
        config,
        extra={"source": "store"},
    )


class SASRecMethod:
    """SASRec as an eval.baselines.Method: fit(histories, n_items) trains on each history
    less its last item and early-stops on that last item; score(rows) scores every item
    from the whole history. With the harness's test histories this is exactly the
    leave-one-out protocol (the last history item is the validation target)."""

    def __init__(
        self,
        config: SASRecConfig | None = None,
        progress: Callable[[EpochReport], None] | None = None,
        name: str = "",
    ) -> None:
        self.config = config or SASRecConfig()
        self.progress = progress
        c = self.config
        self.name = name or f"SASRec ({c.layers}x{c.dim}, len {c.max_len}, {c.loss.upper()})"
        self.fit_result: FitResult | None = None

    @classmethod
    def from_scorer(
        cls, scorer: SequentialScorer, item_ids: Sequence[str], histories: Sequence[np.ndarray]
    ) -> SASRecMethod:
        """A saved model as an already fitted method (no retraining), for histories indexed
        like item_ids, which must be the model's own vocabulary."""
        if list(item_ids) != scorer.item_ids:
            raise SequentialModelError("the saved model's vocabulary is not this data set's")
        m = cls(scorer.config)
        m.histories = list(histories)
        met = scorer.info.get("metrics", {})
        m.fit_result = FitResult(
            scorer.model,
            met.get("best_epoch", 0),
            met.get("epochs_run", 0),
            met.get("val", {}),
            met.get("history", []),
            met.get("train_s", 0.0),
            met.get("stopped", ""),
            met.get("train_cpu_s", 0.0),
            met.get("threads", 1),
        )
        return m

    def fit(self, histories: Sequence[np.ndarray], n_items: int) -> None:
        self.histories = list(histories)
        data = leave_one_out(self.histories, with_test=False)
        self.fit_result = fit_sasrec(n_items, data, self.config, self.progress)

    def score(self, rows: np.ndarray) -> np.ndarray:
        assert self.fit_result is not None, "fit first"
        hist = [self.histories[int(r)] for r in rows]
        return score_histories(self.fit_result.model, hist, self.config.max_len)
