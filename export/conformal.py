"""Split-conformal prediction intervals at export, from held-out images the model never trained on.

Which images (:func:`held_out_parts`):

* The run's **validation** split fits the per-reading difficulty (and picks its form); the **test**
  split, which nothing else has chosen, gives the conformal quantiles. The model and the difficulty
  are fixed before the test images are looked at, so the split-conformal guarantee holds exactly:
  for new images exchangeable with the test split, coverage >= level on average (and < level +
  1 / (n_test + 1)). Validation having chosen the epoch (and the int8 calibration method) does not
  weaken this, because no quantile comes from it.
* With fewer than ``MIN_FIT`` validation or ``MIN_CALIBRATION`` test images, validation and test are
  pooled for the quantiles and the difficulty is constant (plain split-conformal). Validation chose
  the epoch, so its residuals are slightly optimistic: a model picked for its low validation error
  looks a little better there than on new images, and the intervals can under-cover by a small
  amount (the report and the card say so).

Difficulty (:func:`fit_difficulty`): candidates are ``constant``, ``value`` (linear in the reading:
noise that grows with the value), ``value2`` (quadratic: noise that grows towards both ends),
``spread`` and ``value+spread`` (with TTA). Each is a least-squares fit of ``|residual|`` and is
scored by 2-fold cross-fitting inside the validation split: the mean width of 90% intervals on the
half it was not fitted on. The narrowest wins; a non-constant form must beat ``constant`` by
``MIN_GAIN`` (3%). Coords and angles use ``constant`` or the spread only (their position or
direction says nothing general about their difficulty).

Mondrian per range bin (on by default, ``bins=5``; ``bins=1`` turns it off): the test readings are
cut into up to ``bins`` bins of their own value (equal width over the central 99%, merged until
each keeps >= ``MIN_PER_BIN`` images), and each bin gets its own quantiles, so coverage holds
within every range bin and not only on average: a model that is worse near one end of its range (a
bounded head near saturation, a colour that stops changing) gets wider intervals there. A level
whose quantiles need more images than a bin has (99% needs 199 per side) takes the quantiles of all
bins together, which keeps the average guarantee. ``method="constant"`` is plain split-conformal:
constant width, one bin. Coords and angles are not binned (a position in source pixels depends on
the frame size, and an angle's range is a circle). Measured figures: benchmarks/intervals.py.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgereg.card import ModelCard
from edgereg.errors import EdgeregError
from edgereg.kinds import TargetKind, target_kind
from edgereg.intervals import (DEFAULT_WIDE_FACTOR, LEVELS, Difficulty, IntervalSet, TargetIntervals, conformal_quantile,
                               covered, format_level, interval_bounds, one_sided_level, signed_residual,
                               target_to_dict)

METHODS = ("normalized", "constant")
MIN_FIT = 30  # validation images needed to fit a difficulty
MIN_CALIBRATION = 40  # test images needed to take the quantiles from test alone
MIN_PER_BIN = 40  # test images per Mondrian bin
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
    """Read an ``edgereg.export.gate.EvalSet`` with the model as deployed (no calibration, no intervals)."""
    from edgereg.predictor import Predictor

    predictor = Predictor(model_path, providers="cpu", tta=tta, batch_size=batch_size, card=card.with_(
        intervals={}, calibration={}, validation={}), confidence=None)
    result = predictor.predict_prepared(evalset.frames, evalset.boxes)
    scale = None  # crop boxes come with the kinds that need them (coords)
    if evalset.crop_boxes is not None:
        sides = np.asarray(evalset.crop_boxes, dtype=np.float64)[:, 2:4]  # (N, 2) w, h
        scale = card.target_kind.reading_scale(sides, len(card.targets))
    return HeldOutReadings(values=result.values, spread=result.spread, truth=np.asarray(evalset.targets, np.float64),
                           scale=scale, split=evalset.split)


def held_out_parts(dataset, split, *, kind: str):
    """(fit part or None, calibration part, a sentence on the choice) as ``EvalSet``s.

    See the module docstring for the rule.
    """
    from edgereg.export.gate import eval_set

    val, test = np.asarray(split.val), np.asarray(split.test)
    if len(val) >= MIN_FIT and len(test) >= MIN_CALIBRATION:
        return (eval_set(dataset, val, kind=kind, split="val"), eval_set(dataset, test, kind=kind, split="test"),
                f"difficulty fitted on val ({len(val)} images), quantiles from test ({len(test)} images, used for "
                "nothing else): the split-conformal guarantee holds for images like the test split")
    pooled = np.concatenate([val, test])
    if not len(pooled):
        raise EdgeregError("the run has no validation or test images to compute prediction intervals on; "
                           "retrain with a validation/test split, or export with --intervals none")
    name = "+".join(n for n, part in (("val", val), ("test", test)) if len(part))
    note = (f"only {len(val)} val / {len(test)} test images: constant-width intervals from {name} "
            f"({len(pooled)} images)")
    if len(val):
        note += "; val also chose the epoch, so coverage may be slightly optimistic"
    return None, eval_set(dataset, pooled, kind=kind, split=name), note


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


def _mondrian_edges(values: np.ndarray, bins: int) -> tuple[float, ...]:
    """Inner edges of up to ``bins`` range bins of ``values`` (n,), each with >= MIN_PER_BIN.

    Equal width over the central 99% of the readings (so that a sparse end of the range, where a
    model is often worst, gets a bin of its own), then the emptiest bin is merged into its smaller
    neighbour until every bin has MIN_PER_BIN readings.
    """
    if bins < 2 or len(values) < 2 * MIN_PER_BIN:
        return ()
    low, high = np.quantile(values, [0.005, 0.995])
    if not high > low:
        return ()
    edges = list(np.linspace(low, high, bins + 1)[1:-1])
    while edges:
        counts = np.bincount(np.searchsorted(np.asarray(edges), values, side="right"), minlength=len(edges) + 1)
        k = int(np.argmin(counts))
        if counts[k] >= MIN_PER_BIN:
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
                     cal_residual: np.ndarray, *, levels: Sequence[float], edges: tuple[float, ...] = ()) -> TargetIntervals:
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
                         tta: str, model: str, options: ConformalOptions = ConformalOptions()) -> tuple[IntervalSet, dict]:
    """One IntervalSet (all targets) and a report of the choice.

    Args:
        kind: target kind.
        names: target names.
        fit: readings of the fit part (None: constant difficulty).
        cal: readings of the calibration part.
        tta: the TTA these readings were made with.
        model: "fp32", "int8" or "fp16".
        options: see ConformalOptions.
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
        edges = _mondrian_edges(cal.values[:, j], options.bins) if binned else ()
        target = calibrate_target(kind, difficulty, cal.values[:, j], None if cal.spread is None else cal.spread[:, j],
                                  cal_residual[:, j], levels=options.levels, edges=edges)
        targets.append(target)
        report[name] = {"difficulty": difficulty.name, "width_vs_constant_on_val": relative,
                        "bins": len(edges) + 1,
                        "half_width_at_median_difficulty": {
                            format_level(level): [None if not math.isfinite(lo + hi) else (lo + hi) / 2 * target.median_sigma
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
                      note: str) -> dict:
    """The ``card.intervals`` JSON for some IntervalSets."""
    return {
        "method": "split-conformal" + (", normalized, Mondrian per range bin" if options.method == "normalized" else
                                       ", constant width"),
        "levels": [float(v) for v in options.levels],
        "wide_factor": float(options.wide_factor),
        "sets": [{"tta": s.tta, "model": s.model, "fit_split": s.fit_split, "calibration_split": s.calibration_split,
                  "n_fit": s.n_fit, "n_calibration": s.n_calibration,
                  "targets": {name: target_to_dict(t) for name, t in zip(names, s.targets)}} for s in sets],
        "split_choice": note,
        "guarantee": GUARANTEE,
    }


def add_intervals(model_path: str | Path, card: ModelCard, parts, *, model: str,
                  options: ConformalOptions = ConformalOptions(), write: bool = True) -> tuple[ModelCard, dict]:
    """Compute intervals for a written model from its own residuals and embed them in its card.

    Args:
        model_path: the exported .onnx (fp32, int8 or fp16).
        card: its card.
        parts: ``held_out_parts(...)`` output (fit EvalSet or None, calibration EvalSet, note).
        model: "fp32", "int8" or "fp16" (recorded).
        options: see ConformalOptions.
        write: rewrite the model file with the new card (atomic).

    Returns:
        (the card with ``intervals``, a report dict for export_report.json).
    """
    fit_set, cal_set, note = parts
    modes = ["none"] + ([card.tta] if card.tta != "none" else [])
    sets, report = [], {"split_choice": note, "guarantee": GUARANTEE, "sets": {}}
    for tta in modes:
        fit = read_held_out(model_path, fit_set, card=card, tta=tta) if fit_set is not None else None
        cal = read_held_out(model_path, cal_set, card=card, tta=tta)
        entry, choice = compute_interval_set(card.kind, card.targets, fit, cal, tta=tta, model=model, options=options)
        sets.append(entry)
        check = {}
        if fit is not None:  # the quantiles never saw these images; the difficulty did
            check = {format_level(level): observed_coverage(card.kind, entry, fit, level, options.wide_factor)
                     for level in options.levels if _finite_at(entry, level)}
        report["sets"][tta] = {"targets": choice, "n_fit": entry.n_fit, "n_calibration": entry.n_calibration,
                               "fit_split": entry.fit_split, "calibration_split": entry.calibration_split,
                               "coverage_on_fit_split": check}
    section = intervals_section(sets, card.targets, options=options, note=note)
    new_card = card.with_(intervals=section)
    if write:
        from edgereg.export.card_io import write_card

        write_card(model_path, new_card)
    return new_card, report


__all__ = ["ConformalOptions", "GUARANTEE", "HeldOutReadings", "METHODS", "add_intervals", "calibrate_target",
           "compute_interval_set", "fit_difficulty", "held_out_parts", "intervals_section", "observed_coverage",
           "read_held_out"]
