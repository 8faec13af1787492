"""The fused post-processing kernel of lab-grade readings (numba): interval, calibration, flags.

One pass over a ``(B, T)`` batch of network readings does what ``edgereg.lab`` describes, with the
same arithmetic as the generated C (``edgereg.export.c_lab``), so a reading costs about a
microsecond instead of the tens that a chain of small numpy calls costs at batch 1. The tables
are built once per :class:`edgereg.lab.LabReadout` (:class:`LabTables`).

Flag bits follow ``edgereg.lab.LAB_FLAGS``: 0 below_lob, 1 below_lod, 2 below_loq, 3 below_range,
4 above_range, 5 extrapolated, 6 uncalibrated, 7 interval_wide.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit

KIND_CODES = {"angle": 1, "distribution": 2}  # every other kind: 0 (no wrapping, no clipping)
FIT_NONE, FIT_POLYNOMIAL, FIT_ISOTONIC = -1, 0, 1


# Rows of LabTables.floats, one column per target.
X_LO, X_HI, FLOOR, WIDE_SIGMA = 0, 1, 2, 3  # difficulty clip range, its floor, interval_wide threshold
C0 = 4  # C0..C0+3: difficulty coefficients c0, c1, c2, c3 (spread)
T_QUANTILE, ISO_SE, REF_LO, REF_HI = 8, 9, 10, 11  # calibration: t at the level, isotonic se, standards' span
LOB, LOD, LOQ, RANGE_LO, RANGE_HI = 12, 13, 14, 15, 16  # validation limits (NaN: none)
B0 = 17  # B0..B0+2: calibration coefficients b0, b1, b2
COV = 20  # COV..COV+8: their 3 x 3 covariance, row-major
N_FLOAT_ROWS = 29
# Rows of LabTables.ints.
N_EDGES, FIT, N_KNOTS, UNCALIBRATED = 0, 1, 2, 3
# Bits of the mode argument.
HAS_SPREAD, HAS_SCALE, HAS_INTERVAL = 1, 2, 4


@dataclass(frozen=True)
class LabTables:
    """Everything the kernel needs, packed into few arrays (numba pays per argument).

    Attributes:
        floats: (N_FLOAT_ROWS, T) float64, rows named by the constants above.
        ints: (4, T) int64: Mondrian edges per target, FIT_* code, isotonic knots, uncalibrated 0/1.
        bins: (T, 3 * nb) float64: for the nb Mondrian bins at the level in use, the lower quantiles
            q_lo, then the upper ones q_hi (inf: too few calibration images), then the nb - 1 inner
            edges.
        knots: (2, T, K) float64: isotonic knots x and y.
        mode: HAS_INTERVAL bit | kind code << 3 (spread and scale bits are added per call).
    """

    floats: np.ndarray
    ints: np.ndarray
    bins: np.ndarray
    knots: np.ndarray
    mode: int

    @property
    def has_interval(self) -> bool:
        return bool(self.mode & HAS_INTERVAL)


def build_tables(n: int, kind: str, *, kernel=None, calibration=None, names=(), level=None, limits=None,
                 uncalibrated=None) -> LabTables:
    """LabTables from an ``edgereg.intervals.IntervalKernel`` (or None), an
    ``edgereg.calibration.Calibration`` (or None) with the target ``names``, the interval ``level``,
    the ``(5, T)`` limits lob, lod, loq, range lo, range hi (or None) and the ``(T,)`` uncalibrated
    mask."""
    floats = np.zeros((N_FLOAT_ROWS, n))
    floats[FLOOR] = 1.0
    floats[WIDE_SIGMA] = np.inf
    floats[REF_LO], floats[REF_HI] = -np.inf, np.inf
    floats[LOB:RANGE_HI + 1] = np.nan if limits is None else limits
    ints = np.zeros((4, n), np.int64)
    ints[FIT] = FIT_NONE
    if uncalibrated is not None:
        ints[UNCALIBRATED] = np.asarray(uncalibrated, dtype=np.int64)
    bins = np.zeros((n, 3))
    if kernel is not None:
        targets = kernel.entry.targets
        count = max(len(t.edges) for t in targets) + 1
        bins = np.zeros((n, 3 * count))
        for j, target in enumerate(targets):
            pairs = np.asarray(target.quantiles[kernel.level], dtype=np.float64)  # (bins of j, 2)
            bins[j, :2 * count] = np.inf
            bins[j, :len(pairs)] = pairs[:, 0]
            bins[j, count:count + len(pairs)] = pairs[:, 1]
            bins[j, 2 * count:2 * count + len(target.edges)] = target.edges
            ints[N_EDGES, j] = len(target.edges)
        floats[X_LO], floats[X_HI] = kernel.x_lo, kernel.x_hi
        floats[FLOOR], floats[WIDE_SIGMA] = kernel.floor, kernel.wide_sigma
        floats[C0:C0 + 4] = kernel.coef
    knot_lists = [((), ())] * n
    if calibration is not None:
        for j, name in enumerate(names):
            curve = calibration.targets.get(name)
            if curve is None:
                continue
            ints[FIT, j] = FIT_ISOTONIC if curve.fit == "isotonic" else FIT_POLYNOMIAL
            floats[B0:B0 + 3, j] = curve.coef
            floats[COV:COV + 9, j] = np.asarray(curve.cov, dtype=np.float64).reshape(9)  # (3, 3) -> (9,)
            floats[T_QUANTILE, j] = curve.t_quantile(level) if level is not None else 0.0
            floats[ISO_SE, j] = curve.residual_sd / math.sqrt(max(curve.n_eff, 1.0))
            floats[REF_LO, j], floats[REF_HI, j] = curve.reference_range
            knot_lists[j] = curve.knots or ((), ())
            ints[N_KNOTS, j] = len(knot_lists[j][0])
    most = max(max(len(xs) for xs, _ in knot_lists), 1)
    knots = np.zeros((2, n, most))
    for j, (xs, ys) in enumerate(knot_lists):
        knots[0, j, :len(xs)], knots[1, j, :len(ys)] = xs, ys
    mode = (HAS_INTERVAL if kernel is not None else 0) | (KIND_CODES.get(kind, 0) << 3)
    return LabTables(floats=floats, ints=ints, bins=bins, knots=knots, mode=mode)


@njit(cache=True, inline="always")
def _curve(floats, ints, knots, j, x):
    if ints[FIT, j] == FIT_ISOTONIC:  # linear between knots, flat beyond the ends (numpy.interp)
        k = ints[N_KNOTS, j]
        if x <= knots[0, j, 0]:
            return knots[1, j, 0]
        if x >= knots[0, j, k - 1]:
            return knots[1, j, k - 1]
        i = 1
        while i < k - 1 and x > knots[0, j, i]:
            i += 1
        x0, x1 = knots[0, j, i - 1], knots[0, j, i]
        return knots[1, j, i - 1] + (knots[1, j, i] - knots[1, j, i - 1]) * (x - x0) / (x1 - x0)
    return floats[B0, j] + floats[B0 + 1, j] * x + floats[B0 + 2, j] * x * x


@njit(cache=True)
def lab_postprocess(values, spread, scale, mode, floats, ints, bins, knots, out, out_mask):
    """Fill ``out (3, B, T)`` (values, lo, hi) and ``out_mask (B,) uint32`` from ``values (B, T)``.

    ``spread`` / ``scale`` are (B, T) when ``mode`` has HAS_SPREAD / HAS_SCALE, else ignored.
    """
    n, targets = values.shape
    has_spread = (mode & HAS_SPREAD) != 0
    has_scale = (mode & HAS_SCALE) != 0
    has_interval = (mode & HAS_INTERVAL) != 0
    kind_code = mode >> 3
    count = bins.shape[1] // 3
    for b in range(n):
        mask = 0
        for j in range(targets):
            x = values[b, j]
            lo = np.nan
            hi = np.nan
            if has_interval:
                u = floats[X_LO, j] if x < floats[X_LO, j] else x
                u = floats[X_HI, j] if u > floats[X_HI, j] else u
                sigma = floats[C0, j] + u * (floats[C0 + 1, j] + floats[C0 + 2, j] * u)
                if has_spread and floats[C0 + 3, j] != 0.0:
                    sigma += floats[C0 + 3, j] * spread[b, j]
                if not (sigma >= floats[FLOOR, j]):  # below the floor, or NaN
                    sigma = floats[FLOOR, j]
                if sigma > floats[WIDE_SIGMA, j]:
                    mask |= 1 << 7
                if has_scale:
                    sigma *= scale[b, j]
                k = 0
                while k < ints[N_EDGES, j] and x >= bins[j, 2 * count + k]:
                    k += 1
                below = bins[j, k] * sigma
                above = bins[j, count + k] * sigma
                lo = x - below
                hi = x + above
                if kind_code == 1:  # angle
                    if not (below + above < 360.0):
                        lo = 0.0
                        hi = 360.0
                    else:
                        lo = lo % 360.0
                        hi = hi % 360.0
                elif kind_code == 2:  # distribution
                    lo = min(max(lo, 0.0), 1.0)
                    hi = min(max(hi, 0.0), 1.0)
            value = x
            if ints[FIT, j] != FIT_NONE:
                value = _curve(floats, ints, knots, j, x)
                if has_interval:
                    low = _curve(floats, ints, knots, j, lo)
                    high = _curve(floats, ints, knots, j, hi)
                    if low > high:
                        low, high = high, low
                    if ints[FIT, j] == FIT_POLYNOMIAL and floats[B0 + 2, j] != 0.0:
                        vertex = -floats[B0 + 1, j] / (2.0 * floats[B0 + 2, j])
                        if lo < vertex < hi:
                            at = _curve(floats, ints, knots, j, vertex)
                            low = min(low, at)
                            high = max(high, at)
                    if ints[FIT, j] == FIT_ISOTONIC:
                        se = floats[ISO_SE, j]
                    else:
                        variance = 0.0
                        for r in range(3):
                            for c in range(3):
                                variance += x ** r * floats[COV + 3 * r + c, j] * x ** c
                        se = math.sqrt(variance) if variance > 0.0 else 0.0
                    extra = floats[T_QUANTILE, j] * se
                    lo = value - math.sqrt((value - low) ** 2 + extra * extra)
                    hi = value + math.sqrt((high - value) ** 2 + extra * extra)
                if value < floats[REF_LO, j] or value > floats[REF_HI, j]:
                    mask |= 1 << 5
            if value < floats[LOB, j]:
                mask |= 1 << 0
            if value < floats[LOD, j]:
                mask |= 1 << 1
            if value < floats[LOQ, j]:
                mask |= 1 << 2
            if value < floats[RANGE_LO, j]:
                mask |= 1 << 3
            if value > floats[RANGE_HI, j]:
                mask |= 1 << 4
            if ints[UNCALIBRATED, j]:
                mask |= 1 << 6
            out[0, b, j] = value
            out[1, b, j] = lo
            out[2, b, j] = hi
        out_mask[b] = mask


__all__ = ["HAS_SCALE", "HAS_SPREAD", "LabTables", "build_tables", "lab_postprocess"]
