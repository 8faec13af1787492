"""Fitting the reading -> reference calibration to standards (needs scipy: ``edgereg[lab]``).

Fits (the curve maps the network's reading ``x`` to the reference ``y``, see ``edgereg.lab.calibration``):

* ``linear`` (default): ordinary least squares ``y = b0 + b1 x``; 95% confidence intervals of the
  slope and intercept from Student's t at n - 2 degrees of freedom.
* ``quadratic``: ``y = b0 + b1 x + b2 x^2``; needs 3 levels and 4 standards.
* ``isotonic``: a non-decreasing curve (pool-adjacent-violators, ``scipy.optimize.isotonic_regression``)
  through the standards, interpolated linearly between them.
* ``offset``: ``y = b0 + x``, the one-standard correction (slope fixed at 1).
* ``auto``: chosen by residual analysis (:func:`residual_analysis`): linear unless the lack-of-fit
  F test of a straight line through the replicate means rejects it (p < 0.05) and there are at
  least 4 levels; then quadratic when its own lack-of-fit test passes and it is monotone over the
  standards, else isotonic. With 3 levels a curve cannot be checked (a parabola goes through 3
  level means exactly) and extrapolates worse than a line beyond the standards, so ``auto`` keeps
  the line and says that the residuals curve. One level: offset.

Residual analysis is done in the classical direction, the reading against the reference, where
replicates share their reference value: the pure-error sum of squares (replicates around their
level mean, n - L degrees of freedom) against the lack-of-fit sum of squares (level means around
the line, L - p). It needs replicates and more levels than parameters; without them the test is
reported as not available and ``auto`` keeps the simpler fit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from edgereg.errors import EdgeregError, require_extra
from edgereg.lab.intervals import LEVELS, format_level

FIT_CHOICES = ("linear", "quadratic", "isotonic", "offset", "auto")
ALPHA = 0.05  # significance of the lack-of-fit test
_PARAMETERS = {"offset": 1, "linear": 2, "quadratic": 3}


def _stats():
    return require_extra("scipy.stats", "lab")


def level_means(reference: np.ndarray, readings: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(levels (L,), mean reading per level (L,), level index of each standard (N,))."""
    levels, inverse = np.unique(reference, return_inverse=True)
    means = np.bincount(inverse, weights=readings) / np.bincount(inverse)
    return levels, means, inverse


def lack_of_fit(reference: np.ndarray, readings: np.ndarray, degree: int) -> dict:
    """Lack-of-fit F test of a polynomial of ``degree`` for reading against reference.

    Returns:
        {"available": bool, "F", "p", "dof_lack_of_fit", "dof_pure_error", "reason"}.
    """
    levels, means, inverse = level_means(reference, readings)
    n, count, parameters = len(reference), len(levels), degree + 1
    if count <= parameters or n <= count:
        why = "no replicates" if n <= count else f"{count} levels for {parameters} parameters"
        return {"available": False, "reason": f"needs replicates and more levels than parameters ({why})"}
    basis = np.vander(reference, parameters, increasing=True)  # (N, p)
    beta, *_ = np.linalg.lstsq(basis, readings, rcond=None)
    residual = readings - basis @ beta
    pure = float(((readings - means[inverse]) ** 2).sum())
    lack = float((residual ** 2).sum()) - pure
    dof_lack, dof_pure = count - parameters, n - count
    if pure <= 0:
        return {"available": False, "reason": "replicates read identically (no pure error)"}
    f_value = (max(lack, 0.0) / dof_lack) / (pure / dof_pure)
    p_value = float(_stats().f.sf(f_value, dof_lack, dof_pure))
    return {"available": True, "F": f_value, "p": p_value, "dof_lack_of_fit": dof_lack, "dof_pure_error": dof_pure}


def residual_analysis(reference: np.ndarray, readings: np.ndarray) -> dict:
    """Lack-of-fit of a line and a parabola, the sign runs of the line's residuals, and a verdict."""
    linear = lack_of_fit(reference, readings, 1)
    quadratic = lack_of_fit(reference, readings, 2)
    levels, means, _ = level_means(reference, readings)
    runs = None
    if len(levels) >= 3:
        slope, intercept = np.polyfit(levels, means, 1)
        signs = np.sign(means - (intercept + slope * levels))
        signs = signs[signs != 0]
        runs = int(1 + np.count_nonzero(signs[1:] != signs[:-1])) if len(signs) else 0
    curved = linear.get("available") and linear["p"] < ALPHA
    return {"linear": linear, "quadratic": quadratic, "level_mean_sign_runs": runs, "levels": int(len(levels)),
            "verdict": ("the straight line does not fit the replicate means (lack of fit p = "
                        f"{linear['p']:.3g}): consider --fit quadratic or isotonic") if curved else
                       ("a straight line fits" if linear.get("available") else
                        "lack of fit not testable: " + linear["reason"])}


def choose_fit(reference: np.ndarray, readings: np.ndarray, analysis: dict) -> tuple[str, str]:
    """The ``auto`` choice and why (see the module docstring)."""
    levels = analysis["levels"]
    if levels < 2:
        return "offset", "one standard level: offset correction"
    linear = analysis["linear"]
    if not linear.get("available") or linear["p"] >= ALPHA:
        return "linear", analysis["verdict"]
    if levels < 4:
        return "linear", (f"the residuals curve (lack of fit p = {linear['p']:.3g}) but {levels} levels cannot check a "
                          "curve; kept the line: photograph standards at 4 or more levels to fit one")
    quadratic = analysis["quadratic"]
    if quadratic.get("available") and quadratic["p"] >= ALPHA and _monotone_quadratic(readings, reference):
        return "quadratic", f"line rejected (lack of fit p = {linear['p']:.3g}); parabola fits and is monotone"
    return "isotonic", f"line rejected (lack of fit p = {linear['p']:.3g}); parabola fails or is not monotone"


def _monotone_quadratic(readings: np.ndarray, reference: np.ndarray) -> bool:
    b2, b1, _ = np.polyfit(readings, reference, 2)
    lo, hi = float(readings.min()), float(readings.max())
    return bool(b2 == 0 or not lo < -b1 / (2 * b2) < hi)


def fit_target(readings: np.ndarray, reference: np.ndarray, fit: str = "linear",
               levels: Sequence[float] = LEVELS) -> dict:
    """Fit one target's curve and describe it for the card.

    Args:
        readings: (N,) the network's readings of the standards.
        reference: (N,) their reference values.
        fit: one of FIT_CHOICES.
        levels: interval levels whose t quantiles the runtime will need.

    Returns:
        The card entry (``edgereg.lab.calibration`` format) plus figures for people: ``r2``,
        ``slope_ci95`` / ``intercept_ci95`` (linear), ``residuals``, ``analysis``, ``choice``.

    Raises:
        EdgeregError: too few standards or levels for the fit.
    """
    readings = np.asarray(readings, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if fit not in FIT_CHOICES:
        raise EdgeregError(f"--fit must be one of {', '.join(FIT_CHOICES)}, got {fit!r}")
    analysis = residual_analysis(reference, readings)
    choice = f"asked for {fit}"
    if fit == "auto":
        fit, choice = choose_fit(reference, readings, analysis)
    n, count = len(readings), analysis["levels"]
    need = {"offset": (2, 1), "linear": (3, 2), "quadratic": (4, 3), "isotonic": (3, 2)}[fit]
    if n < need[0] or count < need[1]:
        raise EdgeregError(f"a {fit} calibration needs at least {need[0]} standards at {need[1]} levels, got {n} at "
                           f"{count}; photograph more standards (replicates count), or use --fit offset")
    stats = _stats()
    entry: dict = {"fit": fit, "n": n, "levels": count, "analysis": analysis, "choice": choice,
                   "reference_range": [float(reference.min()), float(reference.max())],
                   "reading_range": [float(readings.min()), float(readings.max())]}
    if fit == "isotonic":
        fitted, knots_x, knots_y = _isotonic(readings, reference)
        dof = max(n - len(knots_x), 1)
        entry.update({"coef": [0.0, 0.0, 0.0], "cov": None, "knots": [knots_x, knots_y], "n_eff": n / count})
    else:
        parameters = _PARAMETERS[fit]
        target = reference - readings if fit == "offset" else reference
        basis = np.vander(readings, parameters, increasing=True)  # (N, p): 1, x, x^2
        beta, *_ = np.linalg.lstsq(basis, target, rcond=None)
        dof = n - parameters
        fitted = basis @ beta + (readings if fit == "offset" else 0.0)
        sigma2 = float(((reference - fitted) ** 2).sum()) / dof
        cov = sigma2 * np.linalg.inv(basis.T @ basis)  # (p, p)
        coef = [float(beta[0]), 1.0] if fit == "offset" else [float(b) for b in beta]
        entry.update({"coef": coef, "cov": cov.tolist(), "knots": None, "n_eff": n / count})
        half = stats.t.ppf(0.975, dof) * np.sqrt(np.diag(cov))
        entry["coef_ci95"] = [[float(b - h), float(b + h)] for b, h in zip(beta, half)]
        if fit == "linear":
            entry["intercept_ci95"], entry["slope_ci95"] = entry["coef_ci95"]
    residual = reference - fitted
    entry["residual_sd"] = float(math.sqrt((residual ** 2).sum() / dof))
    entry["dof"] = int(dof)
    total = float(((reference - reference.mean()) ** 2).sum())
    entry["r2"] = 1.0 - float((residual ** 2).sum()) / total if total > 0 else None
    entry["residuals"] = residual.tolist()
    entry["t"] = {format_level(level): float(stats.t.ppf((1 + level) / 2, dof)) for level in levels}
    return entry


def _isotonic(readings: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, list[float], list[float]]:
    """Fitted values (N,) and strictly ascending knots of the isotonic curve."""
    optimize = require_extra("scipy.optimize", "lab")
    order = np.argsort(readings, kind="stable")
    fitted_sorted = optimize.isotonic_regression(reference[order]).x
    fitted = np.empty_like(fitted_sorted)
    fitted[order] = fitted_sorted
    xs, inverse = np.unique(readings[order], return_inverse=True)
    ys = np.bincount(inverse, weights=fitted_sorted) / np.bincount(inverse)
    if len(xs) < 2:
        raise EdgeregError("an isotonic calibration needs standards that read differently; use --fit offset")
    return fitted, xs.tolist(), np.maximum.accumulate(ys).tolist()


def card_entry(entry: dict) -> dict:
    """The part of a :func:`fit_target` result the runtime needs (and people read in ``edgereg info``)."""
    keep = ("fit", "coef", "cov", "knots", "residual_sd", "dof", "n_eff", "t", "reference_range", "reading_range",
            "n", "levels", "r2", "slope_ci95", "intercept_ci95", "coef_ci95", "choice", "analysis")
    return {key: entry[key] for key in keep if key in entry}


__all__ = ["FIT_CHOICES", "card_entry", "choose_fit", "fit_target", "lack_of_fit", "level_means",
           "residual_analysis"]
