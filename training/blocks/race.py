"""Block readouts on the trainer's validation plan: candidates, baselines and, when best, the model.

Before any CNN trains, every candidate readout (:data:`CANDIDATES`) is fitted in closed form on the
validation plan's train rows and scored on its validation rows, or out of fold under k-fold, the
same design the CNN is scored with. They are reported beside the mean and median baselines, and
the trainer ships the best readout instead of the CNN when its validation RMSE is lower: the kit
never ships a model that a classical reader beats on validation.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch

from edgereg.preprocess import preprocess_batch
from edgereg.training.blocks.readout import DEFAULT_BLOCKS, fit_readout
from edgereg.training.metrics import rmse_standard_error, sample_errors

# (blocks, hidden units): each block alone, then all of them with a ridge and with an MLP readout
CANDIDATES = (("moments", 0), ("colour", 0), ("bank", 0), ("pixels", 0), (DEFAULT_BLOCKS, 0), (DEFAULT_BLOCKS, 32))
MODEL_NAME = "readout"


@dataclass(frozen=True)
class ReadoutScore:
    """One candidate readout's validation result."""

    blocks: str
    hidden: int
    val_rmse: float
    val_se: float
    seconds: float
    fit: dict  # alpha / weight decay and the cross-validated error of the last fit

    def label(self) -> str:
        return f"readout {self.blocks}" + (f" mlp{self.hidden}" if self.hidden else "")

    def kwargs(self) -> dict:
        return {"blocks": self.blocks, "hidden": self.hidden}


def readout_plan(plan, blocks: str, hidden: int):
    """``plan`` (a FitPlan) with the readout model and these options."""
    return replace(plan, model_name=MODEL_NAME, model_kwargs={"blocks": blocks, "hidden": int(hidden)})


def fit_plan(plan, *, seed: int = 0):
    """A Regressor with the readout of ``plan`` fitted on ``plan.split.train``; (regressor, fit record)."""
    from edgereg.training.plan import new_regressor

    loaded = plan.loaded
    rows = np.asarray(plan.split.train)
    regressor = new_regressor(plan, seed)
    regressor.eval()
    with torch.no_grad():
        x = torch.from_numpy(preprocess_batch(loaded.dataset.images[rows], plan.preprocess))  # (N,C,H,W)
        if regressor.reference is not None:
            x = regressor.reference(x)
    if plan.reference:
        scale, offset = plan.reference["std_out"], plan.reference["mean_out"]
    else:
        scale, offset = plan.preprocess.std, plan.preprocess.mean
    groups = None if loaded.dataset.groups is None else np.asarray(loaded.dataset.groups)[rows]
    with torch.no_grad():
        z = regressor.encode_targets(loaded.dataset.targets[rows])
    record = fit_readout(regressor.model, x, z, intensity_scale=scale, intensity_offset=offset, groups=groups,
                         seed=seed)
    regressor.eval()
    return regressor, record


def held_out_predictions(plans: list, *, seed: int, batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """Fit on each plan's train rows, predict its val rows: (true, pred, rows, last fit record), user units."""
    from edgereg.training.fit import predict, to_user_units

    trues, preds, all_rows, record = [], [], [], {}
    for plan in plans:
        regressor, record = fit_plan(plan, seed=seed)
        rows = np.asarray(plan.split.val)
        loaded = plan.loaded
        pred = predict(regressor, loaded.dataset.images[rows], plan.preprocess, batch_size=batch_size)
        preds.append(to_user_units(loaded, pred, rows))
        trues.append(to_user_units(loaded, loaded.dataset.targets[rows], rows))
        all_rows.append(rows)
    return np.concatenate(trues), np.concatenate(preds), np.concatenate(all_rows), record


def race_readouts(make_plans: Callable[[], list], *, kind: str, groups: np.ndarray | None, seed: int,
                  batch_size: int, log: Callable[[str], None], candidates=CANDIDATES
                  ) -> tuple[list[ReadoutScore], dict]:
    """Score every candidate readout on the validation design.

    Args:
        make_plans: () -> the FitPlans of the design (one for a holdout, one per fold for k-fold),
            each with ``split.val`` the rows it is scored on.
        groups: (N,) every row's group, or None (for the standard error).

    Returns:
        (the scores in CANDIDATES order, {label: (true, pred) in user units on the scored rows}).
    """
    base = make_plans()
    scores, predictions = [], {}
    for blocks, hidden in candidates:
        started = time.perf_counter()
        plans = [readout_plan(p, blocks, hidden) for p in base]
        try:
            true, pred, rows, record = held_out_predictions(plans, seed=seed, batch_size=batch_size)
        except (RuntimeError, ValueError, np.linalg.LinAlgError) as exc:  # a degenerate design: no candidate
            log(f"readout {blocks}: not fitted ({exc})")
            continue
        per_sample = sample_errors(kind, true, pred)
        rmse = float(np.sqrt(per_sample.mean())) if np.isfinite(per_sample).all() else float("inf")
        se = rmse_standard_error(per_sample, None if groups is None else np.asarray(groups)[rows])
        score = ReadoutScore(blocks, int(hidden), rmse, se, round(time.perf_counter() - started, 2), record)
        scores.append(score)
        predictions[score.label()] = (true, pred)
    if scores:
        text = "; ".join(f"{s.label()}: {s.val_rmse:.4g} ± {s.val_se:.2g} ({s.seconds:.1f} s)" for s in scores)
        log(f"block readouts (closed form, on validation): {text}")
    return scores, predictions


def best_readout(scores: list[ReadoutScore]) -> ReadoutScore | None:
    """The candidate with the lowest validation RMSE (None when none was fitted)."""
    finite = [s for s in scores if np.isfinite(s.val_rmse)]
    return min(finite, key=lambda s: s.val_rmse) if finite else None
