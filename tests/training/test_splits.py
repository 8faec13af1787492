"""Splits: every row in exactly one part, no group in two parts, folds that partition the data."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgereg.errors import DatasetError
from edgereg.training.planning.splits import Split, kfold, make_split


def parts_of(split: Split) -> list[np.ndarray]:
    return [split.train, split.val, split.test]


def assert_partition(split: Split, n: int) -> None:
    everything = np.concatenate(parts_of(split))
    assert everything.dtype == np.int64
    np.testing.assert_array_equal(np.sort(everything), np.arange(n))  # each row once


def assert_groups_whole(split: Split, groups: np.ndarray) -> None:
    seen = [set(groups[part]) for part in parts_of(split)]
    assert not (seen[0] & seen[1]) and not (seen[0] & seen[2]) and not (seen[1] & seen[2])


group_layouts = st.lists(st.integers(min_value=1, max_value=12), min_size=1, max_size=30)  # rows per group
fractions = st.sampled_from([0.0, 0.1, 0.15, 0.2, 0.3])


def expand(sizes: list[int], seed: int) -> np.ndarray:
    """Group labels for groups of ``sizes`` rows, shuffled."""
    labels = np.repeat([f"g{i}" for i in range(len(sizes))], sizes)
    return np.random.default_rng(seed).permutation(labels)


@settings(max_examples=150, deadline=None)
@given(sizes=group_layouts, val_frac=fractions, test_frac=fractions, seed=st.integers(0, 2**31))
def test_group_split_never_leaks_a_group(sizes, val_frac, test_frac, seed):
    groups = expand(sizes, seed)
    needed = 1 + (val_frac > 0) + (test_frac > 0)
    try:
        split = make_split(len(groups), mode="group", groups=groups, val_frac=val_frac, test_frac=test_frac,
                           seed=seed)
    except DatasetError as exc:
        assert "too few groups" in str(exc)
        assert len(sizes) < needed  # refused only when there are fewer groups than parts
        return
    assert_partition(split, len(groups))
    assert_groups_whole(split, groups)
    assert split.train.size > 0
    assert (split.val.size > 0) == (val_frac > 0) and (split.test.size > 0) == (test_frac > 0)


@settings(max_examples=100, deadline=None)
@given(n=st.integers(3, 400), val_frac=fractions, test_frac=fractions, seed=st.integers(0, 2**31))
def test_random_split_sizes_follow_the_fractions(n, val_frac, test_frac, seed):
    split = make_split(n, val_frac=val_frac, test_frac=test_frac, seed=seed)
    assert_partition(split, n)
    for part, fraction in ((split.val, val_frac), (split.test, test_frac)):
        assert abs(part.size - fraction * n) <= 1 or (fraction > 0 and part.size == 1)
        assert (part.size == 0) == (fraction == 0)


@settings(max_examples=100, deadline=None)
@given(sizes=group_layouts, k=st.integers(2, 6), val_frac=st.sampled_from([0.0, 0.1]), seed=st.integers(0, 2**31))
def test_group_kfold_test_parts_partition_the_data(sizes, k, val_frac, seed):
    groups = expand(sizes, seed)
    n = len(groups)
    try:
        folds = list(kfold(n, k, groups=groups, seed=seed, val_frac=val_frac))
    except DatasetError as exc:
        assert "too few" in str(exc) or "no training rows" in str(exc)
        return
    assert [f.fold for f in folds] == [(i, k) for i in range(k)]
    np.testing.assert_array_equal(np.sort(np.concatenate([f.test for f in folds])), np.arange(n))
    for fold in folds:
        assert_partition(fold, n)
        assert_groups_whole(fold, groups)
    loads = sorted(f.test.size for f in folds)
    assert loads[-1] - loads[0] <= max(sizes)  # balanced up to one group


def test_random_kfold_partitions_rows():
    folds = list(kfold(23, 4, seed=5))
    tests = [f.test for f in folds]
    np.testing.assert_array_equal(np.sort(np.concatenate(tests)), np.arange(23))
    assert sorted(t.size for t in tests) == [5, 6, 6, 6]
    assert all(f.mode == "random" and f.val.size == 0 for f in folds)


def test_named_test_groups_hold_out_a_quadrant(box_dir):
    import csv

    with open(box_dir / "labels.csv", newline="") as handle:
        groups = np.array([row["group"] for row in csv.DictReader(handle)])
    split = make_split(len(groups), mode="group", groups=groups, test_groups=["q3"], val_frac=0.2, seed=1)
    np.testing.assert_array_equal(split.test, np.flatnonzero(groups == "q3"))
    assert_partition(split, len(groups))
    assert_groups_whole(split, groups)
    assert "q3" not in set(groups[split.train]) | set(groups[split.val])


def test_same_seed_same_split_and_another_seed_differs():
    groups = np.repeat([f"s{i}" for i in range(30)], 4)
    a = make_split(120, mode="group", groups=groups, seed=4)
    b = make_split(120, mode="group", groups=groups, seed=4)
    c = make_split(120, mode="group", groups=groups, seed=5)
    assert all(np.array_equal(x, y) for x, y in zip(parts_of(a), parts_of(b)))
    assert not np.array_equal(a.test, c.test)


def test_split_round_trips_through_json():
    split = next(iter(kfold(20, 4, groups=np.repeat(list("abcde"), 4), seed=2, val_frac=0.1)))
    again = Split.from_dict(json.loads(json.dumps(split.to_dict())))
    assert all(np.array_equal(x, y) for x, y in zip(parts_of(split), parts_of(again)))
    assert (again.mode, again.seed, again.fold) == ("group", 2, (0, 4))


def test_split_parts_are_read_only_and_must_not_overlap():
    split = make_split(10, seed=0)
    with pytest.raises(ValueError):
        split.train[0] = 99
    with pytest.raises(DatasetError, match="overlap"):
        Split(train=[0, 1, 2], val=[2], test=[3], mode="random", seed=0)
    with pytest.raises(DatasetError, match="malformed split record"):
        Split.from_dict({"train": [0]})


@pytest.mark.parametrize("call, message", [
    (lambda: make_split(2), "too few rows to split: 2 rows"),
    (lambda: make_split(40, mode="group", groups=np.repeat(["a", "b"], 20)), "too few groups to split: 2 group"),
    (lambda: make_split(40, mode="group"), "needs a group per row"),
    (lambda: make_split(4, mode="group", groups=["a", "b", "c"]), "expected 4 group labels"),
    (lambda: make_split(8, mode="group", groups=list("aabbccdd"), test_groups=["e"]), "unknown test group 'e'"),
    (lambda: make_split(40, mode="grup"), "did you mean 'group'"),
    (lambda: make_split(40, val_frac=0.6, test_frac=0.4), "must leave rows to train on"),
    (lambda: make_split(40, test_groups=["a"]), "needs the group split"),
    (lambda: list(kfold(10, 4, groups=list("aaabbbcccc"))), "too few groups for 4-fold: got 3"),
    (lambda: list(kfold(3, 4)), "too few rows for 4-fold"),
    (lambda: list(kfold(10, 1)), "k >= 2"),
    (lambda: list(kfold(10, 2, val_frac=0.5)), "leaves no training rows"),
])
def test_clear_errors(call, message):
    with pytest.raises(DatasetError, match=message):
        call()


def test_unknown_test_group_suggests_one():
    groups = np.repeat(["q0", "q1", "q2", "quadrant3"], 5)
    with pytest.raises(DatasetError, match=r"did you mean 'quadrant3'"):
        make_split(20, mode="group", groups=groups, test_groups=["quadrant_3"])
