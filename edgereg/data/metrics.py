"""Regression metrics in the user's units, per target kind (numpy only: training, export and eval use it).

Every function takes predictions and targets already in physical units: the trainer, the export gate
and ``edgereg eval`` all compare numbers a lab scientist can read (mg/L, fractions, pixels, degrees).
Coordinates must be given in pixels (see :func:`uv_to_source_pixels` for converting the model's
[0, 1] outputs through each image's crop box).

The result of :func:`compute_metrics` is plain JSON (floats, ints, strings, None for undefined values
such as R² of a constant target) so it can go straight into metrics.json and the model card.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from edgereg.core.angles import circular_difference  # noqa: F401 (re-exported: tests)
from edgereg.core.kinds import target_kind
from edgereg.data.kinds import KIND_DATA, kind_data
from edgereg.errors import ShapeError, did_you_mean
from edgereg.preprocess.geometry import uv_to_source_pixels  # noqa: F401 (re-exported: fit, tests)


def errors_of(kind: str, y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Per-element signed errors ``pred - true`` in the kind's units (circular for angles).

    Args:
        kind: a kind of ``edgereg.data.kinds``.
        y_true: (N, T) float, physical units.
        y_pred: (N, T) float, physical units.

    Returns:
        (N, T) float64.
    """
    return kind_data(kind).errors(y_true, y_pred)


def sample_errors(kind: str, y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """One squared error per sample, the quantity the overall RMSE averages.

    Coords: squared Euclidean distance summed over points; other kinds: mean squared error over the
    sample's targets.

    Returns:
        (N,) float64.
    """
    return kind_data(kind).per_sample(errors_of(kind, y_true, y_pred) ** 2)


def compute_metrics(kind: str, y_true: np.ndarray, y_pred: np.ndarray, names: Sequence[str], *,
                    groups: np.ndarray | None = None) -> dict:
    """Metrics of predictions against targets, in physical units.

    Args:
        kind: a kind of ``edgereg.data.kinds`` (scalar, vector, distribution, coords, angle, count).
        y_true: (N, T) float, physical units (coords in pixels, angles in degrees).
        y_pred: (N, T) float, same units.
        names: T target names.
        groups: optional (N,) group labels; adds per-group errors.

    Returns:
        A JSON-ready dict::

            {"kind", "n",
             "rmse": overall RMSE (the number the int8 gate compares): over all targets for scalar,
                     vector and distribution; Euclidean point error in pixels for coords; circular
                     error in degrees for angle,
             "mae", "max_error": overall, same units,
             "targets": {name: {"rmse", "mae", "max_error", "bias", "r2"}},  # r2 None for angle
             "groups": {group: {"n", "rmse", "mae"}}}                         # when groups given

        Distributions report per-bin MAE under ``targets`` in the targets' own units.

    Raises:
        ShapeError: mismatched shapes, or names that do not match T.
        ValueError: an unknown kind (a programming error).
    """
    if kind not in KIND_DATA:
        raise ValueError(f"unknown kind {kind!r}{did_you_mean(str(kind), tuple(KIND_DATA))}")
    points = target_kind(kind).xy_points
    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    if y_true.ndim != 2 or y_true.shape != y_pred.shape or y_true.shape[1] != len(names) or not len(y_true):
        raise ShapeError(f"expected y_true and y_pred (N, {len(names)}) with N >= 1, "
                         f"got {y_true.shape} and {y_pred.shape}")
    errors = errors_of(kind, y_true, y_pred)  # (N, T)
    per_sample = sample_errors(kind, y_true, y_pred)  # (N,)
    distances = np.sqrt(per_sample)
    result: dict[str, Any] = {
        "kind": kind,
        "n": int(len(y_true)),
        "rmse": float(np.sqrt(per_sample.mean())),
        "mae": float(distances.mean()) if points else float(np.abs(errors).mean()),
        "max_error": float(distances.max()) if points else float(np.abs(errors).max()),
        "targets": {name: _target_metrics(kind, y_true[:, j], errors[:, j]) for j, name in enumerate(names)},
    }
    if groups is not None:
        groups = np.asarray(groups)
        if groups.shape != (len(y_true),):
            raise ShapeError(f"expected groups ({len(y_true)},), got {groups.shape}")
        labels = groups.astype(str)
        result["groups"] = {}
        for group in np.unique(labels):
            mask = labels == group
            result["groups"][str(group)] = {
                "n": int(mask.sum()),
                "rmse": float(np.sqrt(per_sample[mask].mean())),
                "mae": float(np.abs(errors[mask]).mean()),
            }
    return result


def _target_metrics(kind: str, truth: np.ndarray, error: np.ndarray) -> dict:
    """rmse, mae, max_error, bias and R² of one target column."""
    total = float(((truth - truth.mean()) ** 2).sum())
    r2 = None if not kind_data(kind).r2 or total == 0.0 else 1.0 - float((error ** 2).sum()) / total
    return {
        "rmse": float(np.sqrt((error ** 2).mean())),
        "mae": float(np.abs(error).mean()),
        "max_error": float(np.abs(error).max()),
        "bias": float(error.mean()),
        "r2": r2,
    }


def prediction_spread(kind: str, y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Spread of the predictions relative to the spread of the targets, per target.

    A model that has collapsed to predicting the mean has a ratio near 0; a good one near 1.

    Returns:
        (T,) float64: std(pred) / std(true) per column (circular std for angles); NaN where the
        targets are constant.
    """
    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    behaviour = kind_data(kind)
    true_std, pred_std = behaviour.column_std(y_true), behaviour.column_std(y_pred)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(true_std > 0, pred_std / np.where(true_std > 0, true_std, 1.0), np.nan)


def rmse_standard_error(per_sample: np.ndarray, groups: np.ndarray | None = None) -> float:
    """Standard error of an RMSE estimated from ``per_sample`` squared errors (the delta method).

    ``SE(RMSE) ~= SE(MSE) / (2 RMSE)``; with groups the MSE's standard error is taken over the
    groups' mean squared errors (photos of one sample are not independent), so a validation split
    of few groups gets the wide interval it deserves.

    Args:
        per_sample: (N,) squared errors, e.g. :func:`sample_errors`.
        groups: optional (N,) group labels.

    Returns:
        The standard error in the RMSE's units (inf when it cannot be estimated: fewer than 2
        samples or groups).
    """
    values = np.asarray(per_sample, dtype=np.float64).reshape(-1)
    if groups is not None:
        labels = np.asarray(groups).astype(str).reshape(-1)
        names, inverse = np.unique(labels, return_inverse=True)
        values = np.bincount(inverse, weights=values) / np.bincount(inverse)  # (G,) mean per group
    if len(values) < 2:
        return float("inf")
    mse = float(values.mean())
    if mse <= 0:
        return 0.0
    se_mse = float(values.std(ddof=1) / np.sqrt(len(values)))
    return se_mse / (2.0 * np.sqrt(mse))
