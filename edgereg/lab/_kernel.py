"""The post-processing of lab-grade readings, one reading at a time: interval, calibration, flags.

One pass over a ``(B, T)`` batch of network readings does what ``edgereg.lab.readout`` describes, with the
arithmetic of the generated C (``edgereg.export.c.lab``), in plain Python floats. That is a few
microseconds per reading: less than a chain of small numpy calls costs at batch 1 (tens of
microseconds), and no numba, whose import a process scoring one image must not pay (see
``edgereg.preprocess.batch``). The per-target constants are unpacked once per
:class:`edgereg.lab.readout.LabReadout` into :class:`TargetTable` tuples.

Flag bits follow ``edgereg.lab.readout.LAB_FLAGS``: 0 below_lob, 1 below_lod, 2 below_loq, 3 below_range,
4 above_range, 5 extrapolated, 6 uncalibrated, 7 interval_wide.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

FIT_NONE, FIT_POLYNOMIAL, FIT_ISOTONIC = -1, 0, 1
INF = math.inf
NAN = math.nan


class TargetTable(NamedTuple):
    """One target's constants, as Python numbers (NaN limits: none; infinite quantiles: too few images)."""

    x_lo: float = -INF  # the difficulty's clip range
    x_hi: float = INF
    floor: float = 1.0  # the smallest difficulty
    wide_sigma: float = INF  # interval_wide above this difficulty
    coef: tuple[float, float, float, float] = (1.0, 0.0, 0.0, 0.0)  # difficulty c0, c1, c2, c3 (spread)
    q_lo: tuple[float, ...] = ()  # per Mondrian bin; () without intervals
    q_hi: tuple[float, ...] = ()
    edges: tuple[float, ...] = ()  # inner bin edges on the reading
    fit: int = FIT_NONE  # calibration: FIT_*
    b: tuple[float, float, float] = (0.0, 1.0, 0.0)  # reference = b0 + b1 x + b2 x^2
    cov: tuple[float, ...] = (0.0,) * 9  # their covariance, row-major
    t: float = 0.0  # Student t at the interval level
    iso_se: float = 0.0  # isotonic curve's standard error
    knots_x: tuple[float, ...] = ()
    knots_y: tuple[float, ...] = ()
    ref_lo: float = -INF  # the standards' reference span (outside: extrapolated)
    ref_hi: float = INF
    lob: float = NAN
    lod: float = NAN
    loq: float = NAN
    range_lo: float = NAN
    range_hi: float = NAN
    uncalibrated: bool = False


def build_tables(names, kind: str, *, kernel=None, calibration=None, level=None, limits=None,
                 uncalibrated=None) -> tuple[TargetTable, ...]:
    """One TargetTable per target from an ``edgereg.lab.intervals.IntervalKernel`` (or None), an
    ``edgereg.lab.calibration.Calibration`` (or None), the interval ``level``, ``limits`` ({"lob": (T,),
    ...} from ``LabReadout.limit_arrays``, or None) and the ``(T,)`` uncalibrated mask."""
    tables = []
    for j, name in enumerate(names):
        fields: dict = {}
        if kernel is not None:
            target = kernel.entry.targets[j]
            pairs = target.quantiles[kernel.level]
            fields.update(x_lo=float(kernel.x_lo[j]), x_hi=float(kernel.x_hi[j]), floor=float(kernel.floor[j]),
                          wide_sigma=float(kernel.wide_sigma[j]), coef=tuple(float(c) for c in kernel.coef[:, j]),
                          q_lo=tuple(float(p[0]) for p in pairs), q_hi=tuple(float(p[1]) for p in pairs),
                          edges=tuple(float(e) for e in target.edges))
        curve = calibration.targets.get(name) if calibration is not None else None
        if curve is not None:
            xs, ys = curve.knots or ((), ())
            fields.update(fit=FIT_ISOTONIC if curve.fit == "isotonic" else FIT_POLYNOMIAL,
                          b=tuple(float(c) for c in curve.coef),
                          cov=tuple(float(c) for c in np.asarray(curve.cov, dtype=np.float64).reshape(9)),
                          t=curve.t_quantile(level) if level is not None else 0.0,
                          iso_se=curve.residual_sd / math.sqrt(max(curve.n_eff, 1.0)),
                          knots_x=tuple(xs), knots_y=tuple(ys), ref_lo=curve.reference_range[0],
                          ref_hi=curve.reference_range[1])
        if limits is not None:
            fields.update({key: float(limits[key][j]) for key in ("lob", "lod", "loq", "range_lo", "range_hi")})
        if uncalibrated is not None:
            fields["uncalibrated"] = bool(uncalibrated[j])
        tables.append(TargetTable(**fields))
    return tuple(tables)


def _curve(table: TargetTable, x: float) -> float:
    """The calibration curve at reading x (isotonic: linear between knots, flat beyond the ends)."""
    if table.fit == FIT_ISOTONIC:
        xs, ys = table.knots_x, table.knots_y
        if x <= xs[0]:
            return ys[0]
        if x >= xs[-1]:
            return ys[-1]
        i = 1
        while i < len(xs) - 1 and x > xs[i]:
            i += 1
        return ys[i - 1] + (ys[i] - ys[i - 1]) * (x - xs[i - 1]) / (xs[i] - xs[i - 1])
    b0, b1, b2 = table.b
    if not math.isfinite(x):  # an infinite bound stays infinite (0 * inf would be NaN)
        return _curve_limit(table, x)
    return b0 + b1 * x + b2 * x * x


def _curve_limit(table: TargetTable, x: float) -> float:
    """The curve's value towards an infinite reading: infinite in the curve's direction there (an
    interval that conformal prediction leaves open stays open after calibration); NaN stays NaN."""
    if x != x:
        return x
    if table.fit == FIT_ISOTONIC:
        return x  # non-decreasing: -inf -> -inf, inf -> inf
    b0, b1, b2 = table.b
    if b2 != 0.0:
        return math.copysign(INF, b2)
    if b1 != 0.0:
        return math.copysign(INF, b1 * x)
    return b0


def _curve_se(table: TargetTable, x: float) -> float:
    if table.fit == FIT_ISOTONIC:
        return table.iso_se
    basis = (1.0, x, x * x)
    cov = table.cov
    variance = sum(basis[r] * cov[3 * r + c] * basis[c] for r in range(3) for c in range(3))
    return math.sqrt(variance) if variance > 0.0 else 0.0


def postprocess(values: np.ndarray, spread: np.ndarray | None, scale: np.ndarray | None,
                tables: tuple[TargetTable, ...], kind_code: int,
                has_interval: bool) -> tuple[np.ndarray, list[int]]:
    """Calibrated values and interval bounds of a batch, and each reading's flag bits.

    Args:
        values: (B, T) float64 network readings; spread: (B, T) TTA spread or None; scale: (B, T)
            crop sides (coords) or None.
        tables: one TargetTable per target; kind_code: ``TargetKind.lab_code`` of the card's kind.
        has_interval: compute bounds (else lo/hi are NaN).

    Returns:
        ((3, B, T) float64: values, lo, hi; B flag bit masks).
    """
    rows = values.tolist()
    spreads = spread.tolist() if spread is not None else None
    scales = scale.tolist() if scale is not None else None
    out_values, out_lo, out_hi, masks = [], [], [], []
    for b, row in enumerate(rows):
        mask = 0
        row_values, row_lo, row_hi = [], [], []
        for j, x in enumerate(row):
            table = tables[j]
            lo = hi = NAN
            if has_interval:
                u = table.x_lo if x < table.x_lo else x
                u = table.x_hi if u > table.x_hi else u
                c0, c1, c2, c3 = table.coef
                sigma = c0 + u * (c1 + c2 * u)
                if spreads is not None and c3 != 0.0:
                    sigma += c3 * spreads[b][j]
                if not (sigma >= table.floor):  # below the floor, or NaN
                    sigma = table.floor
                if sigma > table.wide_sigma:
                    mask |= 1 << 7
                if scales is not None:
                    sigma *= scales[b][j]
                k = 0
                edges = table.edges
                while k < len(edges) and x >= edges[k]:
                    k += 1
                below, above = table.q_lo[k] * sigma, table.q_hi[k] * sigma
                lo, hi = x - below, x + above
                if kind_code == 1:  # angle: wrapped; a width of 360 or more is the whole circle
                    if not (below + above < 360.0):
                        lo, hi = 0.0, 360.0
                    else:
                        lo, hi = lo % 360.0, hi % 360.0
                elif kind_code == 2:  # distribution: probabilities
                    lo, hi = min(max(lo, 0.0), 1.0), min(max(hi, 0.0), 1.0)
            value = x
            if table.fit != FIT_NONE:
                value = _curve(table, x)
                if has_interval:
                    low, high = _curve(table, lo), _curve(table, hi)
                    if low > high:
                        low, high = high, low
                    b1, b2 = table.b[1], table.b[2]
                    if table.fit == FIT_POLYNOMIAL and b2 != 0.0:
                        vertex = -b1 / (2.0 * b2)
                        if lo < vertex < hi:
                            at = _curve(table, vertex)
                            low, high = min(low, at), max(high, at)
                    extra = table.t * _curve_se(table, x)
                    lo = -INF if low == -INF else value - math.sqrt((value - low) ** 2 + extra * extra)
                    hi = INF if high == INF else value + math.sqrt((high - value) ** 2 + extra * extra)
                if value < table.ref_lo or value > table.ref_hi:
                    mask |= 1 << 5
            if value < table.lob:
                mask |= 1 << 0
            if value < table.lod:
                mask |= 1 << 1
            if value < table.loq:
                mask |= 1 << 2
            if value < table.range_lo:
                mask |= 1 << 3
            if value > table.range_hi:
                mask |= 1 << 4
            if table.uncalibrated:
                mask |= 1 << 6
            row_values.append(value)
            row_lo.append(lo)
            row_hi.append(hi)
        out_values.append(row_values)
        out_lo.append(row_lo)
        out_hi.append(row_hi)
        masks.append(mask)
    out = np.array((out_values, out_lo, out_hi), dtype=np.float64).reshape(3, *values.shape)  # (3, B, T)
    return out, masks


__all__ = ["FIT_ISOTONIC", "FIT_NONE", "FIT_POLYNOMIAL", "TargetTable", "build_tables", "postprocess"]
