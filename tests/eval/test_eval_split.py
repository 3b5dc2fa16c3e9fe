"""The LlamaRec split: time order, tie-breaks, and no target ever in its own history."""

from __future__ import annotations

import random

import numpy as np
import pytest

from eval.baselines import EASE, ItemKNN, Popularity
from service.catalog.models import Event, Interaction, Product
from service.offline.datasets import Dataset
from service.offline.split import leave_last_two_out, user_history


def make_dataset(rows: list[tuple[str, str, int]], n_items: int = 10) -> Dataset:
    products = [Product(id=f"p{i}", title=f"Item {i}") for i in range(n_items)]
    log = [
        Interaction(user_id=u, product_id=p, event=Event.rating, value=1.0, ts=t)
        for u, p, t in rows
    ]
    return Dataset("toy", products, log)


def random_dataset(seed: int, users: int = 40, n_items: int = 25) -> Dataset:
    rng = random.Random(seed)
    rows = []
    for u in range(users):
        for _ in range(rng.randint(1, 15)):
            # Few distinct timestamps (many ties) and repeats of the same item.
            rows.append((f"u{u}", f"p{rng.randrange(n_items)}", rng.randrange(5)))
    return make_dataset(rows, n_items)


def test_time_order_and_targets() -> None:
    ds = make_dataset([("a", "p3", 30), ("a", "p1", 10), ("a", "p2", 20), ("a", "p0", 40)])
    split = leave_last_two_out(ds)
    (seq,) = split.sequences
    assert [split.item_ids[i] for i in seq] == ["p1", "p2", "p3", "p0"]
    assert split.targets("test").tolist() == [0]
    assert split.targets("val").tolist() == [3]
    assert split.history("test")[0].tolist() == [1, 2, 3]
    assert split.history("val")[0].tolist() == [1, 2]


def test_time_ties_original_order_or_item_id() -> None:
    # p5 and p2 share the last timestamp; p5 comes first in the log.
    rows = [("a", "p7", 1), ("a", "p5", 9), ("a", "p2", 9)]
    ds = make_dataset(rows)
    assert leave_last_two_out(ds, "original").targets("test").tolist() == [2]
    assert leave_last_two_out(ds, "item_id").targets("test").tolist() == [5]


def test_repeats_count_once_and_short_users_are_dropped() -> None:
    rows = [("a", "p1", 1), ("a", "p2", 2), ("a", "p1", 3), ("a", "p3", 4), ("b", "p1", 1),
            ("b", "p1", 2), ("b", "p2", 3)]  # fmt: skip
    split = leave_last_two_out(make_dataset(rows))
    assert split.users == ["a"]
    assert split.dropped_users == 1  # b has only 2 distinct items
    assert split.sequences[0].tolist() == [1, 2, 3]


def test_user_history_needs_three_items() -> None:
    with pytest.raises(ValueError):
        user_history(np.array([1, 2]), "test")


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("tie_break", ["original", "item_id"])
def test_the_target_never_leaks_into_the_history(seed: int, tie_break: str) -> None:
    split = leave_last_two_out(random_dataset(seed), tie_break)  # type: ignore[arg-type]
    for target in ("val", "test"):
        hist, tgt = split.history(target), split.targets(target)
        x = split.matrix(target).toarray()
        for r in range(len(split.users)):
            assert tgt[r] not in hist[r]
            assert x[r, tgt[r]] == 0  # nor in what models are fitted on
        if target == "val":  # the test target is in the future of the validation input
            for r, t in enumerate(split.targets("test")):
                assert t not in hist[r]
                assert x[r, t] == 0


def test_the_target_is_strictly_later_than_its_history() -> None:
    ds = random_dataset(7)
    split = leave_last_two_out(ds, "original")
    times: dict[tuple[str, str], float] = {}
    for it in ds.interactions:  # an item's time is its earliest interaction
        key = (it.user_id, it.product_id)
        times[key] = min(times.get(key, np.inf), it.ts.timestamp())
    for user, hist, tgt in zip(
        split.users, split.history("test"), split.targets("test"), strict=True
    ):
        t_target = times[(user, split.item_ids[tgt])]
        assert all(times[(user, split.item_ids[i])] <= t_target for i in hist)


def test_baselines_by_hand() -> None:
    rng = np.random.default_rng(1)
    x = (rng.random((30, 12)) < 0.3).astype(np.float64)
    histories = [np.flatnonzero(row) for row in x]
    pop = Popularity()
    pop.fit(histories, 12)
    assert pop.score(np.arange(2))[0].tolist() == x.sum(0).tolist()
    knn = ItemKNN()
    knn.fit(histories, 12)
    norm = np.sqrt(x.sum(0))
    cos = (x.T @ x) / np.outer(np.maximum(norm, 1e-12), np.maximum(norm, 1e-12))
    assert knn.score(np.arange(30)) == pytest.approx(x @ cos, rel=1e-4, abs=1e-5)
    last = ItemKNN(last_n=2, decay=0.5)
    last.fit(histories, 12)
    w = np.zeros_like(x)
    for r, h in enumerate(histories):
        if len(h):
            w[r, h[-1]] = 1.0
        if len(h) > 1:
            w[r, h[-2]] = 0.5
    assert last.score(np.arange(30)) == pytest.approx(w @ cos, rel=1e-4, abs=1e-5)
    ease = EASE(lam=5.0)
    ease.fit(histories, 12)
    p = np.linalg.inv(x.T @ x + 5.0 * np.eye(12))
    b = np.eye(12) - p / np.diag(p)[None, :]
    assert ease.score(np.arange(30)) == pytest.approx(x @ b, rel=1e-3, abs=1e-4)
