"""LlamaRec prompts from the served pipeline's shortlists, at scale.

One `Recsmith` over a data dir holding every user's test history (never a test target)
and the fusion fitted on the validation target (the artefact the service loads) gives the
shortlist the service would hand the verbalizer for any history: `Retriever.source_lists`
then `fuse`, top 20, the history itself excluded. From it:

- training prompts: for sampled users, several cut points c inside T = s[:-2] (history
  T[:c] -> target T[c]); a cut point is kept only when its target is in the shortlist
  (LlamaRec: the answer must be among the candidates; none is inserted), and the
  candidates are shuffled (seeded) against position bias;
- validation prompts: other users' validation item s[-2] after T, same rule;
- test cases: every user's test item after s[:-1], the shortlist in served (retrieval)
  order, target present or not (NDCG@10 over all users).

The store is built once per data dir (a marker file says it is complete) and reused.
Leak note: co-interaction statistics come from the test-history store, so a training cut
point's own later items count in them; validation and test targets are never in it.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service.config import Settings
from service.offline.datasets import load
from service.offline.pipeline import HISTORY_LIMIT, PIPELINE_K, application_over, default_encoder
from service.offline.split import leave_last_two_out
from service.recsmith import Recsmith
from service.retrieval.retriever import RetrievalRequest
from service.training.fusion_fit import fit_fusion_on_validation

SHORTLIST = 20
READY = ".pipeline-ready"


@dataclass
class Case:
    user: str
    history: list[str]  # oldest first (the whole history the retriever saw)
    candidates: list[str]  # prompt order
    target: str
    kind: str  # train | val | test

    @property
    def label(self) -> int:
        """The answer's index among the candidates, -1 when it was not retrieved."""
        return self.candidates.index(self.target) if self.target in self.candidates else -1


def pipeline_recsmith(root: Path, dataset: str = "ml-100k", tie_break: str = "item_id") -> Any:
    """A Recsmith over `root` with every user's test history and the fitted fusion; built
    on first use (fusion fitted on validation as `recsmith eval ranking` fits it)."""
    ds = load(dataset)
    split = leave_last_two_out(ds, tie_break)  # type: ignore[arg-type]
    encoder = default_encoder()
    settings = Settings(data_dir=root, database_url="")
    if (root / READY).exists():
        rs = Recsmith(settings, encoder=encoder)
        rs.ensure_ready()  # loads the indexes and co-interaction stats (nothing to re-encode)
        return rs, ds, split
    root.mkdir(parents=True, exist_ok=True)
    if not settings.fusion_file.exists():
        fit = fit_fusion_on_validation(ds, split, np.arange(len(split.users)), encoder)
        fit.fusion.save(settings.fusion_file)
    rs = application_over(root, encoder, ds, split, "test").engine
    (root / READY).write_text(json.dumps({"dataset": dataset, "tie_break": tie_break}) + "\n")
    return rs, ds, split


def shortlister(rs: Any, k: int = SHORTLIST) -> Callable[[list[str]], list[str]]:
    """history -> the served pipeline's top-k for it (what the service shows the reranker)."""

    def top(history: list[str]) -> list[str]:
        recent = [(p, "purchase") for p in history[-HISTORY_LIMIT:]]
        lists = rs.retriever.source_lists(
            RetrievalRequest(user_id="cut-point", k=PIPELINE_K),
            history=recent,
            purchased=set(history),
        )
        return [c.product_id for c in rs.retriever.fuse(lists, k)]

    return top


def build_cases(
    sequences: Sequence[Sequence[str]],
    users: Sequence[str],
    top: Callable[[list[str]], list[str]],
    n_users: int | None,
    cuts_per_user: int,
    val_users: int,
    seed: int = 0,
    min_history: int = 3,
    progress: Callable[[str], None] | None = None,
) -> dict[str, list[Case]]:
    """Train (users x cut points), validation and test cases; see the module doc."""
    rng = random.Random(seed)
    rows = [i for i, s in enumerate(sequences) if len(s) >= min_history + 3]
    rng.shuffle(rows)
    val_rows = rows[:val_users]
    train_rows = rows[val_users:]
    if n_users is not None:
        train_rows = train_rows[:n_users]
    out: dict[str, list[Case]] = {"train": [], "val": [], "test": []}
    tried = 0
    for n, r in enumerate(train_rows):
        t = list(sequences[r][:-2])
        cuts = list(range(min_history, len(t)))
        # The last cut first (LlamaRec's own example), then random earlier ones, until
        # `cuts_per_user` have their target in the shortlist (at most 2x as many tries).
        order = [cuts[-1]] + rng.sample(cuts[:-1], len(cuts) - 1)
        kept = 0
        for c in order[: 2 * cuts_per_user]:
            tried += 1
            cands = top(t[:c])
            if t[c] in cands:
                rng.shuffle(cands)
                out["train"].append(Case(users[r], t[:c], cands, t[c], "train"))
                kept += 1
                if kept == cuts_per_user:
                    break
        if progress and n % 50 == 0:
            progress(f"train users {n}/{len(train_rows)}: {len(out['train'])} prompts")
    for r in val_rows:
        s = list(sequences[r])
        cands = top(s[:-2])
        if s[-2] in cands:
            rng.shuffle(cands)
            out["val"].append(Case(users[r], s[:-2], cands, s[-2], "val"))
    for n, r in enumerate(range(len(sequences))):
        s = list(sequences[r])
        out["test"].append(Case(users[r], s[:-1], top(s[:-1]), s[-1], "test"))
        if progress and n % 100 == 0:
            progress(f"test users {n}/{len(sequences)}")
    out["meta"] = [{"cut_points_tried": tried}]  # type: ignore[list-item]
    return out


def save_cases(cases: dict[str, Any], path: Path, info: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "info": info,
        **{k: [asdict(c) for c in v] for k, v in cases.items() if k != "meta"},
        "meta": cases.get("meta", []),
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)


def load_cases(path: Path) -> tuple[dict[str, list[Case]], dict[str, Any]]:
    data = json.loads(path.read_text())
    return {k: [Case(**c) for c in data[k]] for k in ("train", "val", "test")}, data["info"]


def make_cases_file(
    path: Path,
    store: Path,
    dataset: str = "ml-100k",
    n_users: int | None = None,
    cuts_per_user: int = 4,
    val_users: int = 100,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> tuple[dict[str, list[Case]], dict[str, Any]]:
    """The cases file for these options, built once (reused when the options match)."""
    want = {
        "dataset": dataset,
        "cuts_per_user": cuts_per_user,
        "val_users": val_users,
        "seed": seed,
        "shortlist": SHORTLIST,
        "candidates_from": "served pipeline (fitted fusion) top-20",
    }
    if path.exists():
        cases, info = load_cases(path)
        if all(info.get(k) == v for k, v in want.items()):
            return cases, info
    t0 = time.perf_counter()
    if progress:
        progress("pipeline store (ingest + index on first use)")
    rs, _ds, split = pipeline_recsmith(store, dataset)
    seqs = [[split.item_ids[i] for i in s] for s in split.sequences]
    raw = build_cases(
        seqs,
        split.users,
        shortlister(rs),
        n_users,
        cuts_per_user,
        val_users,
        seed,
        progress=progress,
    )
    info = {
        **want,
        "users": n_users,
        "build_s": round(time.perf_counter() - t0, 1),
        **raw["meta"][0],
    }  # type: ignore[dict-item]
    save_cases(raw, path, info)
    return {k: raw[k] for k in ("train", "val", "test")}, info
