"""Learned fusion of the retrieval sources: load, save, apply (serving side only).

A fused score is linear in two features per source:
    rank_weight[s] / (rrf_k + rank + 1)  +  score_weight[s] * score / |top score of s|
summed over the sources that returned the item (rank 0-based in that source's list).
With equal rank weights and no score weights this is the retriever's weighted RRF.
Sources the fusion holds no weight for (e.g. query sources when it was fitted on
history requests) keep the retriever's own `SourceWeights`.

The weights are fitted offline on each user's validation item (eval/fusion_fit.py) and
saved as JSON with their validation metrics, data version and encoder id; the service
loads the file at start-up. A missing file means today's defaults; an unreadable one a
warning, the defaults and a `degraded` status; with `strict`, either is an error.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from service.files import ArtefactStatus, read_json_artefact, versioned, write_json_atomic

logger = logging.getLogger("service.retrieval.fusion")

FUSION_FORMAT = 1
FUSION_FILE = Path("artefacts") / "fusion.json"  # relative to the data directory
DEFAULT_RRF_K = 60.0


class FusionError(ValueError):
    """An artefact that cannot be used (strict mode raises it; otherwise a warning)."""


@dataclass
class Fusion:
    rank_weights: dict[str, float]
    score_weights: dict[str, float] = field(default_factory=dict)
    rrf_k: float = DEFAULT_RRF_K
    # Provenance: created_at, data_version, encoder_id, validation metrics, fitted_on.
    info: dict[str, Any] = field(default_factory=dict)

    def scores(
        self,
        ranked: Mapping[str, Sequence[tuple[str, float]]],
        default_weight: Callable[[str], float] | None = None,
    ) -> dict[str, float]:
        """Fused score of every item in any source's list."""
        out: dict[str, float] = {}
        for source, items in ranked.items():
            rw = self.rank_weights.get(source)
            if rw is None:
                rw = default_weight(source) if default_weight else 0.0
            sw = self.score_weights.get(source, 0.0)
            top = max((abs(s) for _, s in items), default=0.0) if sw else 0.0
            for rank, (pid, score) in enumerate(items):
                v = rw / (self.rrf_k + rank + 1)
                if top > 0:
                    v += sw * float(score) / top
                out[pid] = out.get(pid, 0.0) + v
        return out

    # -- persistence --------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"format": FUSION_FORMAT, "kind": "linear_rank_score", **asdict(self)}

    @classmethod
    def from_dict(cls, data: Any) -> Fusion:
        data = versioned(data, FUSION_FORMAT, FusionError)

        def weights(key: str) -> dict[str, float]:
            raw = data.get(key, {})
            if not isinstance(raw, dict):
                raise FusionError(f"{key} must be an object of source -> number")
            out = {}
            for k, v in raw.items():
                if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                    raise FusionError(f"{key}.{k} must be a finite number, got {v!r}")
                out[str(k)] = float(v)
            return out

        rank_weights = weights("rank_weights")
        if not rank_weights:
            raise FusionError("rank_weights is empty")
        rrf_k = data.get("rrf_k", DEFAULT_RRF_K)
        if isinstance(rrf_k, bool) or not isinstance(rrf_k, int | float) or not rrf_k >= 0:
            raise FusionError(f"rrf_k must be a number >= 0, got {rrf_k!r}")
        info = data.get("info", {})
        info = info if isinstance(info, dict) else {}
        return cls(rank_weights, weights("score_weights"), float(rrf_k), info)

    def save(self, path: Path) -> Path:
        return write_json_atomic(path, self.to_dict())


@dataclass
class FusionStatus(ArtefactStatus):
    """What the retriever fuses with, for callers (readiness, responses, the CLI)."""

    info: dict[str, Any] = field(default_factory=dict)


def load_fusion(
    path: Path, strict: bool = False, encoder_id: str | None = None
) -> tuple[Fusion | None, FusionStatus]:
    """The artefact at `path`, or None with the reason. strict: missing, unreadable or
    fitted with another encoder raises FusionError with a message naming the file."""
    fusion, state, reason = read_json_artefact(
        path,
        Fusion.from_dict,
        FusionError,
        strict,
        what="fusion artefact",
        missing=f"no fusion artefact at {path}: weighted RRF with the default weights",
        strict_hint="strict fusion: fit one with `recsmith eval ranking`",
        fallback="default weights",
        log=logger,
    )
    if fusion is None:
        return None, FusionStatus(state, str(path), reason)
    fitted_encoder = fusion.info.get("encoder_id")
    if encoder_id and fitted_encoder and fitted_encoder != encoder_id:
        reason = (
            f"fusion artefact {path} was fitted with encoder {fitted_encoder!r}, "
            f"the service runs {encoder_id!r}"
        )
        if strict:
            raise FusionError(reason)
        logger.warning("%s; using it anyway", reason)
        return fusion, FusionStatus("degraded", str(path), reason, fusion.info)
    return fusion, FusionStatus("fitted", str(path), None, fusion.info)
