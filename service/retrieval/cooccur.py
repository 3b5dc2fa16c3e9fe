"""Item-to-item co-interaction: items that appear close together in users' histories.

Counts pairs within a sliding window of each user's time-ordered history (closer pairs
weigh more), then normalises by item popularity (cosine), the classic item-kNN signal.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence

from service.catalog.models import EVENT_WEIGHT


class CoInteraction:
    def __init__(self, window: int = 10) -> None:
        self.window = window
        self.pairs: dict[str, Counter[str]] = defaultdict(Counter)
        self.popularity: Counter[str] = Counter()

    @classmethod
    def build(cls, log: Iterable[tuple[str, str, str, object]], window: int = 10) -> CoInteraction:
        """log rows: (user_id, product_id, event, ts), ordered by user then time."""
        self = cls(window)
        user: str | None = None
        seq: list[str] = []
        for uid, pid, event, _ts in log:
            if uid != user:
                self._add_sequence(seq)
                user, seq = uid, []
            self.popularity[pid] += EVENT_WEIGHT.get(event, 1.0)
            if not seq or seq[-1] != pid:
                seq.append(pid)
        self._add_sequence(seq)
        return self

    def _add_sequence(self, seq: Sequence[str]) -> None:
        for i, a in enumerate(seq):
            for d in range(1, self.window + 1):
                if i + d >= len(seq):
                    break
                b = seq[i + d]
                if a == b:
                    continue
                w = 1.0 / d
                self.pairs[a][b] += w
                self.pairs[b][a] += w

    def __bool__(self) -> bool:
        return bool(self.pairs)

    def neighbours(self, weighted_items: dict[str, float], k: int) -> list[tuple[str, float]]:
        """Items co-occurring with the given (item -> weight) set, cosine-normalised."""
        scores: Counter[str] = Counter()
        for item, w in weighted_items.items():
            pa = self.popularity.get(item, 0.0) or 1.0
            for other, c in self.pairs.get(item, {}).items():
                pb = self.popularity.get(other, 0.0) or 1.0
                scores[other] += w * c / math.sqrt(pa * pb)
        for item in weighted_items:
            scores.pop(item, None)
        return scores.most_common(k)

    def most_popular(self, k: int) -> list[tuple[str, float]]:
        return [(pid, float(c)) for pid, c in self.popularity.most_common(k)]
