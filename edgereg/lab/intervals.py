"""Prediction intervals from split-conformal quantiles stored in the model card (numpy only).

At export (``edgereg.export.uncertainty.conformal``) the model reads held-out images it never trained on. Each
reading gets a *difficulty* ``sigma`` computed from what the runtime knows about it (its own value,
and the TTA spread when TTA is on). The signed, normalized scores ``(truth - reading) / (sigma *
scale)`` of a calibration part give two conformal quantiles per confidence level: ``q_hi`` of the
scores and ``q_lo`` of their negatives, each at ``1 - (1 - level) / 2``. At run time a reading ``x``
gets ``[x - q_lo sigma scale, x + q_hi sigma scale]``: by the split-conformal argument each side
misses at most half the error rate, so the interval covers the truth with probability at least the
level for images exchangeable with the calibration part, and only for those. Two one-sided
quantiles instead of one of ``|truth - reading|``: a model that reads high in some range (a bounded
head near saturation, a colour that stops changing) gets an interval shifted to the truth instead
of one wide enough for both sides. Where that bias exceeds the noise one quantile is negative and
the interval does not contain the reading itself: it brackets the truth, which is its job.

* ``scale`` is 1, except for coords where it is the crop side in source pixels (so one quantile
  serves every frame size): scores are fractions of the crop.
* angle residuals are circular (degrees, in [-180, 180)); the bounds are wrapped to [0, 360), so an
  interval through 0 has ``lo > hi``; a width of 360 or more is the whole circle ``[0, 360]``.
* distribution bins are clipped to [0, 1].
* Mondrian (per range bin): the calibration readings are cut into bins of their own value and
  each bin has its own quantiles, so coverage holds within each bin, not only on average.

The difficulty is ``max(floor, c0 + c1 u + c2 u^2 + c3 spread)`` with ``u`` the reading clipped to
the range seen when it was fitted (no extrapolation of the curve). Its evaluation costs a few
multiply-adds per reading.

The card section (``card.intervals``) is plain JSON, parsed here into frozen dataclasses::

    {"method": "split-conformal, ...", "levels": [0.5, 0.8, 0.9, 0.95, 0.99], "wide_factor": 2.0,
     "sets": [{"tta": "none", "model": "int8", "fit_split": "val", "calibration_split": "test",
               "n_fit": 300, "n_calibration": 300,
               "targets": {"conc": {"difficulty": {"name": "value", "coef": [c0, c1, c2, c3],
                                                   "x_range": [lo, hi], "floor": f},
                                    "edges": [e1, e2], "quantiles": {"0.9": [[q_lo, q_hi], ...], ...},
                                    "median_sigma": m}}}],
     "guarantee": "..."}

One ``[q_lo, q_hi]`` pair per bin (a single number means both). A quantile is ``null`` when the
calibration part is too small for its level (a bin needs ``(1 + level) / (1 - level)`` images: 19
for 90%): the interval is then infinite on that side, as conformal prediction says.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgereg.core.angles import circular_difference
from edgereg.core.kinds import TargetKind, target_kind
from edgereg.errors import EdgeregError
from edgereg.lab._section import Bad, read_section

LEVELS = (0.5, 0.8, 0.9, 0.95, 0.99)  # confidence levels stored at export
DEFAULT_CONFIDENCE = 0.9
DEFAULT_WIDE_FACTOR = 2.0  # interval_wide: sigma above this many times the calibration median
DIFFICULTIES = ("constant", "value", "value2", "spread", "value+spread")
_LEVEL_TOLERANCE = 1e-9


def conformal_quantile(scores: np.ndarray, level: float) -> float:
    """The split-conformal quantile of ``scores`` at ``level``: the ceil((n + 1) level)-th smallest.

    Args:
        scores: (n,) non-negative nonconformity scores of the calibration part.
        level: confidence level in (0, 1).

    Returns:
        The quantile, or ``inf`` when n is too small for the level (ceil((n + 1) level) > n).
    """
    scores = np.sort(np.asarray(scores, dtype=np.float64).reshape(-1))
    rank = math.ceil((len(scores) + 1) * level - 1e-12)
    if rank > len(scores) or rank < 1:
        return math.inf
    return float(scores[rank - 1])


def circular_residual(truth: np.ndarray, reading: np.ndarray) -> np.ndarray:
    """|truth - reading| for angles in degrees, in [0, 180]."""
    return np.abs(circular_difference(truth, reading))


def signed_residual(kind: str | TargetKind, truth: np.ndarray, reading: np.ndarray) -> np.ndarray:
    """truth - reading; for angles the circular difference in degrees, in [-180, 180)."""
    return target_kind(kind).residual(truth, reading)


def one_sided_level(level: float) -> float:
    """The quantile level of each side of a two-sided ``level`` interval: 1 - (1 - level) / 2."""
    return 1.0 - (1.0 - level) / 2.0


@dataclass(frozen=True)
class Difficulty:
    """sigma = max(floor, c0 + c1 u + c2 u^2 + c3 spread), u = clip(reading, *x_range).

    Attributes:
        name: one of DIFFICULTIES (what the fit used).
        coef: (c0, c1, c2, c3).
        x_range: (lo, hi) of the readings it was fitted on, in the target's units.
        floor: the smallest sigma (> 0), so a reading never gets a zero-width interval.
    """

    name: str
    coef: tuple[float, float, float, float]
    x_range: tuple[float, float]
    floor: float

    def sigma(self, values: np.ndarray, spread: np.ndarray | None) -> np.ndarray:
        """(B,) float64 difficulty of readings ``values (B,)`` with TTA ``spread (B,)`` or None."""
        c0, c1, c2, c3 = self.coef
        u = np.clip(np.asarray(values, dtype=np.float64), *self.x_range)
        sigma = c0 + c1 * u + c2 * u * u
        if c3 and spread is not None:
            sigma = sigma + c3 * np.asarray(spread, dtype=np.float64)
        sigma = np.where(np.isfinite(sigma), sigma, self.floor)
        return np.maximum(sigma, self.floor)

    def to_dict(self) -> dict:
        return {"name": self.name, "coef": list(self.coef), "x_range": list(self.x_range), "floor": self.floor}

    @classmethod
    def constant(cls) -> Difficulty:
        return cls("constant", (1.0, 0.0, 0.0, 0.0), (-math.inf, math.inf), 1.0)


@dataclass(frozen=True)
class TargetIntervals:
    """The conformal calibration of one target.

    Attributes:
        difficulty: the per-reading sigma.
        edges: inner edges of the Mondrian bins on the reading, ascending; () for one bin.
        quantiles: {level: one (q_lo, q_hi) pair per bin with q_lo + q_hi >= 0 (inf when too few
            images; one may be negative where the model is biased)}.
        median_sigma: median sigma over the calibration readings (the interval_wide reference).
    """

    difficulty: Difficulty
    edges: tuple[float, ...]
    quantiles: Mapping[float, tuple[tuple[float, float], ...]]
    median_sigma: float

    def quantile(self, level: float, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(q_lo (B,), q_hi (B,)) for each reading ``values (B,)`` (its Mondrian bin's)."""
        per_bin = np.asarray(self.quantiles[level], dtype=np.float64)  # (bins, 2)
        which = np.searchsorted(np.asarray(self.edges), values, side="right") if self.edges \
            else np.zeros(len(values), dtype=np.int64)
        return per_bin[which, 0], per_bin[which, 1]


@dataclass(frozen=True)
class IntervalSet:
    """Quantiles for one TTA setting (the difficulty may use the TTA spread)."""

    tta: str
    targets: tuple[TargetIntervals, ...]
    model: str  # "fp32" / "int8" / "fp16": whose residuals
    fit_split: str  # where the difficulty was fitted
    calibration_split: str  # where the quantiles were computed
    n_fit: int
    n_calibration: int


def rows_needed(level: float) -> int:
    """Calibration rows (per Mondrian bin and side) a two-sided ``level`` needs for finite bounds:
    the smallest n with ceil((n + 1) s) <= n at the one-sided level s = 1 - (1 - level) / 2."""
    side = one_sided_level(level)
    return math.ceil(side / (1.0 - side) - 1e-9)


def unsupported_reason(entry: IntervalSet, level: float) -> str | None:
    """Why ``entry`` cannot give finite bounds at ``level`` (too few calibration rows), or None."""
    if all(math.isfinite(q) for target in entry.targets for pair in target.quantiles[level] for q in pair):
        return None
    return (f"{level:.0%} intervals need at least {rows_needed(level)} calibration rows; this model's intervals were "
            f"calibrated on {entry.n_calibration}, so its {level:.0%} bounds would be infinite")


@dataclass(frozen=True)
class IntervalSpec:
    """``card.intervals`` parsed."""

    levels: tuple[float, ...]
    wide_factor: float
    sets: tuple[IntervalSet, ...]

    def level(self, confidence: float) -> float:
        """The stored level equal to ``confidence``.

        Raises:
            EdgeregError: not a stored level (the message lists them).
        """
        for level in self.levels:
            if abs(level - confidence) <= _LEVEL_TOLERANCE:
                return level
        raise EdgeregError(f"--confidence {confidence:g} is not one of the levels calibrated at export "
                           f"({', '.join(f'{v:g}' for v in self.levels)}); choose one of those")

    def for_tta(self, tta: str) -> tuple[IntervalSet, bool]:
        """The set for TTA ``tta``, and whether it matches (else the one without TTA, or the first)."""
        for entry in self.sets:
            if entry.tta == tta:
                return entry, True
        for entry in self.sets:
            if entry.tta == "none":
                return entry, False
        return self.sets[0], False


def parse_intervals(data: Mapping[str, Any], targets: Sequence[str]) -> IntervalSpec | None:
    """Parse and check ``card.intervals``; None for an empty section.

    Raises:
        CardError: a malformed section (one line naming the field).
    """
    if isinstance(data, Mapping) and "sets" not in data and "none" in data:  # no intervals (``{"none": reason}``: why)
        return None

    def parse(section: Mapping[str, Any], bad: Bad) -> IntervalSpec:
        levels = tuple(float(v) for v in section["levels"])
        wide = float(section.get("wide_factor", DEFAULT_WIDE_FACTOR))
        sets = []
        for entry in section["sets"]:
            per_target = []
            for name in targets:
                if name not in entry["targets"]:
                    raise bad(f"no quantiles for target {name!r}")
                per_target.append(_parse_target(entry["targets"][name], levels, bad))
            sets.append(IntervalSet(tta=str(entry["tta"]), targets=tuple(per_target),
                                    model=str(entry.get("model", "")), fit_split=str(entry.get("fit_split", "")),
                                    calibration_split=str(entry.get("calibration_split", "")),
                                    n_fit=int(entry.get("n_fit", 0)), n_calibration=int(entry["n_calibration"])))
        if not sets:
            raise bad("no interval sets")
        if not levels or not all(0 < v < 1 for v in levels):
            raise bad(f"levels must be in (0, 1), got {list(levels)}")
        if not wide > 0:
            raise bad(f"wide_factor must be > 0, got {wide}")
        return IntervalSpec(levels=levels, wide_factor=wide, sets=tuple(sets))

    return read_section(data, name="intervals", fix="re-export the model with `edgereg export`", parse=parse)


def _parse_target(data: Mapping[str, Any], levels: tuple[float, ...], bad: Bad) -> TargetIntervals:
    d = data["difficulty"]
    if d["name"] not in DIFFICULTIES:
        raise bad(f"unknown difficulty {d['name']!r}")
    coef = tuple(float(c) for c in d["coef"])
    x_range = tuple(_number(v, -math.inf if i == 0 else math.inf) for i, v in enumerate(d["x_range"]))
    floor = float(d["floor"])
    if len(coef) != 4 or len(x_range) != 2 or not floor > 0:
        raise bad("difficulty needs 4 coefficients, an x_range pair and a floor > 0")
    edges = tuple(float(e) for e in data.get("edges", ()))
    if list(edges) != sorted(edges):
        raise bad("Mondrian edges must ascend")
    quantiles = {}
    for level in levels:
        key = format_level(level)
        row = tuple(_pair(q) for q in data["quantiles"][key])
        if len(row) != len(edges) + 1 or not all(lo + hi >= 0 for lo, hi in row):
            raise bad(f"level {key} needs {len(edges) + 1} quantile pairs [q_lo, q_hi] with q_lo + q_hi >= 0")
        quantiles[level] = row
    return TargetIntervals(Difficulty(d["name"], coef, x_range, floor), edges, quantiles,
                           float(data.get("median_sigma", 1.0)))


def _number(value: Any, none_means: float) -> float:
    return none_means if value is None else float(value)


def _pair(value: Any) -> tuple[float, float]:
    """(q_lo, q_hi) from ``[q_lo, q_hi]``, or one number for both; null is infinite."""
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise ValueError(f"a quantile pair has 2 numbers, got {value!r}")
        return _number(value[0], math.inf), _number(value[1], math.inf)
    q = _number(value, math.inf)
    return q, q


def format_level(level: float) -> str:
    """The card key of a level: ``0.9`` -> ``"0.9"``."""
    return f"{level:g}"


def target_to_dict(target: TargetIntervals) -> dict:
    """JSON-ready form of one target (inverse of the parser; inf -> null)."""
    def clean(v: float) -> float | None:
        return None if not math.isfinite(v) else float(v)

    d = target.difficulty
    return {"difficulty": {"name": d.name, "coef": list(d.coef), "x_range": [clean(v) for v in d.x_range],
                           "floor": d.floor},
            "edges": list(target.edges),
            "quantiles": {format_level(level): [[clean(lo), clean(hi)] for lo, hi in row]
                          for level, row in target.quantiles.items()},
            "median_sigma": target.median_sigma}


@dataclass(frozen=True)
class Intervals:
    """Bounds of a batch of readings.

    Attributes:
        lo, hi: (B, T) float64 bounds in the readings' units (angles wrapped to [0, 360)).
        width: (B, T) float64 hi - lo before clipping or wrapping.
        wide: (B, T) bool, sigma above ``wide_factor`` times the calibration median.
    """

    lo: np.ndarray
    hi: np.ndarray
    width: np.ndarray
    wide: np.ndarray


class IntervalKernel:
    """An IntervalSet at one level, as (T,) arrays, so a batch costs a handful of numpy operations.

    Args:
        entry: the IntervalSet matching the TTA in use.
        kind: the card's target kind.
        level: a stored confidence level.
        wide_factor: see :class:`IntervalSpec`.
    """

    def __init__(self, entry: IntervalSet, kind: str | TargetKind, level: float, *, wide_factor: float) -> None:
        self.entry, self.kind, self.level = entry, target_kind(kind), level
        targets = entry.targets
        self.coef = np.array([t.difficulty.coef for t in targets], dtype=np.float64).T  # (4, T)
        self.uses_spread = bool(np.any(self.coef[3] != 0.0))
        self.x_lo = np.array([t.difficulty.x_range[0] for t in targets], dtype=np.float64)  # (T,)
        self.x_hi = np.array([t.difficulty.x_range[1] for t in targets], dtype=np.float64)  # (T,)
        self.floor = np.array([t.difficulty.floor for t in targets], dtype=np.float64)  # (T,)
        self.wide_sigma = wide_factor * np.array([t.median_sigma for t in targets], dtype=np.float64)  # (T,)
        self.mondrian = any(t.edges for t in targets)
        self.q_lo = np.array([t.quantiles[level][0][0] for t in targets], dtype=np.float64)  # (T,) single-bin case
        self.q_hi = np.array([t.quantiles[level][0][1] for t in targets], dtype=np.float64)  # (T,)

    def bounds(self, values: np.ndarray, spread: np.ndarray | None, scale: np.ndarray | None = None) -> Intervals:
        """Conformal intervals of readings.

        Args:
            values: (B, T) float64 readings (network output after TTA reduction; coords in source px).
            spread: (B, T) float64 TTA spread, or None.
            scale: (B, T) float64 per-reading scale (crop side for coords), or None for 1.
        """
        c0, c1, c2, c3 = self.coef
        u = np.minimum(np.maximum(values, self.x_lo), self.x_hi)  # (B, T); NaN stays NaN
        sigma = c0 + u * (c1 + c2 * u)
        if self.uses_spread and spread is not None:
            sigma = sigma + c3 * spread
        sigma = np.fmax(sigma, self.floor)  # fmax: a NaN reading gets the floor
        wide = sigma > self.wide_sigma
        if scale is not None:
            sigma = sigma * scale
        if self.mondrian:
            pairs = [t.quantile(self.level, values[:, j]) for j, t in enumerate(self.entry.targets)]
            q_lo = np.stack([p[0] for p in pairs], axis=1)  # T x (B,) -> (B, T)
            q_hi = np.stack([p[1] for p in pairs], axis=1)
        else:
            q_lo, q_hi = self.q_lo, self.q_hi
        with np.errstate(invalid="ignore"):
            below, above = q_lo * sigma, q_hi * sigma  # inf * sigma stays inf: too few calibration images
        lo, hi = values - below, values + above
        width = below + above
        lo, hi = self.kind.interval_bounds(lo, hi, width)  # wrapped for angles, clipped for probabilities
        return Intervals(lo, hi, width, wide)


def interval_bounds(entry: IntervalSet, kind: str | TargetKind, values: np.ndarray, spread: np.ndarray | None,
                    scale: np.ndarray | None, level: float, *, wide_factor: float) -> Intervals:
    """One-off :meth:`IntervalKernel.bounds` (build the kernel once when reading many batches)."""
    kernel = IntervalKernel(entry, kind, level, wide_factor=wide_factor)
    return kernel.bounds(np.asarray(values, dtype=np.float64), spread, scale)


def covered(kind: str | TargetKind, truth: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """(N, T) bool: truth inside [lo, hi] (circularly for angles, where lo > hi wraps through 0)."""
    return target_kind(kind).covered(truth, lo, hi)


__all__ = ["DEFAULT_CONFIDENCE", "DIFFICULTIES", "Difficulty", "IntervalKernel", "IntervalSet", "IntervalSpec",
           "Intervals", "LEVELS", "TargetIntervals", "circular_residual", "conformal_quantile", "covered",
           "format_level", "interval_bounds", "one_sided_level", "parse_intervals", "rows_needed", "signed_residual",
           "target_to_dict", "unsupported_reason"]
