"""ICH Q2 / CLSI EP17 figures reproduced on published worked examples and hand-made data, and the
calibration fits with their residual analysis."""

from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("scipy")

from edgereg.errors import EdgeregError
from edgereg.lab.calibration import parse_calibration
from edgereg.lab.fit.calibration import card_entry, fit_target, lack_of_fit
from edgereg.lab.fit.validation import (
    ep17_cp,
    ich_limits,
    limit_of_blank,
    limit_of_detection,
    linearity,
    repeatability,
    validate,
    working_range,
)


def test_ich_worked_example_s_1250_sigma_0_0025():
    """ICH Q2: LOD = 3.3 sigma / S and LOQ = 10 sigma / S; with S = 1250 and sigma = 0.0025 the
    textbook answer is LOD 6.6e-6 and LOQ 2.0e-5."""
    limits = ich_limits(0.0025, 1250.0)
    assert limits["lod"] == pytest.approx(6.6e-6, rel=1e-12)
    assert limits["loq"] == pytest.approx(2.0e-5, rel=1e-12)


def test_linearity_reproduces_the_fluorescence_calibration_of_miller_and_miller():
    """Miller & Miller, Statistics and Chemometrics for Analytical Chemistry, worked example of a
    fluorescence calibration: x = 0..12 pg/ml, y = 2.1 .. 24.7. Published: b = 1.93, a = 1.52,
    r = 0.9989, s_y/x = 0.4329, s_b = 0.0409, s_a = 0.2950; 95% limits b 1.93 +- 0.11, a 1.52 +- 0.76."""
    fit = linearity([0, 2, 4, 6, 8, 10, 12], [2.1, 5.0, 9.0, 12.6, 17.3, 21.0, 24.7])
    published = {"slope": (1.93, 2), "intercept": (1.52, 2), "r": (0.9989, 4), "residual_sd": (0.4329, 4),
                 "slope_se": (0.0409, 4), "intercept_se": (0.2950, 4)}
    for name, (value, digits) in published.items():  # the book rounds some intermediate sums: one unit of slack
        assert fit[name] == pytest.approx(value, abs=10.0 ** -digits), name
    assert fit["slope_ci95"][1] - fit["slope"] == pytest.approx(0.11, abs=0.005)
    assert fit["intercept_ci95"][1] - fit["intercept"] == pytest.approx(0.76, abs=0.005)


def test_ep17_limit_of_blank_and_detection_on_hand_made_blanks():
    blanks = [0.0, 0.1, 0.2, 0.3, 0.4]  # mean 0.2, SD sqrt(0.025)
    lob = limit_of_blank(blanks)
    assert lob["mean"] == pytest.approx(0.2) and lob["sd"] == pytest.approx(math.sqrt(0.025))
    assert lob["lob"] == pytest.approx(0.2 + 1.645 * math.sqrt(0.025))
    low = [[1.0, 1.2, 1.4], [2.0, 2.4]]  # SS 0.08 (2 dof) + 0.08 (1 dof): pooled SD sqrt(0.16 / 3)
    lod = limit_of_detection(lob["lob"], low, lob_cp=lob["lob_cp"])
    assert lod["sd_low"] == pytest.approx(math.sqrt(0.16 / 3))
    assert lod["lod"] == pytest.approx(lob["lob"] + 1.645 * math.sqrt(0.16 / 3))
    assert lod["cp"] == pytest.approx(1.645 / (1 - 1 / (4 * (5 - 2))))  # 5 results of 2 samples
    assert lob["cp"] == pytest.approx(1.645 / (1 - 1 / 16))  # 5 results of 1 sample


def test_ep17_nonparametric_lob_is_the_rank_0_5_plus_0_95_b_value():
    blanks = np.arange(60, 0, -1, dtype=float)  # 1..60 in any order: rank 57.5 -> 57.5
    assert limit_of_blank(blanks)["lob_nonparametric"] == pytest.approx(57.5)
    assert ep17_cp(60, 1) == pytest.approx(1.645 / (1 - 1 / 236))


def test_repeatability_and_working_range_acceptance():
    reference = [10, 10, 10, 50, 50, 50, 100, 100, 100]
    readings = [8.0, 13.0, 9.0, 49.0, 51.0, 50.0, 101.0, 99.0, 100.0]  # CV at 10 is 26 %
    levels = repeatability(reference, readings)["levels"]
    assert levels[1]["sd"] == pytest.approx(1.0) and levels[1]["cv_percent"] == pytest.approx(2.0)
    assert levels[0]["recovery_percent"] == pytest.approx(100.0)
    span = working_range(levels, loq=5.0, max_cv=15, max_bias=15)
    assert span["range"] == [50.0, 100.0]
    assert working_range(levels, loq=60.0, max_cv=15, max_bias=15)["range"] == [100.0, 100.0]


def test_validate_puts_it_together_with_blanks():
    rng = np.random.default_rng(0)
    reference = np.repeat([0.0, 5.0, 20.0, 50.0, 100.0], 6)
    readings = reference + rng.normal(0, 0.5 + 0.01 * reference)
    figures = validate(reference, readings, sigma="blank")
    blank_sd = readings[reference == 0].std(ddof=1)
    assert figures["limits"]["lob"] == pytest.approx(readings[reference == 0].mean() + 1.645 * blank_sd)
    assert figures["limits"]["lod_method"].startswith("EP17") and figures["ep17_lod"]["levels"] == [5.0]
    assert figures["ich"]["lod"] == pytest.approx(3.3 * blank_sd / abs(figures["linearity"]["slope"]))
    assert figures["limits"]["range"][1] == 100.0
    with pytest.raises(EdgeregError, match="blank"):
        validate(reference[6:], readings[6:], sigma="blank")


def test_linear_calibration_recovers_the_line_and_its_confidence_intervals():
    from scipy import stats

    rng = np.random.default_rng(1)
    reference = np.repeat([100.0, 200.0, 300.0], 3)
    readings = (reference - 12.0) / 1.1 + rng.normal(0, 1.0, 9)  # reference = 12 + 1.1 reading
    entry = fit_target(readings, reference, "linear")
    check = stats.linregress(readings, reference)
    assert entry["coef"] == pytest.approx([check.intercept, check.slope])
    t = stats.t.ppf(0.975, 7)
    assert entry["slope_ci95"] == pytest.approx([check.slope - t * check.stderr, check.slope + t * check.stderr])
    curve = parse_calibration({"id": "x", "date": "d", "targets": {"c": card_entry(entry)}}, ("c",)).targets["c"]
    np.testing.assert_allclose(curve.apply(readings), check.intercept + check.slope * readings)
    se = curve.standard_error(np.array([readings.mean()]))[0]
    assert se == pytest.approx(entry["residual_sd"] / 3, rel=1e-9)  # s sqrt(1 / n) at the mean reading


def test_auto_fit_follows_the_residual_analysis():
    reference = np.repeat([50.0, 100.0, 150.0, 200.0, 250.0], 3)
    noise = np.tile([-0.3, 0.0, 0.3], 5)
    straight = fit_target(reference / 2 + noise, reference, "auto")
    assert straight["fit"] == "linear" and straight["analysis"]["linear"]["p"] > 0.05
    curved_readings = 20 * np.sqrt(reference) + noise  # a saturating response
    curved = fit_target(curved_readings, reference, "auto")
    assert curved["fit"] in ("quadratic", "isotonic") and curved["analysis"]["linear"]["p"] < 0.05
    assert lack_of_fit(reference, curved_readings, 2)["p"] > lack_of_fit(reference, curved_readings, 1)["p"]
    linear = fit_target(curved_readings, reference, "linear")
    assert "consider --fit quadratic" in linear["analysis"]["verdict"]
    three = reference < 200  # 3 levels: a curve cannot be checked, so the line stays
    kept = fit_target(curved_readings[three], reference[three], "auto")
    assert kept["fit"] == "linear" and "cannot check a curve" in kept["choice"]
    one_level = fit_target(np.array([9.0, 10.0, 11.0]), np.array([12.0, 12.0, 12.0]), "auto")
    assert one_level["fit"] == "offset" and one_level["coef"] == pytest.approx([2.0, 1.0])


def test_isotonic_calibration_is_monotone_and_too_few_standards_are_refused():
    reference = np.repeat([10.0, 20.0, 30.0, 40.0], 2)
    readings = np.array([1.0, 1.2, 2.5, 2.4, 2.45, 2.6, 4.0, 4.1])
    entry = fit_target(readings, reference, "isotonic")
    xs, ys = entry["knots"]
    assert xs == sorted(xs) and ys == sorted(ys)
    with pytest.raises(EdgeregError, match="at least 4 standards at 3 levels"):
        fit_target(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 2.0]), "quadratic")
