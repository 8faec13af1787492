"""Method-validation figures of ICH Q2(R2) and CLSI EP17-A2, from readings of reference standards.

Every function takes plain arrays (the model's readings in its calibrated units, and the standards'
reference values) and returns plain numbers, so the formulas can be checked against published
worked examples. Formulas:

* Linearity (ICH Q2): ordinary least squares of the reading on the reference over the non-blank
  levels, ``reading = a + S reference``; R²; residual SD ``s_y/x = sqrt(SSE / (n - 2))``; standard
  errors ``s_S = s_y/x / sqrt(Sxx)`` and ``s_a = s_y/x sqrt(sum x^2 / (n Sxx))``; 95% confidence
  intervals with Student's t at n - 2 degrees of freedom.
* Repeatability: per level the mean, SD (n - 1), CV = SD / |mean|, bias = mean - reference and
  recovery = mean / reference; pooled SD ``sqrt(sum (n_i - 1) s_i^2 / sum (n_i - 1))``.
* EP17: ``LoB = mean_blank + 1.645 SD_blank``; ``LoD = LoB + 1.645 SD_low`` with SD_low the pooled SD of
  the low-level samples. Also reported: EP17-A2's small-sample form, the multiplier
  ``c_p = 1.645 / (1 - 1 / (4 (N - K)))`` (N results of K samples) in place of 1.645, and the
  non-parametric LoB, the value at rank ``0.5 + 0.95 B`` of the B sorted blank results
  (interpolated between neighbours).
* ICH: ``LOD = 3.3 sigma / S`` and ``LOQ = 10 sigma / S``, sigma the residual SD of the regression
  (default) or the SD of the blanks.
* Working range: the contiguous run of levels, from the top level down, whose CV and |bias| (in
  percent of the reference) meet the acceptance limits, cut below at the LOQ.

The blanks (reference 0) are used for the LoB and the blank sigma only; the regression uses the
other levels, where the method is meant to be linear.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from edgereg.errors import EdgeregError, require_extra

Z_95 = 1.645  # one-sided 95% normal quantile, EP17's multiplier
ICH_LOD_FACTOR = 3.3
ICH_LOQ_FACTOR = 10.0


def limit_of_blank(blanks: Sequence[float], *, samples: int = 1) -> dict:
    """EP17 limit of blank from blank results.

    Args:
        blanks: the readings of blank samples (B >= 2).
        samples: K, the number of distinct blank samples they came from (for c_p).

    Returns:
        {"n", "mean", "sd", "lob" (mean + 1.645 SD), "cp", "lob_cp" (mean + c_p SD),
        "lob_nonparametric"}.
    """
    values = np.asarray(blanks, dtype=np.float64)
    if len(values) < 2:
        raise EdgeregError(f"the limit of blank needs at least 2 blank results, got {len(values)}; photograph "
                           "blanks (reference 0) several times")
    mean, sd = float(values.mean()), float(values.std(ddof=1))
    cp = ep17_cp(len(values), samples)
    rank = 0.5 + 0.95 * len(values)  # 1-based rank of the 95th percentile (EP17-A2)
    ordered = np.sort(values)
    low = min(max(int(math.floor(rank)), 1), len(values))
    high = min(low + 1, len(values))
    fraction = rank - math.floor(rank) if high > low else 0.0
    nonparametric = float(ordered[low - 1] + fraction * (ordered[high - 1] - ordered[low - 1]))
    return {"n": int(len(values)), "mean": mean, "sd": sd, "lob": mean + Z_95 * sd, "cp": cp,
            "lob_cp": mean + cp * sd, "lob_nonparametric": nonparametric}


def ep17_cp(results: int, samples: int) -> float:
    """EP17-A2's multiplier ``1.645 / (1 - 1 / (4 (N - K)))`` for N results of K samples."""
    dof = results - samples
    if dof < 1:
        raise EdgeregError(f"{results} results of {samples} samples leave no degrees of freedom for an SD")
    return Z_95 / (1.0 - 1.0 / (4.0 * dof))


def pooled_sd(groups: Sequence[Sequence[float]]) -> tuple[float, int]:
    """(pooled SD, degrees of freedom) of replicate groups: sqrt(sum (n_i - 1) s_i^2 / sum (n_i - 1))."""
    total, dof = 0.0, 0
    for group in groups:
        values = np.asarray(group, dtype=np.float64)
        if len(values) >= 2:
            total += float(((values - values.mean()) ** 2).sum())
            dof += len(values) - 1
    if dof == 0:
        raise EdgeregError("an SD needs replicates: photograph each standard at least twice")
    return math.sqrt(total / dof), dof


def limit_of_detection(lob: float, low_samples: Sequence[Sequence[float]], *, lob_cp: float | None = None) -> dict:
    """EP17 limit of detection from the LoB and replicate readings of low-level samples.

    Returns:
        {"sd_low", "n", "samples", "lod" (LoB + 1.645 SD_low), "cp", "lod_cp" (lob_cp + c_p SD_low)}.
    """
    sd_low, dof = pooled_sd(low_samples)
    count = sum(len(s) for s in low_samples)
    cp = ep17_cp(count, len(low_samples))
    return {"sd_low": sd_low, "n": int(count), "samples": len(low_samples), "lod": lob + Z_95 * sd_low, "cp": cp,
            "lod_cp": (lob if lob_cp is None else lob_cp) + cp * sd_low}


def ich_limits(sigma: float, slope: float) -> dict:
    """ICH Q2: {"lod": 3.3 sigma / S, "loq": 10 sigma / S}."""
    if not slope or not math.isfinite(slope):
        raise EdgeregError(f"the slope S must be a non-zero number for 3.3 sigma / S, got {slope}")
    return {"sigma": float(sigma), "slope": float(slope), "lod": ICH_LOD_FACTOR * sigma / abs(slope),
            "loq": ICH_LOQ_FACTOR * sigma / abs(slope)}


def linearity(reference: Sequence[float] | np.ndarray, readings: Sequence[float] | np.ndarray) -> dict:
    """Least squares of reading on reference, with the ICH linearity figures.

    Returns:
        {"n", "slope", "intercept", "r", "r2", "residual_sd", "slope_se", "intercept_se",
        "slope_ci95", "intercept_ci95", "residuals" (list)}.
    """
    x = np.asarray(reference, dtype=np.float64)
    y = np.asarray(readings, dtype=np.float64)
    n = len(x)
    if n < 3 or len(np.unique(x)) < 2:
        raise EdgeregError(f"linearity needs at least 3 standards at 2 levels, got {n} at {len(np.unique(x))}")
    stats = require_extra("scipy.stats", "lab")
    sxx = float(((x - x.mean()) ** 2).sum())
    slope = float(((x - x.mean()) * (y - y.mean())).sum() / sxx)
    intercept = float(y.mean() - slope * x.mean())
    residuals = y - (intercept + slope * x)
    residual_sd = math.sqrt(float((residuals ** 2).sum()) / (n - 2))
    slope_se = residual_sd / math.sqrt(sxx)
    intercept_se = residual_sd * math.sqrt(float((x ** 2).sum()) / (n * sxx))
    t = float(stats.t.ppf(0.975, n - 2))
    syy = float(((y - y.mean()) ** 2).sum())
    r = slope * math.sqrt(sxx / syy) if syy > 0 else float("nan")
    return {"n": n, "slope": slope, "intercept": intercept, "r": r, "r2": r * r, "residual_sd": residual_sd,
            "slope_se": slope_se, "intercept_se": intercept_se, "t95": t,
            "slope_ci95": [slope - t * slope_se, slope + t * slope_se],
            "intercept_ci95": [intercept - t * intercept_se, intercept + t * intercept_se],
            "residuals": residuals.tolist()}


def repeatability(reference: Sequence[float] | np.ndarray, readings: Sequence[float] | np.ndarray) -> dict:
    """Per level: n, mean, SD, CV %, bias, recovery %; and the pooled SD over levels with replicates."""
    x = np.asarray(reference, dtype=np.float64)
    y = np.asarray(readings, dtype=np.float64)
    levels = []
    for level in np.unique(x):
        values = y[x == level]
        sd = float(values.std(ddof=1)) if len(values) >= 2 else None
        mean = float(values.mean())
        levels.append({"reference": float(level), "n": int(len(values)), "mean": mean, "sd": sd,
                       "cv_percent": None if sd is None or mean == 0 else 100.0 * sd / abs(mean),
                       "bias": mean - float(level),
                       "recovery_percent": None if level == 0 else 100.0 * mean / float(level)})
    groups = [y[x == level] for level in np.unique(x)]
    try:
        pooled, dof = pooled_sd(groups)
    except EdgeregError:
        pooled, dof = None, 0
    return {"levels": levels, "pooled_sd": pooled, "dof": dof}


def working_range(levels: Sequence[dict], *, loq: float | None, max_cv: float, max_bias: float) -> dict:
    """The validated range: from the top level down, the contiguous levels that meet the acceptance
    limits (CV <= max_cv %, |bias| <= max_bias % of the reference) and lie at or above the LOQ."""
    accepted = []
    for level in sorted((lv for lv in levels if lv["reference"] != 0), key=lambda lv: -lv["reference"]):
        cv_ok = level["cv_percent"] is None or level["cv_percent"] <= max_cv
        bias_ok = abs(level["bias"]) <= max_bias / 100.0 * abs(level["reference"])
        above = loq is None or level["reference"] >= loq
        level["accepted"] = bool(cv_ok and bias_ok and above)
        if not level["accepted"]:
            break
        accepted.append(level["reference"])
    if not accepted:
        return {"range": None, "levels": [], "max_cv_percent": max_cv, "max_bias_percent": max_bias}
    return {"range": [min(accepted), max(accepted)], "levels": sorted(accepted), "max_cv_percent": max_cv,
            "max_bias_percent": max_bias}


def validate(reference: Sequence[float] | np.ndarray, readings: Sequence[float] | np.ndarray, *,
             sigma: str = "residual", low_max: float | None = None, max_cv: float = 15.0,
             max_bias: float = 15.0) -> dict:
    """Every figure for one target.

    Args:
        reference: (N,) reference values of the standards (0 for blanks).
        readings: (N,) the model's (calibrated) readings of them.
        sigma: "residual" (regression residual SD) or "blank" (SD of the blanks) for the ICH limits.
        low_max: low-level samples for the EP17 LoD are the non-blank levels <= this (default: the
            lowest non-blank level only).
        max_cv, max_bias: working-range acceptance in percent.

    Returns:
        {"linearity", "repeatability", "blank" (or None), "ep17_lod" (or None), "ich", "working_range",
        "limits": {"lob", "lod", "loq", "range", "lod_method", "loq_method"}}.
    """
    x = np.asarray(reference, dtype=np.float64)
    y = np.asarray(readings, dtype=np.float64)
    blank = x == 0
    line = linearity(x[~blank], y[~blank])
    repeat = repeatability(x, y)
    blank_figures = limit_of_blank(y[blank]) if blank.sum() >= 2 else None
    ep17 = None
    levels = np.unique(x[~blank])
    low_levels = levels[levels <= low_max] if low_max is not None else levels[:1]
    if blank_figures is not None and len(low_levels):
        groups = [y[x == level] for level in low_levels]
        if any(len(g) >= 2 for g in groups):
            ep17 = limit_of_detection(blank_figures["lob"], groups, lob_cp=blank_figures["lob_cp"])
            ep17["levels"] = [float(v) for v in low_levels]
    if sigma == "blank":
        if blank_figures is None:
            raise EdgeregError("--sigma blank needs at least 2 blank photos (reference 0); use --sigma residual")
        sigma_value = blank_figures["sd"]
    elif sigma == "residual":
        sigma_value = line["residual_sd"]
    else:
        raise EdgeregError(f"--sigma must be residual or blank, got {sigma!r}")
    ich = {**ich_limits(sigma_value, line["slope"]), "sigma_source": sigma}
    span = working_range(repeat["levels"], loq=ich["loq"], max_cv=max_cv, max_bias=max_bias)
    limits = {"lob": blank_figures["lob"] if blank_figures else None,
              "lod": ep17["lod"] if ep17 else ich["lod"],
              "loq": ich["loq"], "range": span["range"],
              "lod_method": "EP17 LoB + 1.645 SD_low" if ep17 else f"ICH 3.3 sigma/S ({sigma} sigma)",
              "loq_method": f"ICH 10 sigma/S ({sigma} sigma)"}
    return {"linearity": line, "repeatability": repeat, "blank": blank_figures, "ep17_lod": ep17, "ich": ich,
            "working_range": span, "limits": limits}


__all__ = ["ICH_LOD_FACTOR", "ICH_LOQ_FACTOR", "Z_95", "ep17_cp", "ich_limits", "limit_of_blank",
           "limit_of_detection", "linearity", "pooled_sd", "repeatability", "validate", "working_range"]
