"""Split-conformal prediction intervals at export, from held-out images the model never trained on.

Which images (:func:`held_out_parts`): quantiles never come from rows the shipped model was fitted
on, nor from rows a choice looked at (the epoch, the race, the int8 search).

* A model trained on the train split only: the **validation** split fits the per-reading difficulty
  (and picks its form); the **test** split, which nothing else has chosen, gives the conformal
  quantiles. The model and the difficulty are fixed before the test images are looked at, so the
  split-conformal guarantee holds exactly: for new images exchangeable with the test split,
  coverage >= level on average (and < level + 1 / (n_test + 1)). With fewer than ``MIN_FIT``
  validation or ``MIN_CALIBRATION`` test images, the difficulty is constant and the quantiles come
  from test alone (validation chose the epoch: it is never pooled in). No test split: no intervals.
* A **refitted** model (k-fold design, holdout + ``--refit``, or a block readout shipped after such a
  design) was fitted on every row, so its own residuals say nothing. The trainer keeps the
  out-of-fold predictions ``RUN/held_out.npz`` (each row predicted by a model fitted without it) and
  the quantiles are those of the out-of-fold residuals, applied around the refitted model's reading:
  the cross-conformal ("CV") interval of Barber, Candes, Ramdas & Tibshirani (2021) with the refitted
  model in place of the fold models. CV+ with the fold models guarantees coverage >= 1 - 2 alpha;
  this refit-model version is the standard practical approximation: no finite-sample guarantee,
  validated empirically (docs/lab-grade.md). The held-out rows are divided (by group) into a
  difficulty part (about ``FIT_SHARE``, which is also what the int8 search looks at) and a
  quantile part; with too few rows, constant width from all of them. A holdout + refit run whose
  test split the refit never saw takes its quantiles from that test split, read by the shipped model.
  A refitted model without ``held_out.npz`` (runs of older versions) gets no intervals, with the
  reason in the card (``{"none": reason}``) and the report.
* The int8 model's quantiles leave out any row the int8 search looked at (``exclude_rows``); a
  refitted int8 model's residuals are the out-of-fold ones plus its own difference from the fp32
  model on the same images.
* The report's coverage check (:func:`split_half_coverage`) takes quantiles from one half of the
  calibration rows and measures the other half, both ways: rows nothing chose from.

Difficulty (:func:`fit_difficulty`): candidates are ``constant``, ``value`` (linear in the reading:
noise that grows with the value), ``value2`` (quadratic: noise that grows towards both ends),
``spread`` and ``value+spread`` (with TTA). Each is a least-squares fit of ``|residual|`` and is
scored by 2-fold cross-fitting inside the validation split: the mean width of 90% intervals on the
half it was not fitted on. The narrowest wins; a non-constant form must beat ``constant`` by
``MIN_GAIN`` (3%). Coords and angles use ``constant`` or the spread only (their position or
direction says nothing general about their difficulty).

Mondrian per range bin (on by default, ``bins=5``; ``bins=1`` turns it off): the readings are cut
into up to ``bins`` bins of their value, with edges cut from the training targets (equal width over
their central 99%, merged until each bin expects >= ``MIN_PER_BIN`` calibration images), never from
the calibration readings themselves, and each bin gets its own quantiles, so coverage holds
within every range bin and not only on average: a model that is worse near one end of its range (a
bounded head near saturation, a colour that stops changing) gets wider intervals there. A level
whose quantiles need more images than a bin has (99% needs 199 per side) takes the quantiles of all
bins together, which keeps the average guarantee. ``method="constant"`` is plain split-conformal:
constant width, one bin. Coords and angles are not binned (a position in source pixels depends on
the frame size, and an angle's range is a circle). Measured figures: benchmarks/intervals.py.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from edgereg.core.card import ModelCard
from edgereg.core.kinds import TargetKind, target_kind
from edgereg.errors import EdgeregError
from edgereg.lab.intervals import (
    DEFAULT_WIDE_FACTOR,
    LEVELS,
    Difficulty,
    IntervalSet,
    TargetIntervals,
    conformal_quantile,
    covered,
    format_level,
    interval_bounds,
    one_sided_level,
    signed_residual,
    target_to_dict,
)
from edgereg.training.reporting.held_out import HELD_OUT_FILE  # written by training (HeldOut)

METHODS = ("normalized", "constant")
MIN_FIT = 30  # validation images needed to fit a difficulty
MIN_CALIBRATION = 40  # test images needed to take the quantiles from test alone
MIN_PER_BIN = 40  # test images per Mondrian bin
FIT_SHARE = 0.35  # share of a refitted model's held-out rows that fits the difficulty (the rest: quantiles)
MIN_GAIN = 0.03  # a non-constant difficulty must give intervals this much narrower
FLOOR_FRACTION = 0.2  # the difficulty never goes below this fraction of the median |residual|
GUARANTEE = ("Coverage is guaranteed (on average over images) only for images like the conformal calibration "
             "split: same camera, lighting, sample types and value range. Check it on any labelled folder with "
             "`edgereg eval MODEL FOLDER`, which prints the observed coverage.")


@dataclass(frozen=True)
class ConformalOptions:
    """How export computes intervals.

    Attributes:
        method: "normalized" (difficulty chosen on validation, Mondrian bins; default) or
            "constant" (plain split-conformal: constant width, one bin).
        bins: Mondrian range bins at most (1: none).
        levels: the confidence levels stored.
        wide_factor: ``interval_wide`` when a reading's difficulty exceeds this many times the median.
        seed: seed of the 2-fold cross-fitting split.
    """

    method: str = "normalized"
    bins: int = 5
    levels: tuple[float, ...] = LEVELS
    wide_factor: float = DEFAULT_WIDE_FACTOR
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise EdgeregError(f"interval method {self.method!r} is not one of {', '.join(METHODS)}")
        if self.bins < 1:
            raise EdgeregError(f"--interval-bins must be >= 1, got {self.bins}")
        if not self.wide_factor > 0:
            raise EdgeregError(f"--interval-wide-factor must be > 0, got {self.wide_factor}")


@dataclass(frozen=True)
class HeldOutReadings:
    """A model's readings of labelled held-out images, as the runtime makes them.

    Attributes:
        values: (N, T) float64 readings (coords in source pixels, angles in degrees).
        spread: (N, T) float64 TTA spread, or None without TTA.
        truth: (N, T) float64 labels in the same units.
        scale: (N, T) float64 crop side per coordinate (coords), or None.
        split: the split's name.
    """

    values: np.ndarray
    spread: np.ndarray | None
    truth: np.ndarray
    scale: np.ndarray | None
    split: str

    def __len__(self) -> int:
        return len(self.values)

    def residuals(self, kind: str) -> np.ndarray:
        """(N, T) truth - reading (circular for angles, in [-180, 180)), divided by ``scale`` for coords."""
        residual = signed_residual(kind, self.truth, self.values)
        return residual / self.scale if self.scale is not None else residual


def read_held_out(model_path: str | Path, evalset, *, card: ModelCard, tta: str = "none",
                  batch_size: int = 64) -> HeldOutReadings:
    """Read an ``edgereg.export.int8.gate.EvalSet`` with the model as deployed (no calibration, no intervals)."""
    from edgereg.core.predictor import Predictor

    predictor = Predictor(model_path, providers="cpu", tta=tta, batch_size=batch_size, card=card.with_(
        intervals={}, calibration={}, validation={}), confidence=None)
    result = predictor.predict_prepared(evalset.frames, evalset.boxes)
    scale = None  # crop boxes come with the kinds that need them (coords)
    if evalset.crop_boxes is not None:
        sides = np.asarray(evalset.crop_boxes, dtype=np.float64)[:, 2:4]  # (N, 2) w, h
        scale = card.target_kind.reading_scale(sides, len(card.targets))
    return HeldOutReadings(values=result.values, spread=result.spread, truth=np.asarray(evalset.targets, np.float64),
                           scale=scale, split=evalset.split)


@dataclass(frozen=True)
class ConformalParts:
    """Which labelled rows give a model's intervals (:func:`held_out_parts`).

    Attributes:
        fit: the rows the difficulty is fitted on (``EvalSet``), or None (constant difficulty).
        cal: the rows the quantiles come from (``EvalSet``), or None when there are none.
        fit_rows, cal_rows: (n,) int64 dataset rows of ``fit`` / ``cal`` (empty when None).
        oof_fit, oof_cal: (n, T) float64 out-of-fold readings of those rows by models that never saw
            them (refitted models: ``RUN/held_out.npz``), or None when the shipped model reads them.
        reference: (M, T) float64 training targets in the user's units: the range the Mondrian bin
            edges are cut from (never the calibration readings themselves), or None.
        note: a sentence on the choice, for the card and the report.
        none_reason: why the model gets no intervals (no rows that nothing chose from), or None.
    """

    fit: object | None
    cal: object | None
    fit_rows: np.ndarray
    cal_rows: np.ndarray
    oof_fit: np.ndarray | None
    oof_cal: np.ndarray | None
    reference: np.ndarray | None
    note: str
    none_reason: str | None = None

    @property
    def cross_validated(self) -> bool:
        """Whether the quantiles come from out-of-fold residuals (a refitted model)."""
        return self.oof_cal is not None


def _empty() -> np.ndarray:
    return np.zeros(0, np.int64)


def _reference(dataset, rows: np.ndarray, kind: str) -> np.ndarray | None:
    """(M, T) targets of ``rows`` in the user's units for the bin edges (None for coords/angles: not binned)."""
    if not target_kind(kind).value_difficulty or not len(rows):
        return None
    return np.asarray(dataset.targets, np.float64)[np.asarray(rows, np.int64)]


def read_held_out_file(run_dir: str | Path | None) -> dict | None:
    """``RUN/held_out.npz`` as {"rows", "folds", "true", "pred", "scored_by"}, or None when absent."""
    if run_dir is None:
        return None
    path = Path(run_dir) / HELD_OUT_FILE
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            held = {"rows": np.asarray(data["rows"], np.int64), "folds": np.asarray(data["folds"], np.int64),
                    "true": np.asarray(data["true"], np.float64), "pred": np.asarray(data["pred"], np.float64),
                    "scored_by": str(data["scored_by"])}
    except (OSError, KeyError, ValueError) as exc:
        raise EdgeregError(f"'{path}' cannot be read ({type(exc).__name__}: {exc}); retrain the run, or export "
                           "with --intervals none") from None
    if held["pred"].ndim != 2 or held["pred"].shape != held["true"].shape or len(held["rows"]) != len(held["pred"]):
        raise EdgeregError(f"'{path}' is malformed (rows {held['rows'].shape}, pred {held['pred'].shape}, true "
                           f"{held['true'].shape}); retrain the run, or export with --intervals none")
    return held


def _two_parts(units: np.ndarray, n_rows: int, seed: int) -> np.ndarray:
    """(n_rows,) bool: True for the rows of the difficulty part, whole units (groups) at a time,
    about FIT_SHARE of the rows, drawn with ``seed``."""
    names = np.unique(units)
    order = np.random.default_rng(seed).permutation(len(names))
    take, count = [], 0
    sizes = {name: int(n) for name, n in zip(*np.unique(units, return_counts=True))}
    for k in order:
        if count >= FIT_SHARE * n_rows:
            break
        take.append(names[k])
        count += sizes[names[k]]
    return np.isin(units, np.asarray(take, dtype=units.dtype))


def held_out_parts(dataset, split, *, kind: str, refit_rows=None, run_dir: str | Path | None = None,
                   seed: int = 0) -> ConformalParts:
    """The rows a model's intervals come from (see the module docstring for the rule).

    Args:
        dataset: the run's loaded dataset.
        split: run.json's split (after a refit: the split the design was validated on).
        kind: target kind.
        refit_rows: run.json's ``refit_rows`` (the rows a refitted model was trained on), or None.
        run_dir: the run directory (for ``held_out.npz`` after a refit).
        seed: the seed of the difficulty / calibration division of held-out rows.
    """
    from edgereg.export.int8.gate import eval_set

    val, test = np.asarray(split.val, np.int64), np.asarray(split.test, np.int64)
    if refit_rows is not None:
        return _refit_parts(dataset, split, kind=kind, refit_rows=np.asarray(refit_rows, np.int64),
                            run_dir=run_dir, seed=seed)
    reference = _reference(dataset, np.asarray(split.train, np.int64), kind)
    if not len(test):
        return ConformalParts(None, None, _empty(), _empty(), None, None, reference, "", none_reason=(
            "the run has no test split, and its validation split chose the epoch (and the int8 search looks at "
            "it): no rows that nothing chose from are left for the quantiles; retrain with a test split (the "
            "default), or pass --intervals none"))
    if len(val) >= MIN_FIT and len(test) >= MIN_CALIBRATION:
        return ConformalParts(eval_set(dataset, val, kind=kind, split="val"),
                              eval_set(dataset, test, kind=kind, split="test"), val, test, None, None, reference,
                              f"difficulty fitted on val ({len(val)} images), quantiles from test ({len(test)} "
                              "images, used for nothing else): the split-conformal guarantee holds for images "
                              "like the test split")
    return ConformalParts(None, eval_set(dataset, test, kind=kind, split="test"), _empty(), test, None, None,
                          reference, f"only {len(val)} val / {len(test)} test images: constant-width intervals "
                          f"from test ({len(test)} images, used for nothing else)")


def _refit_parts(dataset, split, *, kind: str, refit_rows: np.ndarray, run_dir, seed: int) -> ConformalParts:
    """Parts of a model refitted on every row: out-of-fold residuals from ``held_out.npz``, never
    residuals of rows the shipped model was fitted on."""
    from edgereg.export.int8.gate import eval_set

    reference = _reference(dataset, refit_rows, kind)
    held = read_held_out_file(run_dir)
    if held is None:
        return ConformalParts(None, None, _empty(), _empty(), None, None, reference, "", none_reason=(
            "the shipped model was refitted on every row and the run has no held-out predictions "
            f"({HELD_OUT_FILE}, written by training since this edgereg version): its own residuals would be "
            "those of rows it was fitted on, so no intervals are stored; retrain, or pass --intervals none"))
    rows, pred = held["rows"], held["pred"]
    if rows.max(initial=-1) >= len(dataset) or held["true"].shape[1] != np.asarray(dataset.targets).shape[1]:
        raise EdgeregError(f"{HELD_OUT_FILE} does not match the run's dataset (rows up to {rows.max()}, "
                           f"{len(dataset)} loaded); retrain the run, or export with --intervals none")
    test = np.setdiff1d(np.asarray(split.test, np.int64), refit_rows)
    if len(test) >= MIN_CALIBRATION:  # holdout + refit: the test split is still new to the refitted model
        enough = len(rows) >= MIN_FIT
        return ConformalParts(eval_set(dataset, rows, kind=kind, split="held-out") if enough else None,
                              eval_set(dataset, test, kind=kind, split="test"), rows if enough else _empty(), test,
                              pred if enough else None, None, reference,
                              (f"refitted model: difficulty fitted on the out-of-fold predictions of {len(rows)} rows "
                               f"({held['scored_by']})" if enough else "refitted model: constant width") +
                              f"; quantiles from test ({len(test)} images, which the refit never saw and nothing "
                              "chose from)")
    units = np.asarray(dataset.groups)[rows] if dataset.groups is not None else rows
    by = "groups" if dataset.groups is not None else "rows"
    in_fit = _two_parts(np.asarray(units), len(rows), seed)
    n_fit, n_cal = int(in_fit.sum()), int((~in_fit).sum())
    what = f"out-of-fold predictions of {len(rows)} rows ({held['scored_by']})"
    if n_fit < MIN_FIT or n_cal < MIN_CALIBRATION:  # too few to divide: constant width from every held-out row
        return ConformalParts(None, eval_set(dataset, rows, kind=kind, split="held-out"), _empty(), rows, None, pred,
                              reference, f"refitted model: constant-width intervals from the {what} "
                              "(cross-conformal: quantiles of out-of-fold residuals around the refitted model's "
                              "reading)")
    fit_rows, cal_rows = rows[in_fit], rows[~in_fit]
    return ConformalParts(eval_set(dataset, fit_rows, kind=kind, split="held-out (difficulty)"),
                          eval_set(dataset, cal_rows, kind=kind, split="held-out (quantiles)"), fit_rows, cal_rows,
                          pred[in_fit], pred[~in_fit], reference,
                          f"refitted model: {what}; difficulty fitted on {n_fit} of them, quantiles from the other "
                          f"{n_cal} (divided by {by}; cross-conformal: quantiles of out-of-fold residuals around the "
                          "refitted model's reading)")


def _candidates(kind: str | TargetKind, with_spread: bool) -> tuple[str, ...]:
    by_value = target_kind(kind).value_difficulty
    names = ["constant"]
    if by_value:
        names += ["value", "value2"]
    if with_spread:
        names += ["spread"] + (["value+spread"] if by_value else [])
    return tuple(names)


def _design(name: str, u: np.ndarray, spread: np.ndarray | None, centre: float, width: float) -> np.ndarray:
    """(n, k) regressors of a candidate; u standardized as (u - centre) / width for conditioning."""
    z = (u - centre) / width
    columns = [np.ones_like(u)]
    if name in ("value", "value2", "value+spread"):
        columns.append(z)
    if name == "value2":
        columns.append(z * z)
    if name in ("spread", "value+spread"):
        columns.append(spread)
    return np.stack(columns, axis=1)  # (n,) x k -> (n, k)


def _to_coef(name: str, beta: np.ndarray, centre: float, width: float) -> tuple[float, float, float, float]:
    """Standardized least-squares coefficients -> (c0, c1, c2, c3) in the reading's own units."""
    a = float(beta[0])
    b = float(beta[1]) if name in ("value", "value2", "value+spread") else 0.0
    c = float(beta[2]) if name == "value2" else 0.0
    d = float(beta[-1]) if name in ("spread", "value+spread") else 0.0
    m, s = centre, width
    return (a - b * m / s + c * m * m / (s * s), b / s - 2.0 * c * m / (s * s), c / (s * s), d)


def _fit(name: str, u: np.ndarray, spread: np.ndarray | None, residual: np.ndarray, floor: float) -> Difficulty:
    if name == "constant":
        return Difficulty("constant", (1.0, 0.0, 0.0, 0.0), (-math.inf, math.inf), 1.0)
    centre = float(np.median(u))
    width = float(np.std(u)) or 1.0
    beta, *_ = np.linalg.lstsq(_design(name, u, spread, centre, width), residual, rcond=None)
    x_range = (float(u.min()), float(u.max())) if name != "spread" else (-math.inf, math.inf)
    return Difficulty(name, _to_coef(name, beta, centre, width), x_range, floor)


def fit_difficulty(kind: str, values: np.ndarray, spread: np.ndarray | None, residual: np.ndarray, *,
                   method: str = "normalized", seed: int = 0) -> tuple[Difficulty, dict]:
    """Choose and fit the difficulty of one target on the fit part.

    Args:
        kind: target kind.
        values: (n,) readings; spread: (n,) TTA spread or None; residual: (n,) |residuals|
            (already divided by the crop side for coords).
        method: "constant" skips the search.
        seed: the cross-fitting split.

    Returns:
        (the Difficulty refitted on all n, {candidate: cross-fitted mean 90% width relative to constant}).
    """
    if method == "constant" or len(values) < MIN_FIT:
        return Difficulty.constant(), {}
    floor = FLOOR_FRACTION * float(np.median(residual))
    if not floor > 0:
        floor = max(float(np.mean(residual)), 1e-12)
    names = _candidates(kind, spread is not None)
    order = np.random.default_rng(seed).permutation(len(values))
    halves = (order[: len(order) // 2], order[len(order) // 2:])
    widths: dict[str, float] = {}
    for name in names:
        total = 0.0
        for a, b in (halves, halves[::-1]):
            model = _fit(name, values[a], None if spread is None else spread[a], residual[a], floor)
            sigma = model.sigma(values[b], None if spread is None else spread[b])
            q = float(np.quantile(residual[b] / sigma, 0.9))
            total += q * float(sigma.mean())
        widths[name] = total / 2
    reference = widths["constant"] or 1e-300
    relative = {name: width / reference for name, width in widths.items()}
    best = min(names, key=lambda n: widths[n])
    if best != "constant" and relative[best] > 1.0 - MIN_GAIN:
        best = "constant"
    return _fit(best, values, spread, residual, floor), relative


def _mondrian_edges(reference: np.ndarray, bins: int, n_calibration: int | None = None) -> tuple[float, ...]:
    """Inner edges of up to ``bins`` range bins, cut from ``reference (M,)`` values (the training
    targets: never the calibration readings themselves, so the bins are fixed before the quantiles).

    Equal width over the central 99% of ``reference`` (so that a sparse end of the range, where a
    model is often worst, gets a bin of its own), then the emptiest bin is merged into its smaller
    neighbour until every bin expects MIN_PER_BIN of the ``n_calibration`` calibration readings
    (the reference's share of each bin times ``n_calibration``; default ``M``).
    """
    reference = np.asarray(reference, np.float64)
    reference = reference[np.isfinite(reference)]
    n = len(reference) if n_calibration is None else n_calibration
    if bins < 2 or n < 2 * MIN_PER_BIN or len(reference) < 2:
        return ()
    low, high = np.quantile(reference, [0.005, 0.995])
    if not high > low:
        return ()
    edges = list(np.linspace(low, high, bins + 1)[1:-1])
    while edges:
        counts = np.bincount(np.searchsorted(np.asarray(edges), reference, side="right"), minlength=len(edges) + 1)
        expected = counts * (n / len(reference))
        k = int(np.argmin(counts))
        if expected[k] >= MIN_PER_BIN:
            break
        if k == 0:
            edges.pop(0)
        elif k == len(edges):
            edges.pop()
        else:  # drop the edge towards the smaller neighbour
            edges.pop(k - 1 if counts[k - 1] < counts[k + 1] else k)
    return tuple(float(e) for e in edges)


def _pair(scores: np.ndarray, level: float) -> tuple[float, float]:
    """(q_lo, q_hi): the one-sided conformal quantiles of -scores and scores (q_lo + q_hi >= 0;
    one of them is negative where the model reads consistently high or low)."""
    side = one_sided_level(level)
    return conformal_quantile(-scores, side), conformal_quantile(scores, side)


def calibrate_target(kind: str, difficulty: Difficulty, cal_values: np.ndarray, cal_spread: np.ndarray | None,
                     cal_residual: np.ndarray, *, levels: Sequence[float], edges: tuple[float, ...] = ()
                     ) -> TargetIntervals:
    """Conformal quantiles of one target on the calibration part (per Mondrian bin).

    Args:
        cal_residual: (n,) signed residuals truth - reading (fractions of the crop for coords).
    """
    sigma = difficulty.sigma(cal_values, cal_spread)
    scores = cal_residual / sigma
    bins = np.searchsorted(np.asarray(edges), cal_values, side="right") if edges else np.zeros(len(scores), int)
    smallest = int(np.bincount(bins, minlength=len(edges) + 1).min())
    quantiles = {}
    for level in levels:
        side = one_sided_level(level)
        if smallest >= math.ceil(side / (1.0 - side) - 1e-9):  # every bin can give this level
            quantiles[float(level)] = tuple(_pair(scores[bins == k], level) for k in range(len(edges) + 1))
        else:  # the quantiles of all bins together: the average guarantee holds
            quantiles[float(level)] = (_pair(scores, level),) * (len(edges) + 1)
    return TargetIntervals(difficulty, tuple(edges), quantiles, float(np.median(sigma)))


def compute_interval_set(kind: str, names: Sequence[str], fit: HeldOutReadings | None, cal: HeldOutReadings, *,
                         tta: str, model: str, options: ConformalOptions = ConformalOptions(),
                         reference: np.ndarray | None = None) -> tuple[IntervalSet, dict]:
    """One IntervalSet (all targets) and a report of the choice.

    Args:
        kind: target kind.
        names: target names.
        fit: readings of the fit part (None: constant difficulty).
        cal: readings of the calibration part.
        tta: the TTA these readings were made with.
        model: "fp32", "int8" or "fp16".
        options: see ConformalOptions.
        reference: (M, T) training targets the Mondrian edges are cut from (None: the calibration
            readings, as benchmarks that study a fixed split may ask).
    """
    targets, report = [], {}
    fit_residual = fit.residuals(kind) if fit is not None else None
    cal_residual = cal.residuals(kind)
    for j, name in enumerate(names):
        if fit is None:
            difficulty, relative = Difficulty.constant(), {}
        else:
            difficulty, relative = fit_difficulty(
                kind, fit.values[:, j], None if fit.spread is None else fit.spread[:, j], np.abs(fit_residual[:, j]),
                method="constant" if options.method == "constant" else "normalized", seed=options.seed)
        binned = options.method == "normalized" and target_kind(kind).value_difficulty
        source = cal.values[:, j] if reference is None else reference[:, j]
        edges = _mondrian_edges(source, options.bins, len(cal)) if binned else ()
        target = calibrate_target(kind, difficulty, cal.values[:, j], None if cal.spread is None else cal.spread[:, j],
                                  cal_residual[:, j], levels=options.levels, edges=edges)
        targets.append(target)
        report[name] = {"difficulty": difficulty.name, "width_vs_constant_on_val": relative,
                        "bins": len(edges) + 1,
                        "half_width_at_median_difficulty": {
                            format_level(level): [None if not math.isfinite(lo + hi)
                                                  else (lo + hi) / 2 * target.median_sigma
                                                  for lo, hi in target.quantiles[level]]
                            for level in options.levels}}
    entry = IntervalSet(tta=tta, targets=tuple(targets), model=model, fit_split=fit.split if fit is not None else "",
                        calibration_split=cal.split, n_fit=len(fit) if fit is not None else 0, n_calibration=len(cal))
    return entry, report


def observed_coverage(kind: str, entry: IntervalSet, readings: HeldOutReadings, level: float,
                      wide_factor: float = DEFAULT_WIDE_FACTOR) -> float:
    """Fraction of (reading, target) pairs whose interval at ``level`` covers the truth."""
    bounds = interval_bounds(entry, kind, readings.values, readings.spread, readings.scale, level,
                             wide_factor=wide_factor)
    return float(covered(kind, readings.truth, bounds.lo, bounds.hi).mean())


def _finite_at(entry: IntervalSet, level: float) -> bool:
    """Whether every quantile of ``entry`` at ``level`` is finite (enough images for it)."""
    return all(math.isfinite(q) for target in entry.targets for pair in target.quantiles[level] for q in pair)


def intervals_section(sets: Sequence[IntervalSet], names: Sequence[str], *, options: ConformalOptions,
                      note: str, cross_validated: bool = False) -> dict:
    """The ``card.intervals`` JSON for some IntervalSets."""
    return {
        "method": ("cross-conformal (out-of-fold residuals, refitted model)" if cross_validated else "split-conformal")
        + (", normalized, Mondrian per range bin" if options.method == "normalized" else ", constant width"),
        "levels": [float(v) for v in options.levels],
        "wide_factor": float(options.wide_factor),
        "sets": [{"tta": s.tta, "model": s.model, "fit_split": s.fit_split, "calibration_split": s.calibration_split,
                  "n_fit": s.n_fit, "n_calibration": s.n_calibration,
                  "targets": {name: target_to_dict(t) for name, t in zip(names, s.targets)}} for s in sets],
        "split_choice": note,
        "guarantee": GUARANTEE,
    }


def _subset(readings: HeldOutReadings, keep: np.ndarray, split: str | None = None) -> HeldOutReadings:
    return HeldOutReadings(values=readings.values[keep],
                           spread=None if readings.spread is None else readings.spread[keep],
                           truth=readings.truth[keep], scale=None if readings.scale is None else readings.scale[keep],
                           split=readings.split if split is None else split)


@dataclass(frozen=True)
class PartReadings:
    """One model's readings, with one TTA, of the images of a :class:`ConformalParts`: what
    :func:`add_intervals` computes from (made by ``edgereg.export.readings.ReadingCache``).

    Attributes:
        fit: readings of ``parts.fit`` (None when ``parts.fit`` is None).
        cal: readings of ``parts.cal``.
        fp32_fit, fp32_cal: the fp32 model's readings of the same images, for a model other than
            fp32 whose part has out-of-fold readings (``oof_fit`` / ``oof_cal``); else None.
    """

    fit: HeldOutReadings | None
    cal: HeldOutReadings
    fp32_fit: HeldOutReadings | None = None
    fp32_cal: HeldOutReadings | None = None


def reading_modes(card: ModelCard, parts: ConformalParts) -> list[str]:
    """The TTAs a model's intervals are computed for: none, and the card's TTA (out-of-fold readings
    are without TTA: a refitted model gets the TTA-none set only)."""
    return ["none"] + ([card.tta] if card.tta != "none" and not parts.cross_validated else [])


def _residual_readings(kind: str, own: HeldOutReadings, oof: np.ndarray | None,
                       fp32: HeldOutReadings | None) -> HeldOutReadings:
    """The readings a part's residuals come from: the model's own (a model never fitted on them), or,
    for a refitted model, the out-of-fold readings plus this model's difference from the fp32 model
    on the same images (what int8 rounding adds; none for fp32 itself, ``fp32`` None)."""
    if oof is None:
        return own
    values = np.asarray(oof, np.float64)
    if fp32 is not None:
        values = values + signed_residual(kind, own.values, fp32.values)  # (n, T) int8 - fp32
    return HeldOutReadings(values=values, spread=None, truth=own.truth, scale=own.scale, split=own.split)


def split_half_coverage(kind: str, names: Sequence[str], fit: HeldOutReadings | None, cal: HeldOutReadings, *,
                        groups: np.ndarray | None, options: ConformalOptions, reference: np.ndarray | None,
                        seed: int = 0) -> dict[str, float]:
    """Coverage checked on rows nothing chose from: quantiles from one half of the calibration rows
    (whole groups when there are groups), coverage on the other half, both ways, averaged.

    Returns {level: coverage} for the levels each half is large enough for.
    """
    units = np.asarray(groups) if groups is not None else np.arange(len(cal))
    names_u = np.unique(units)
    if len(names_u) < 2:
        return {}
    chosen = np.random.default_rng(seed + 1).permutation(names_u)[: len(names_u) // 2]
    half = np.isin(units, chosen)
    sums: dict[str, list[float]] = {}
    for a, b in ((half, ~half), (~half, half)):
        entry, _ = compute_interval_set(kind, names, fit, _subset(cal, a), tta="none", model="check",
                                        options=options, reference=reference)
        for level in options.levels:
            if _finite_at(entry, level):
                sums.setdefault(format_level(level), []).append(
                    observed_coverage(kind, entry, _subset(cal, b), level, options.wide_factor))
    return {level: float(np.mean(values)) for level, values in sums.items() if len(values) == 2}


def no_intervals_section(reason: str) -> dict:
    """``card.intervals`` of a model that gets no intervals: the reason, and nothing to apply."""
    return {"none": reason}


def leave_out(parts: ConformalParts, exclude_rows: np.ndarray | None) -> ConformalParts:
    """``parts`` without the calibration rows a choice for the model looked at (the int8 search's
    split), with a note saying so; no intervals when no calibration row is left."""
    if parts.none_reason is not None or exclude_rows is None or not len(exclude_rows) or parts.cal is None:
        return parts
    keep = ~np.isin(parts.cal_rows, np.asarray(exclude_rows, np.int64))
    if keep.all():
        return parts
    from edgereg.export.int8.gate import EvalSet

    cal_set = parts.cal
    note = parts.note + (f"; {int((~keep).sum())} rows the int8 search looked at are left out of this model's "
                         "quantiles")
    if not keep.any():
        return ConformalParts(None, None, _empty(), _empty(), None, None, None, note, none_reason=(
            "every calibration row was also looked at by the int8 search; no rows that nothing chose from "
            "are left for its quantiles"))
    cal_set = EvalSet(frames=cal_set.frames[keep], targets=cal_set.targets[keep],
                      crop_boxes=None if cal_set.crop_boxes is None else cal_set.crop_boxes[keep],
                      split=cal_set.split, groups=None if cal_set.groups is None else cal_set.groups[keep])
    return replace(parts, cal=cal_set, cal_rows=parts.cal_rows[keep],
                   oof_cal=None if parts.oof_cal is None else parts.oof_cal[keep], note=note)


def add_intervals(card: ModelCard, parts: ConformalParts, readings: Mapping[str, PartReadings], *, model: str,
                  options: ConformalOptions = ConformalOptions()) -> tuple[ModelCard, dict]:
    """Compute a model's intervals from its readings of held-out images, as a card with ``intervals``.

    Args:
        card: the model's card.
        parts: :func:`held_out_parts`, after :func:`leave_out` of the rows a choice for this model
            looked at.
        readings: {tta: :class:`PartReadings`} for every TTA of :func:`reading_modes` (unused when
            ``parts.none_reason``).
        model: "fp32", "int8" or "fp16" (recorded).
        options: see ConformalOptions.

    Returns:
        (the card with ``intervals``, a report dict for export_report.json). The caller writes the
        card into the model file (``edgereg.export.card_io.write_card``).
    """
    if parts.none_reason is not None:
        return (card.with_(intervals=no_intervals_section(parts.none_reason)),
                {"none": parts.none_reason, "split_choice": "none", "guarantee": GUARANTEE, "sets": {}})
    sets, report = [], {"split_choice": parts.note, "guarantee": GUARANTEE, "sets": {}}
    for tta in reading_modes(card, parts):
        read = readings[tta]
        fit = None if parts.fit is None else _residual_readings(card.kind, read.fit, parts.oof_fit, read.fp32_fit)
        cal = _residual_readings(card.kind, read.cal, parts.oof_cal, read.fp32_cal)
        entry, choice = compute_interval_set(card.kind, card.targets, fit, cal, tta=tta, model=model, options=options,
                                             reference=parts.reference)
        sets.append(entry)
        check = split_half_coverage(card.kind, card.targets, fit, cal, groups=parts.cal.groups, options=options,
                                    reference=parts.reference, seed=options.seed)
        report["sets"][tta] = {"targets": choice, "n_fit": entry.n_fit, "n_calibration": entry.n_calibration,
                               "fit_split": entry.fit_split, "calibration_split": entry.calibration_split,
                               "coverage_split_half": check}
    section = intervals_section(sets, card.targets, options=options, note=parts.note,
                                cross_validated=parts.cross_validated)
    return card.with_(intervals=section), report


__all__ = ["ConformalOptions", "GUARANTEE", "HeldOutReadings", "METHODS", "PartReadings", "add_intervals",
           "calibrate_target", "compute_interval_set", "ConformalParts", "fit_difficulty", "held_out_parts",
           "intervals_section", "leave_out", "no_intervals_section", "observed_coverage", "read_held_out",
           "read_held_out_file", "reading_modes", "split_half_coverage"]
