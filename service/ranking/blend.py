"""The LLM stage blended with its own shortlist, so it cannot do worse than the shortlist
on the target it was fitted on.

    blended_i = (1 - w) * z(retrieval score)_i + w * z(LLM score)_i

z() standardises within the one shortlist (mean 0, sd 1; a constant list is all zeros),
ties keep the shortlist order. w = 0 is exactly the shortlist order (the retrieval scores
are sorted already), w = 1 exactly the LLM's. w is fitted offline on each user's
validation item over a grid that includes 0 (eval: `fit_blend`), so on that target the
blend is at least as good as the shortlist by construction; it is saved as
`<data dir>/artefacts/rerank_blend.json` with its validation metrics, and the service
loads it at start-up. Missing: the LLM order as before (w = 1). Unreadable: a warning,
w = 1 and a `degraded` status; strict: an error naming the file.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from service.files import ArtefactStatus, read_json_artefact, versioned, write_json_atomic

BLEND_FORMAT = 1
BLEND_FILE = Path("artefacts") / "rerank_blend.json"  # relative to the data directory
WEIGHT_GRID = tuple(round(0.05 * i, 2) for i in range(21))  # 0, 0.05, …, 1


class BlendError(ValueError):
    """An artefact that cannot be used (strict mode raises it; otherwise a warning)."""


def _z(values: Sequence[float]) -> list[float]:
    n = len(values)
    if n == 0:
        return []
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / n)
    if not math.isfinite(sd) or sd <= 1e-12:
        return [0.0] * n
    return [(v - mean) / sd for v in values]


@dataclass
class RerankBlend:
    weight: float  # on the LLM's score; 0 = the shortlist order, 1 = the LLM's order
    info: dict[str, Any] = field(default_factory=dict)  # validation metrics, users, model

    def scores(self, retrieval: Sequence[float], llm: Sequence[float]) -> list[float]:
        """Blended scores in shortlist order (retrieval sorted best first)."""
        if len(retrieval) != len(llm):
            raise ValueError(f"{len(retrieval)} retrieval scores but {len(llm)} LLM scores")
        w = self.weight
        if w <= 0.0:  # exactly the shortlist: nothing the LLM said can move an item
            return [-float(i) for i in range(len(retrieval))]
        zr, zl = _z([float(x) for x in retrieval]), _z([float(x) for x in llm])
        return [(1.0 - w) * a + w * b for a, b in zip(zr, zl, strict=True)]

    def order(self, retrieval: Sequence[float], llm: Sequence[float]) -> list[int]:
        """Shortlist positions, best first; ties keep the shortlist order."""
        s = self.scores(retrieval, llm)
        return sorted(range(len(s)), key=lambda i: (-s[i], i))

    # -- persistence --------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"format": BLEND_FORMAT, "kind": "zscore_linear", **asdict(self)}

    @classmethod
    def from_dict(cls, data: Any) -> RerankBlend:
        data = versioned(data, BLEND_FORMAT, BlendError)
        w = data.get("weight")
        if isinstance(w, bool) or not isinstance(w, int | float) or not 0.0 <= w <= 1.0:
            raise BlendError(f"weight must be a number in [0, 1], got {w!r}")
        info = data.get("info", {})
        return cls(float(w), info if isinstance(info, dict) else {})

    def save(self, path: Path) -> Path:
        return write_json_atomic(path, self.to_dict())


def load_blend(path: Path, strict: bool = False) -> tuple[RerankBlend | None, ArtefactStatus]:
    """The artefact at `path`, or None (the LLM's own order) with the reason."""
    blend, state, reason = read_json_artefact(
        path,
        RerankBlend.from_dict,
        BlendError,
        strict,
        what="rerank blend",
        missing=f"no rerank blend at {path}: the LLM's order as it is",
        strict_hint="strict: fit one with `recsmith eval rerank-blend`",
        fallback="LLM order as is",
    )
    return blend, ArtefactStatus(state, str(path), reason)
