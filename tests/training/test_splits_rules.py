"""Splits, rule by rule: part sizes computed by hand, how whole groups are taken towards a target,
fold balance, reproducibility, and the exact error lines."""

from __future__ import annotations

import numpy as np
import pytest

from edgereg.errors import DatasetError
from edgereg.training.planning.splits import Split, _take_groups, kfold, make_split


def test_split_parts_become_sorted_int64_vectors_whatever_they_were_given_as():
    split = Split(train=np.array([[4.0, 0.0], [2.0, 6.0]]), val=(5,), test=[3, 1], mode="group", seed=7, fold=(1, 3))
    assert split.train.dtype == np.int64 and split.train.tolist() == [0, 2, 4, 6]
    assert split.val.tolist() == [5] and split.test.tolist() == [1, 3]
    assert len(split) == 7
    assert Split(train=[0, 1, 2], val=[3], test=[], mode="random", seed=0).__len__() == 4
    assert Split(train=[0], val=[], test=[1, 2, 3], mode="random", seed=0).__len__() == 4


def test_split_records_round_trip_with_and_without_a_fold():
    plain = Split(train=[0, 2], val=[1], test=[3], mode="random", seed=3)
    assert plain.to_dict() == {"mode": "random", "seed": 3, "fold": None, "train": [0, 2], "val": [1], "test": [3]}
    again = Split.from_dict(plain.to_dict())
    assert again.fold is None and again.seed == 3 and again.train.tolist() == [0, 2]
    folded = Split(train=[0], val=[], test=[1], mode="group", seed=1, fold=(2, 5))
    assert folded.to_dict()["fold"] == [2, 5] and Split.from_dict(folded.to_dict()).fold == (2, 5)


def test_split_errors_are_exact():
    with pytest.raises(DatasetError) as info:
        Split(train=[0], val=[], test=[], mode="stratified", seed=0)
    assert str(info.value) == "split mode must be one of ('random', 'group'), got 'stratified'"
    with pytest.raises(DatasetError) as info:
        Split(train=[0, -2], val=[], test=[], mode="random", seed=0)
    assert str(info.value) == "split indices must be >= 0, got -2"
    with pytest.raises(DatasetError) as info:
        Split(train=[0, 1], val=[1], test=[], mode="random", seed=0)
    assert str(info.value) == "split parts overlap: a row is in two of train/val/test; rebuild the split"


@pytest.mark.parametrize("n, val_frac, test_frac, sizes", [
    (100, 0.15, 0.2, (65, 15, 20)), (10, 0.01, 0.0, (9, 1, 0)), (7, 0.0, 0.3, (5, 0, 2)), (3, 0.3, 0.3, (1, 1, 1)),
])
def test_random_part_sizes_are_rounded_fractions_with_at_least_one_row(n, val_frac, test_frac, sizes):
    split = make_split(n, val_frac=val_frac, test_frac=test_frac, seed=4)
    assert (split.train.size, split.val.size, split.test.size) == sizes
    assert split.seed == 4 and split.mode == "random"


def test_default_seed_is_zero_and_reproducible():
    default, explicit = make_split(40), make_split(40, seed=0)
    assert default.seed == 0
    for a, b in ((default.train, explicit.train), (default.val, explicit.val), (default.test, explicit.test)):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(default.test, make_split(40, seed=1).test)
    grouped = make_split(40, mode="group", groups=np.arange(40) // 4, seed=5)
    assert grouped.seed == 5 and grouped.mode == "group"


@pytest.mark.parametrize("order, sizes, target, keep, expected", [
    ([0, 1, 2, 3], [10, 10, 10, 10], 15.0, 1, [0]),  # 10 + 10/2 reaches 15: stop at one group
    ([0, 1, 2, 3], [10, 10, 10, 10], 16.0, 1, [0, 1]),  # 10 + 5 < 16: take the second too
    ([0, 1, 2, 3], [4, 4, 4, 4], 6.5, 1, [0, 1]),  # 4 + 2 < 6.5
    ([0, 1, 2, 3], [4, 4, 4, 4], 10.0, 1, [0, 1]),  # 8 + 2 reaches 10
    ([0, 1, 2, 3, 4], [4, 4, 4, 4, 4], 11.0, 1, [0, 1, 2]),  # 8 + 2 < 11, then 12 + 2 >= 11
    ([3, 1, 0, 2], [2, 6, 3, 9], 100.0, 1, [3, 1, 0]),  # never the last `keep` groups
    ([3, 1, 0, 2], [2, 6, 3, 9], 100.0, 2, [3, 1]),
    ([3, 1, 0, 2], [2, 6, 3, 9], 100.0, 0, [3, 1, 0, 2]),
    ([2], [1, 1, 7], 100.0, 1, []),  # a single group is left for the other part
    ([0, 1], [5, 5], 0.0, 0, []),  # nothing asked, nothing taken
    ([0, 1, 2], [9, 1, 1], 2.0, 0, [0]),  # at least one group, even a big one
])
def test_groups_are_taken_while_they_bring_the_rows_nearer_the_target(order, sizes, target, keep, expected):
    assert _take_groups(order, np.array(sizes), target, keep=keep) == expected


def test_group_split_takes_test_then_validation_groups_near_their_fractions():
    groups = np.repeat(np.arange(10), 10)  # 10 groups of 10 rows
    split = make_split(100, mode="group", groups=groups, val_frac=0.2, test_frac=0.3, seed=2)
    assert (split.train.size, split.val.size, split.test.size) == (50, 20, 30)
    without_val = make_split(100, mode="group", groups=groups, val_frac=0.0, test_frac=0.9, seed=2)
    assert (without_val.train.size, without_val.val.size, without_val.test.size) == (10, 0, 90)  # keeps 1 to train
    with_val = make_split(100, mode="group", groups=groups, val_frac=0.05, test_frac=0.9, seed=2)
    assert (with_val.train.size, with_val.val.size, with_val.test.size) == (10, 10, 80)  # keeps 1 train + 1 val


def test_fraction_and_group_errors_are_exact():
    cases = [
        (lambda: make_split(10, val_frac=1.0), "val_frac must be in [0, 1), got 1.0"),
        (lambda: make_split(10, test_frac=1.5), "test_frac must be in [0, 1), got 1.5"),
        (lambda: make_split(10, test_frac=-0.1), "test_frac must be in [0, 1), got -0.1"),
        (lambda: make_split(10, val_frac=0.6, test_frac=0.5),
         "val_frac + test_frac must leave rows to train on, got 0.6 + 0.5 = 1.1 >= 1"),
        (lambda: make_split(10, test_groups=["a"]), "test_groups needs the group split (mode='group')"),
        (lambda: make_split(4, mode="group"), "a group split needs a group per row: add a 'group' column to "
                                              "labels.csv or use the random split"),
        (lambda: make_split(4, mode="group", groups=["a", "b"]), "expected 4 group labels (one per row), got 2"),
        (lambda: make_split(3, mode="group", groups=["a", "a", "b"], val_frac=0.3, test_frac=0.3),
         "too few groups to split: 2 group(s) cannot fill 3 parts (train, val, test) with whole groups; add "
         "groups, set a fraction to 0, or use the random split"),
        (lambda: make_split(2, val_frac=0.3, test_frac=0.3),
         "too few rows to split: 2 rows cannot give 1 validation, 1 test and at least 1 training row; add rows "
         "or lower val/test fractions"),
    ]
    for call, message in cases:
        with pytest.raises(DatasetError) as info:
            call()
        assert str(info.value) == message


@pytest.mark.parametrize("n_groups, listing", [
    (12, "the 12 groups are: g00, g01, g02, g03, g04, g05, g06, g07, g08, g09, g10, g11"),
    (13, "the 13 groups are: g00, g01, g02, g03, g04, g05, g06, g07, g08, g09, g10, g11, ..."),
])
def test_unknown_test_group_lists_at_most_twelve_groups(n_groups, listing):
    groups = [f"g{i:02d}" for i in range(n_groups)]
    with pytest.raises(DatasetError) as info:
        make_split(n_groups, mode="group", groups=groups, test_groups=["zz"])
    assert str(info.value) == f"unknown test group 'zz'; {listing}"


def test_kfold_deals_the_largest_groups_first_for_balanced_folds():
    groups = np.repeat(["big", "a", "b", "c", "d", "e"], [5, 1, 1, 1, 1, 1])
    for seed in range(5):
        sizes = sorted(split.test.size for split in kfold(10, 2, groups=groups, seed=seed))
        assert sizes == [5, 5], seed


def test_kfold_with_validation_keeps_every_row_in_one_part_and_is_reproducible():
    for groups in (None, np.repeat(np.arange(12), 3)):
        folds = list(kfold(36, 3, groups=groups, seed=9, val_frac=0.2))
        again = list(kfold(36, 3, groups=groups, seed=9, val_frac=0.2))
        for i, (split, same) in enumerate(zip(folds, again)):
            assert split.fold == (i, 3) and split.seed == 9
            assert split.mode == ("random" if groups is None else "group")
            everything = np.concatenate([split.train, split.val, split.test])
            np.testing.assert_array_equal(np.sort(everything), np.arange(36))
            assert split.val.size > 0 and split.test.size == 12
            for a, b in ((split.train, same.train), (split.val, same.val), (split.test, same.test)):
                np.testing.assert_array_equal(a, b)
        assert list(kfold(36, 3, groups=groups))[0].seed == 0


def test_kfold_accepts_as_many_rows_or_groups_as_folds_and_no_fewer():
    assert [s.test.tolist() for s in kfold(3, 3, seed=0)] and all(s.test.size == 1 for s in kfold(3, 3))
    assert all(s.test.size == 2 for s in kfold(6, 3, groups=["a", "a", "b", "b", "c", "c"]))
    with pytest.raises(DatasetError) as info:
        list(kfold(2, 3))
    assert str(info.value) == "too few rows for 3-fold: got 2; use fewer folds or more rows"
    with pytest.raises(DatasetError) as info:
        list(kfold(4, 3, groups=["a", "a", "b", "b"]))
    assert str(info.value) == "too few groups for 3-fold: got 2 group(s); use at most 2 folds, or the random k-fold"
    with pytest.raises(DatasetError) as info:
        list(kfold(10, 1))
    assert str(info.value) == "k-fold needs k >= 2 folds, got 1"
    with pytest.raises(DatasetError) as info:
        list(kfold(10, 2, val_frac=0.5))
    assert str(info.value) == "val_frac=0.5 leaves no training rows in a 2-fold split; lower val_frac or use more folds"
