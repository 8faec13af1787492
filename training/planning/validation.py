"""How a run validates: one holdout split or grouped k-fold, chosen from the groups in the data,
and the unseen photos of training groups held back to measure memorisation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edgereg.errors import DatasetError
from edgereg.training.config import TrainConfig
from edgereg.training.planning.loading import LoadedData
from edgereg.training.planning.splits import Split, kfold, make_split

FEW_GROUPS = 10  # fewer groups than this: grouped k-fold out-of-fold scores, then a refit on all rows
MIN_HELD_GROUPS = 3  # a held-out part (validation or test) has at least this many whole groups
MIN_GROUP_VAL_FRAC = 0.2  # ... and at least this share of the rows
MAX_FOLDS = 3  # few groups: 3 folds keep >= 3 groups and >= 20 % of the rows in each held-out part


@dataclass(frozen=True)
class ValidationPlan:
    """How a run validates (chosen from the data, printed with its reason).

    * ``holdout``: one split (random rows, or whole groups: >= 3 groups and >= 20 % of the rows
      for validation, >= 3 groups for an internal test);
    * ``kfold``: few groups: grouped k-fold, each fold's held-out groups are its validation part;
      the out-of-fold predictions score the configuration, then a refit on every row gives the model.
    """

    mode: str  # "holdout" | "kfold"
    split: Any  # the holdout split, or fold 0 (what the race validates on)
    folds: tuple = ()  # kfold: every fold's Split (held-out groups in .val)
    refit: bool = False  # train the final model on train + val with the chosen settings
    reason: str = ""


def plan_validation(loaded: LoadedData, config: TrainConfig, *, external_test: bool = False) -> ValidationPlan:
    """Choose the validation scheme from the groups in the data (see :class:`ValidationPlan`)."""
    groups = loaded.dataset.groups
    n = len(loaded.dataset.targets)
    mode = config.split
    if mode == "auto":
        mode = "group" if groups is not None else "random"
    if mode == "group" and groups is None:
        raise DatasetError("--split group needs a 'group' column in labels.csv; add one or use --split random")
    test_frac = 0.0 if external_test else config.test_frac
    if mode == "group":
        n_groups = len(np.unique(np.asarray(groups).astype(str)))
        if config.test_groups:
            split = make_split(n, mode="group", groups=groups, val_frac=max(config.val_frac, MIN_GROUP_VAL_FRAC),
                               test_frac=0.0, seed=config.seed, test_groups=list(config.test_groups),
                               min_groups=MIN_HELD_GROUPS)
            return ValidationPlan("holdout", split, refit=bool(config.refit),
                                  reason=f"test groups {', '.join(config.test_groups)} as asked; validation "
                                         f"holds out whole groups")
        if n_groups >= FEW_GROUPS:
            val_frac = max(config.val_frac, MIN_GROUP_VAL_FRAC)
            try:
                split = make_split(n, mode="group", groups=groups, val_frac=val_frac, test_frac=test_frac,
                                   seed=config.seed, min_groups=MIN_HELD_GROUPS)
                why = "" if test_frac == 0 else f"; test {test_frac:.0%} of the rows in >= {MIN_HELD_GROUPS} groups"
            except DatasetError:
                split = make_split(n, mode="group", groups=groups, val_frac=val_frac, test_frac=0.0,
                                   seed=config.seed, min_groups=MIN_HELD_GROUPS)
                why = f"; no internal test: too few groups for {MIN_HELD_GROUPS} more"
            return ValidationPlan("holdout", split, refit=bool(config.refit),
                                  reason=f"{n_groups} groups: validation holds out >= {MIN_HELD_GROUPS} whole "
                                         f"groups and >= {val_frac:.0%} of the rows{why}")
        if n_groups >= 2:
            k = min(n_groups, MAX_FOLDS)
            folds = tuple(Split(train=s.train, val=s.test, test=np.zeros(0, dtype=np.int64), mode="group",
                                seed=s.seed, fold=s.fold)
                          for s in kfold(n, k, groups=groups, seed=config.seed))
            return ValidationPlan("kfold", folds[0], folds, refit=True if config.refit is None else config.refit,
                                  reason=f"only {n_groups} groups (< {FEW_GROUPS}): grouped {k}-fold, scored out of "
                                         f"fold, then the model is refitted on every row")
        mode = "random"
        note = "a single group: rows are split at random (scores say nothing about new groups); "
    else:
        note = ""
    split = make_split(n, mode="random", val_frac=config.val_frac, test_frac=test_frac, seed=config.seed)
    return ValidationPlan("holdout", split, refit=bool(config.refit),
                          reason=f"{note}random rows: validation {config.val_frac:.0%}"
                                 + ("" if test_frac == 0 else f", test {test_frac:.0%}"))


def make_run_split(loaded: LoadedData, config: TrainConfig):
    """The run's validation split (fold 0 under k-fold); see :func:`plan_validation`."""
    return plan_validation(loaded, config).split


def seen_group_rows(split, groups: np.ndarray | None, *, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Hold back unseen photos of *training* groups, to compare with the held-out groups' error.

    Only rows of groups that keep at least one other training row are eligible, so every training
    group is still trained on.

    Returns:
        (train rows to fit, seen-group check rows), both sorted int64.
    """
    train = np.asarray(split.train, dtype=np.int64)
    if split.mode != "group" or groups is None or fraction <= 0 or len(train) < 20:
        return train, np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng(seed + 7919)
    labels = np.asarray(groups).astype(str)[train]
    order = rng.permutation(len(train))
    remaining = {g: c for g, c in zip(*np.unique(labels, return_counts=True))}
    chosen = []
    for i in order:
        if len(chosen) >= int(round(fraction * len(train))):
            break
        if remaining[labels[i]] > 1:
            remaining[labels[i]] -= 1
            chosen.append(i)
    seen = np.sort(train[chosen])
    return np.setdiff1d(train, seen), seen

