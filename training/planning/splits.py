"""Train / validation / test splits: random, group-held-out, and k-fold.

A group is whatever must never straddle two parts: the sample a set of photos was taken of, the
size distribution a set of gravel photos share, the quadrant a box sits in. ``mode="group"`` keeps
every group whole, so a validation score says how the model does on *new* samples rather than on
new photos of samples it has memorised.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from edgereg.errors import DatasetError, did_you_mean

MODES = ("random", "group")


@dataclass(frozen=True, eq=False)
class Split:
    """Row indices of the three parts of a dataset; disjoint, each sorted ascending.

    Attributes:
        train: (n_train,) int64 indices the model is fitted on.
        val: (n_val,) int64 indices for model selection (early stopping, learning rate).
        test: (n_test,) int64 indices reported once, at the end.
        mode: "random" or "group".
        seed: the seed the split was drawn with.
        fold: (index, k) for a k-fold split, else None.
    """

    train: np.ndarray  # fitted on
    val: np.ndarray  # selects the model; empty when val_frac is 0
    test: np.ndarray  # the honest score; empty when test_frac is 0
    mode: str  # "group" keeps each group in one part
    seed: int  # reproduces the split
    fold: tuple[int, int] | None = None  # (i, k) of a k-fold split

    def __post_init__(self) -> None:
        parts = {}
        for name in ("train", "val", "test"):
            part = np.array(getattr(self, name), dtype=np.int64).reshape(-1)  # any sequence -> (n,)
            part.sort()
            part.setflags(write=False)
            object.__setattr__(self, name, part)
            parts[name] = part
        if self.mode not in MODES:
            raise DatasetError(f"split mode must be one of {MODES}, got {self.mode!r}")
        everything = np.concatenate(list(parts.values()))
        if everything.size and everything.min() < 0:
            raise DatasetError(f"split indices must be >= 0, got {int(everything.min())}")
        if np.unique(everything).size != everything.size:
            raise DatasetError("split parts overlap: a row is in two of train/val/test; rebuild the split")

    def __len__(self) -> int:
        return self.train.size + self.val.size + self.test.size

    def to_dict(self) -> dict:
        """JSON-ready form (lists of ints), inverse of :meth:`from_dict`."""
        return {"mode": self.mode, "seed": self.seed, "fold": list(self.fold) if self.fold else None,
                "train": self.train.tolist(), "val": self.val.tolist(), "test": self.test.tolist()}

    @classmethod
    def from_dict(cls, data: dict) -> Split:
        """Rebuild a split written by :meth:`to_dict` (e.g. from run.json)."""
        try:
            fold = tuple(data["fold"]) if data.get("fold") else None
            return cls(train=data["train"], val=data["val"], test=data["test"], mode=data["mode"],
                       seed=int(data["seed"]), fold=fold)
        except (KeyError, TypeError, ValueError) as exc:
            raise DatasetError(f"malformed split record ({exc!r}); expected keys train, val, test, mode, "
                               f"seed as written by Split.to_dict()") from None


def _check_fractions(val_frac: float, test_frac: float) -> None:
    for name, value in (("val_frac", val_frac), ("test_frac", test_frac)):
        if not 0.0 <= value < 1.0:
            raise DatasetError(f"{name} must be in [0, 1), got {value}")
    if val_frac + test_frac >= 1.0:
        raise DatasetError(f"val_frac + test_frac must leave rows to train on, got "
                           f"{val_frac} + {test_frac} = {val_frac + test_frac:g} >= 1")


def _as_groups(groups: Sequence | np.ndarray | None, n: int) -> np.ndarray:
    """(n,) array of group labels as str, or DatasetError when missing or of the wrong length."""
    if groups is None:
        raise DatasetError("a group split needs a group per row: add a 'group' column to labels.csv "
                           "or use the random split")
    labels = np.asarray([str(g) for g in groups], dtype=object)
    if labels.shape != (n,):
        raise DatasetError(f"expected {n} group labels (one per row), got {labels.shape[0]}")
    return labels


def _part_count(n: int, fraction: float) -> int:
    """Rows for a part: the rounded fraction, at least one when the fraction is not 0."""
    return 0 if fraction == 0 else max(1, round(fraction * n))


def make_split(n: int, *, mode: str = "random", groups: Sequence | np.ndarray | None = None,
               val_frac: float = 0.15, test_frac: float = 0.15, seed: int = 0,
               test_groups: Sequence[str] | None = None, min_groups: int = 1) -> Split:
    """Split ``n`` rows into train, validation and test parts.

    ``random`` shuffles rows. ``group`` shuffles whole groups and takes them into the test part
    until it holds ``test_frac`` of the rows, then into validation likewise; the rest train. Named
    ``test_groups`` (e.g. ``["q3"]`` for a box-quadrant hold-out) form the test part exactly and
    ``test_frac`` is then ignored.

    Args:
        n: number of rows.
        mode: "random" or "group".
        groups: (n,) group label per row; required for "group", ignored by "random".
        val_frac: fraction of rows for validation, in [0, 1).
        test_frac: fraction of rows for the test part, in [0, 1).
        seed: random seed.
        test_groups: group labels to hold out as the test part (group mode only).
        min_groups: group mode: each held-out part asked for (validation, and test unless
            ``test_groups`` names it) gets at least this many whole groups.

    Returns:
        A Split; in group mode no group has rows in two parts.

    Raises:
        DatasetError: too few rows or groups for the requested parts, unknown test groups, bad
            fractions or mode.
    """
    if mode not in MODES:
        raise DatasetError(f"unknown split mode {mode!r}{did_you_mean(mode, MODES)}; use one of {MODES}")
    _check_fractions(val_frac, test_frac)
    rng = np.random.default_rng(seed)
    if mode == "random":
        if test_groups:
            raise DatasetError("test_groups needs the group split (mode='group')")
        n_test, n_val = _part_count(n, test_frac), _part_count(n, val_frac)
        if n - n_test - n_val < 1:
            raise DatasetError(f"too few rows to split: {n} rows cannot give {n_val} validation, {n_test} "
                               f"test and at least 1 training row; add rows or lower val/test fractions")
        order = rng.permutation(n)
        return Split(train=order[n_test + n_val:], val=order[n_test:n_test + n_val], test=order[:n_test],
                     mode=mode, seed=seed)

    labels = _as_groups(groups, n)
    names, inverse, sizes = np.unique(labels, return_inverse=True, return_counts=True)
    chosen_test: list[int] = []
    if test_groups:
        for name in test_groups:
            where = np.flatnonzero(names == str(name))
            if where.size == 0:
                raise DatasetError(f"unknown test group {name!r}{did_you_mean(str(name), names.tolist())}; "
                                   f"the {names.size} groups are: {', '.join(names[:12].tolist())}"
                                   + (", ..." if names.size > 12 else ""))
            chosen_test.append(int(where[0]))
    order = [g for g in rng.permutation(names.size).tolist() if g not in chosen_test]
    if not test_groups:
        keep = 1 + (min_groups if val_frac > 0 else 0)  # train, val
        chosen_test = _take_groups(order, sizes, test_frac * n, keep=keep, min_groups=min_groups)
        order = [g for g in order if g not in chosen_test]
    chosen_val = _take_groups(order, sizes, val_frac * n, keep=1, min_groups=min_groups)  # train
    chosen_train = [g for g in order if g not in chosen_val]
    required = {"train": chosen_train}  # every part asked for must get at least one whole group
    if val_frac > 0:
        required["val"] = chosen_val
    if test_frac > 0 or test_groups:
        required["test"] = chosen_test
    short = {part: len(chosen) for part, chosen in required.items() if part != "train" and len(chosen) < min_groups
             and not (part == "test" and test_groups)}
    if not all(required.values()) or short:
        raise DatasetError(f"too few groups to split: {names.size} group(s) cannot fill {len(required)} parts "
                           f"({', '.join(required)}) with whole groups; add groups, set a fraction to 0, "
                           f"or use the random split")
    part_of_group = np.full(names.size, 0)  # 0 train, 1 val, 2 test
    part_of_group[chosen_val] = 1
    part_of_group[chosen_test] = 2
    row_part = part_of_group[inverse]  # (n_groups,)[(n,)] -> (n,)
    return Split(train=np.flatnonzero(row_part == 0), val=np.flatnonzero(row_part == 1),
                 test=np.flatnonzero(row_part == 2), mode=mode, seed=seed)


def _take_groups(order: list[int], sizes: np.ndarray, target_rows: float, *, keep: int,
                 min_groups: int = 1) -> list[int]:
    """Groups from the front of ``order`` for one held-out part; never the last ``keep`` groups
    (left for the other parts).

    With ``min_groups == 1``: one group at least when ``target_rows > 0``, then each next group
    while that brings the total nearer the target. With ``min_groups > 1`` the part must hold at
    least ``min_groups`` groups and at least ``target_rows`` rows: groups are taken in order,
    passing over any that would more than double the target while smaller ones remain.
    """
    available = order[:max(0, len(order) - keep)]
    if target_rows <= 0:
        return []
    if min_groups <= 1:
        taken, rows = [], 0
        for g in available:
            if taken and rows + sizes[g] / 2 >= target_rows:
                break
            taken.append(g)
            rows += int(sizes[g])
        return taken
    taken, rows, passed = [], 0, []
    for g in available:
        if len(taken) >= min_groups and rows >= target_rows:
            break
        if rows + sizes[g] > 2 * target_rows and len(available) - len(passed) > min_groups:
            passed.append(g)
            continue
        taken.append(g)
        rows += int(sizes[g])
    for g in passed:  # still short: the big groups after all
        if len(taken) >= min_groups and rows >= target_rows:
            break
        taken.append(g)
        rows += int(sizes[g])
    return taken


def kfold(n: int, k: int, *, groups: Sequence | np.ndarray | None = None, seed: int = 0,
          val_frac: float = 0.0) -> Iterator[Split]:
    """Yield ``k`` splits whose test parts partition the rows (group k-fold when groups are given).

    With groups, whole groups are dealt to folds (largest first, each to the fold with the fewest
    rows so far, ties broken at random) so folds are balanced and no group is split. With
    ``val_frac > 0`` each fold's validation part is drawn from its training rows (whole groups
    when grouped).

    Args:
        n: number of rows.
        k: number of folds, >= 2.
        groups: (n,) group label per row, or None for a plain shuffled k-fold.
        seed: random seed.
        val_frac: fraction of all rows for validation in each fold, in [0, 1).

    Yields:
        Split with ``fold=(i, k)`` for i in 0..k-1.

    Raises:
        DatasetError: k < 2, fewer rows or groups than folds, or no rows left to train on.
    """
    if not isinstance(k, int) or k < 2:
        raise DatasetError(f"k-fold needs k >= 2 folds, got {k!r}")
    _check_fractions(val_frac, 0.0)
    rng = np.random.default_rng(seed)
    if groups is None:
        if n < k:
            raise DatasetError(f"too few rows for {k}-fold: got {n}; use fewer folds or more rows")
        fold_of_row = np.empty(n, dtype=np.int64)
        fold_of_row[rng.permutation(n)] = np.arange(n) % k
        labels = None
        mode = "random"
    else:
        labels = _as_groups(groups, n)
        names, inverse, sizes = np.unique(labels, return_inverse=True, return_counts=True)
        if names.size < k:
            raise DatasetError(f"too few groups for {k}-fold: got {names.size} group(s); use at most "
                               f"{names.size} folds, or the random k-fold")
        load = np.zeros(k, dtype=np.int64)
        fold_of_group = np.empty(names.size, dtype=np.int64)
        shuffled = rng.permutation(names.size)
        for g in shuffled[np.argsort(-sizes[shuffled], kind="stable")]:  # largest groups first
            lightest = np.flatnonzero(load == load.min())
            fold_of_group[g] = rng.choice(lightest)
            load[fold_of_group[g]] += sizes[g]
        fold_of_row = fold_of_group[inverse]  # (n_groups,)[(n,)] -> (n,)
        mode = "group"
    for i in range(k):
        test = np.flatnonzero(fold_of_row == i)
        rest = np.flatnonzero(fold_of_row != i)
        val = np.empty(0, dtype=np.int64)
        if val_frac > 0:
            inner_frac = val_frac * n / rest.size  # val_frac is of all rows; the fold draws from rest
            if inner_frac >= 1.0:
                raise DatasetError(f"val_frac={val_frac} leaves no training rows in a {k}-fold split; "
                                   f"lower val_frac or use more folds")
            inner = make_split(rest.size, mode=mode, groups=None if labels is None else labels[rest],
                               val_frac=inner_frac, test_frac=0.0, seed=seed + 1 + i)
            val, rest = rest[inner.val], rest[inner.train]
        yield Split(train=rest, val=val, test=test, mode=mode, seed=seed, fold=(i, k))
