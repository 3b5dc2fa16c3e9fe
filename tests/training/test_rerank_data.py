"""LlamaRec prompts at several cut points per user from a shortlist function: a cut point is
kept only when the shortlist holds its answer, candidates are shuffled (training), test
cases keep the served order, and no validation/test item leaks into a training prompt."""

from __future__ import annotations

from pathlib import Path

from service.training.rerank_data import build_cases, load_cases, save_cases

ITEMS = [f"i{n}" for n in range(60)]


def _top(history: list[str]) -> list[str]:
    """A deterministic 'pipeline': the 20 items after the last one seen, unseen ones only."""
    last = int(history[-1][1:])
    return [f"i{(last + d) % 60}" for d in range(1, 40) if f"i{(last + d) % 60}" not in history][
        :20
    ]


def test_cut_points_val_and_test_cases(tmp_path: Path) -> None:
    seqs = [[f"i{(u * 7 + k) % 60}" for k in range(12)] for u in range(10)]
    users = [f"u{u}" for u in range(10)]
    cases = build_cases(seqs, users, _top, n_users=None, cuts_per_user=3, val_users=2, seed=1)
    train, val, test = cases["train"], cases["val"], cases["test"]
    assert len(test) == 10 and len(val) == 2
    assert len(train) == 8 * 3  # every cut point's next item is in this shortlist
    val_users = {c.user for c in val}
    assert not val_users & {c.user for c in train}
    by_user = {u: s for u, s in zip(users, seqs, strict=True)}
    shuffled = 0
    for c in train:
        s = by_user[c.user]
        assert c.target in s[:-2] and c.history == s[: s.index(c.target)]  # never s[-2:]
        assert sorted(c.candidates) == sorted(_top(c.history)) and c.label >= 0
        shuffled += c.candidates != _top(c.history)
    assert shuffled > len(train) // 2
    for c in test:
        assert c.candidates == _top(c.history)  # served order
        assert c.target == by_user[c.user][-1]
    # The last cut point of each user comes first (LlamaRec's own example).
    firsts = {}
    for c in train:
        firsts.setdefault(c.user, c)
    assert all(len(c.history) == 9 for c in firsts.values())
    save_cases(cases, tmp_path / "c.json", {"dataset": "toy"})
    again, info = load_cases(tmp_path / "c.json")
    assert info == {"dataset": "toy"} and again["train"] == train


def test_a_cut_point_whose_answer_is_not_retrieved_is_skipped() -> None:
    seqs = [[f"i{k * 3}" for k in range(10)]]  # next item always 3 ahead: only _top's reach

    def narrow(history: list[str]) -> list[str]:
        return [p for p in _top(history)[:2]]  # holds i(last+1), i(last+2): never the answer

    cases = build_cases(seqs, ["u"], narrow, None, cuts_per_user=3, val_users=0)
    assert cases["train"] == []
    assert cases["test"][0].label == -1
