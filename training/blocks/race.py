"""Block readouts on the trainer's validation plan: candidates, baselines and, when best, the model.

Before the network is chosen, every candidate readout (:data:`CANDIDATES`) is fitted in closed form
on the validation plan's train rows and scored on its validation rows, or out of fold under k-fold:
the design the network is scored with. They are reported beside the mean and median baselines, and
the trainer ships the best readout instead of the network when its validation RMSE is lower: the
kit never ships a model that a classical reader beats on validation.

The blocks' raw features do not depend on the split (pixel values, not normalized inputs, go in),
so they are computed once for every row and each candidate and fold only slices them: the whole
race costs about one pass of the blocks over the data plus a few small linear solves. The template
block learns from the labels, so its features are computed per fold, from that fold's train rows.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from edgereg.core.kinds import target_kind
from edgereg.data.metrics import rmse_standard_error, sample_errors
from edgereg.training.blocks.features import BLOCKS
from edgereg.training.blocks.fitting import fit_from_plan, model_inputs, prepare_from_plan
from edgereg.training.blocks.readout import block_features, fit_head, readout_outputs

MODEL_NAME = "readout"
COMPACT_SET = "moments,colour,spectrum,bank"
LEARNS_FROM_LABELS = ("template",)  # blocks whose constants come from the training targets
# (blocks, hidden units, quadratic): each reader alone, the compact ones together with their
# squares, every block linearly, and every block through a small MLP
POINT_CANDIDATES = (("template", 0, False), ("template", 0, True))  # coordinate targets
CANDIDATES = (("moments", 0, False), ("colour", 0, False), ("spectrum", 0, True), ("bank", 0, False),
              ("tiles", 0, False), ("pixels", 0, False), (COMPACT_SET, 0, True),
              (COMPACT_SET + ",tiles,pixels", 0, False),
              (COMPACT_SET + ",tiles,pixels", 32, False))


@dataclass(frozen=True)
class ReadoutRace:
    """What :func:`race_readouts` found: scores, held-out predictions, and the blocks' cost."""

    scores: tuple  # ReadoutScore per fitted candidate, in candidate order
    predictions: dict  # label -> (true, pred) (N, T) in user units on the scored rows
    seconds_per_row: float = 0.0  # measured time of every block on one image
    rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # (N,) scored rows, in prediction order
    folds: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # (N,) the fold that held each out

    def best(self):
        """The candidate with the lowest validation RMSE (None when none was fitted)."""
        finite = [s for s in self.scores if np.isfinite(s.val_rmse)]
        return min(finite, key=lambda s: s.val_rmse) if finite else None


@dataclass(frozen=True)
class ReadoutScore:
    """One candidate readout's validation result."""

    blocks: str
    hidden: int
    quadratic: bool
    val_rmse: float
    val_se: float
    seconds: float
    fit: dict  # alpha / weight decay and the cross-validated error of the last fit

    def label(self) -> str:
        return (f"readout {self.blocks}" + (" +squares" if self.quadratic else "")
                + (f" mlp{self.hidden}" if self.hidden else ""))

    def kwargs(self) -> dict:
        return {"blocks": self.blocks, "hidden": self.hidden, "quadratic": self.quadratic}


def readout_plan(plan, blocks: str, hidden: int = 0, quadratic: bool = False):
    """``plan`` (a FitPlan) with the readout model and these options."""
    return replace(plan, model_name=MODEL_NAME,
                   model_kwargs={"blocks": blocks, "hidden": int(hidden), "quadratic": bool(quadratic)})


def fit_plan(plan, *, seed: int = 0):
    """A Regressor with the readout of ``plan`` fitted on ``plan.split.train``; (regressor, fit record)."""
    from edgereg.training.planning.fit_plan import new_regressor

    regressor = new_regressor(plan, seed).eval()
    record = fit_from_plan(regressor.model, regressor, plan, seed=seed)
    return regressor.eval(), record


class FeatureCache:
    """Raw features of some blocks for some rows, computed once; the blocks are prepared on ``plan``'s
    train rows (their 8-bit levels or quantiles, the template)."""

    def __init__(self, plan, blocks: tuple[str, ...], rows: np.ndarray, *, seed: int):
        from edgereg.training.planning.fit_plan import new_regressor

        full = readout_plan(plan, ",".join(blocks))
        regressor = new_regressor(full, seed).eval()
        self.rows = np.asarray(rows)
        self.position = {int(r): i for i, r in enumerate(self.rows)}
        inputs = model_inputs(regressor, full, self.rows)  # (N, C, H, W): every row preprocessed once
        train_at = np.array([self.position[int(r)] for r in np.asarray(full.split.train)], dtype=np.int64)
        prepare_from_plan(regressor.model, regressor, full, inputs[train_at])
        fixed = regressor.model.fixed_features
        x = block_features(regressor.model, inputs)  # (N, D)
        self.columns, start = {}, 0
        for name, block in zip(regressor.model.block_names, fixed.blocks):
            self.columns[name] = slice(start, start + block.n_features)
            start += block.n_features
        self.features = x

    def take(self, blocks: tuple[str, ...], rows: np.ndarray) -> np.ndarray:
        """(len(rows), D) raw features of ``blocks`` (in the readout's block order) for ``rows``."""
        at = np.array([self.position[int(r)] for r in rows], dtype=np.int64)
        return np.hstack([self.features[at, self.columns[b]] for b in blocks])


def held_out_predictions(caches: list[FeatureCache], plans: list, *, seed: int) -> tuple:
    """Fit each plan's readout on its train rows from cached features (``caches[k]`` for plan k),
    predict its val rows.

    Returns:
        (true, pred) in user units, the val rows, and the last fit record.
    """
    from edgereg.training.fitting.fit import to_user_units
    from edgereg.training.planning.fit_plan import new_regressor

    trues, preds, all_rows, record = [], [], [], {}
    for k, plan in enumerate(plans):
        cache = caches[k]
        loaded = plan.loaded
        regressor = new_regressor(plan, seed).eval()
        blocks = regressor.model.block_names
        train, val = np.asarray(plan.split.train), np.asarray(plan.split.val)
        groups = None if loaded.dataset.groups is None else np.asarray(loaded.dataset.groups)[train]
        with torch.no_grad():
            z = regressor.encode_targets(loaded.dataset.targets[train]).double().numpy()
        record = fit_head(regressor.model, cache.take(blocks, train), z, groups, seed=seed)
        with torch.no_grad():
            values = regressor.output(readout_outputs(regressor.model, cache.take(blocks, val))).double().numpy()
        preds.append(to_user_units(loaded, values, val))
        trues.append(to_user_units(loaded, loaded.dataset.targets[val], val))
        all_rows.append(val)
    return np.concatenate(trues), np.concatenate(preds), np.concatenate(all_rows), record


def race_readouts(make_plans: Callable[[], list], *, kind: str, groups: np.ndarray | None, seed: int,
                  log: Callable[[str], None], candidates=CANDIDATES) -> ReadoutRace:
    """Score every candidate readout on the validation design.

    Args:
        make_plans: () -> the FitPlans of the design (one for a holdout, one per fold for k-fold),
            each with ``split.val`` the rows it is scored on.
        groups: (N,) every row's group, or None (for the standard error).
        candidates: (blocks, hidden, quadratic) triples.

    Returns:
        The scores in candidate order, each one's held-out predictions, the blocks' time per image.
    """
    started = time.perf_counter()
    base = make_plans()
    if target_kind(kind).xy_points and candidates is CANDIDATES:
        candidates = POINT_CANDIDATES
    used = tuple(b for b in BLOCKS if any(b in c[0].split(",") for c in candidates))
    rows = np.unique(np.concatenate([np.concatenate([p.split.train, p.split.val]) for p in base]))
    if set(used) & set(LEARNS_FROM_LABELS):  # prepared on each plan's own train rows: no leak into its val rows
        caches = [FeatureCache(p, used, np.concatenate([p.split.train, p.split.val]), seed=seed) for p in base]
    else:  # label-free blocks: one pass over every row serves every plan
        caches = [FeatureCache(base[0], used, rows, seed=seed)] * len(base)
    seconds_per_row = (time.perf_counter() - started) / max(1, sum(len(c.rows) for c in set(caches)))
    log(f"block readouts: features of {len(rows)} images in {time.perf_counter() - started:.1f} s")
    scores, predictions = [], {}
    for blocks, hidden, quadratic in candidates:
        started = time.perf_counter()
        plans = [readout_plan(p, blocks, hidden, quadratic) for p in base]
        try:
            true, pred, scored, record = held_out_predictions(caches, plans, seed=seed)
        except (RuntimeError, ValueError, np.linalg.LinAlgError) as exc:  # a degenerate design: no candidate
            log(f"readout {blocks}: not fitted ({exc})")
            continue
        per_sample = sample_errors(kind, true, pred)
        rmse = float(np.sqrt(per_sample.mean())) if np.isfinite(per_sample).all() else float("inf")
        se = rmse_standard_error(per_sample, None if groups is None else np.asarray(groups)[scored])
        score = ReadoutScore(blocks, int(hidden), bool(quadratic), rmse, se,
                             round(time.perf_counter() - started, 2), record)
        scores.append(score)
        predictions[score.label()] = (true, pred)
    if scores:
        text = "; ".join(f"{s.label()}: {s.val_rmse:.4g} ± {s.val_se:.2g}" for s in scores)
        log(f"block readouts (closed form, on validation): {text}")
    scored = [np.asarray(p.split.val) for p in base]
    return ReadoutRace(tuple(scores), predictions, seconds_per_row, np.concatenate(scored),
                       np.concatenate([np.full(len(r), k) for k, r in enumerate(scored)]))
