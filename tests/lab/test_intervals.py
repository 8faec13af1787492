"""Conformal intervals: the quantile rule, the export-side fit on synthetic residuals (coverage,
normalization, Mondrian bins), angles and distributions, and the card round trip."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgereg.core.card import ModelCard
from edgereg.errors import CardError, EdgeregError
from edgereg.export.uncertainty.conformal import (
    ConformalOptions,
    HeldOutReadings,
    compute_interval_set,
    fit_difficulty,
    intervals_section,
)
from edgereg.lab.intervals import (
    LEVELS,
    Difficulty,
    IntervalKernel,
    conformal_quantile,
    covered,
    interval_bounds,
    parse_intervals,
)


def test_conformal_quantile_is_the_ceil_n_plus_1_rank():
    scores = np.arange(9, 0, -1, dtype=float)  # 9..1, order must not matter
    assert conformal_quantile(scores, 0.9) == 9.0  # ceil(10 * 0.9) = 9th smallest
    assert conformal_quantile(scores, 0.8) == 8.0
    assert conformal_quantile(scores, 0.5) == 5.0
    assert conformal_quantile(scores[:8], 0.9) == math.inf  # ceil(9 * 0.9) = 9 > 8: too few for 90%


def heteroscedastic(rng, n, *, noise=0.04):
    """Readings of a task whose error grows with the value: truth in 5..350, SD = noise * truth."""
    truth = rng.uniform(5, 350, n)
    values = truth + rng.normal(0.0, noise * truth)
    return HeldOutReadings(values=values[:, None], spread=None, truth=truth[:, None], scale=None, split="test")


def test_normalized_intervals_cover_and_are_narrower_where_noise_grows_with_the_value():
    rng = np.random.default_rng(0)
    fit, cal, new = heteroscedastic(rng, 600), heteroscedastic(rng, 1000), heteroscedastic(rng, 20000)
    normalized, report = compute_interval_set("scalar", ("c",), fit, cal, tta="none", model="fp32",
                                              options=ConformalOptions(bins=1))
    constant, _ = compute_interval_set("scalar", ("c",), fit, cal, tta="none", model="fp32",
                                       options=ConformalOptions(method="constant"))
    assert report["c"]["difficulty"] in ("value", "value2")
    for level in (0.8, 0.9, 0.95):
        bounds = interval_bounds(normalized, "scalar", new.values, None, None, level, wide_factor=2.0)
        coverage = covered("scalar", new.truth, bounds.lo, bounds.hi).mean()
        # split-conformal: level <= E[coverage] < level + 1/(n+1); 3 SD of a 1000-image calibration set
        assert abs(coverage - level) < 3 * math.sqrt(level * (1 - level) / 1000) + 1 / 1001
    width_normalized = interval_bounds(normalized, "scalar", new.values, None, None, 0.9, wide_factor=2).width
    width_constant = interval_bounds(constant, "scalar", new.values, None, None, 0.9, wide_factor=2).width
    assert width_normalized.mean() < 0.9 * width_constant.mean()
    low = new.truth[:, 0] < 100  # constant width over-covers the quiet low end and under-covers the top
    high = new.truth[:, 0] > 280
    bounds = interval_bounds(normalized, "scalar", new.values, None, None, 0.9, wide_factor=2.0)
    inside = covered("scalar", new.truth, bounds.lo, bounds.hi)[:, 0]
    assert inside[low].mean() > 0.85 and inside[high].mean() > 0.85


def test_constant_noise_keeps_the_constant_difficulty():
    rng = np.random.default_rng(1)
    truth = rng.uniform(0, 10, 400)
    difficulty, relative = fit_difficulty("scalar", truth + rng.normal(0, 0.5, 400), None,
                                          np.abs(rng.normal(0, 0.5, 400)))
    assert difficulty.name == "constant" and relative["constant"] == 1.0


def test_mondrian_bins_each_get_their_own_quantile():
    rng = np.random.default_rng(2)
    fit, cal = heteroscedastic(rng, 300), heteroscedastic(rng, 1200)
    entry, report = compute_interval_set("scalar", ("c",), fit, cal, tta="none", model="fp32",
                                         options=ConformalOptions(bins=3))
    target = entry.targets[0]
    assert len(target.edges) == 2 and report["c"]["bins"] == 3
    assert all(len(row) == 3 for row in target.quantiles.values())
    assert len(set(target.quantiles[0.9])) == 3 and len(set(target.quantiles[0.99])) == 3  # 400 per bin
    small, _ = compute_interval_set("scalar", ("c",), fit, heteroscedastic(rng, 400), tta="none", model="fp32")
    quantiles = small.targets[0].quantiles  # 5 bins of ~80: enough for 90 % (19 each), not 99 % (199 each)
    assert len(small.targets[0].edges) == 5 - 1 and len(set(quantiles[0.9])) == 5 and len(set(quantiles[0.99])) == 1
    new = heteroscedastic(rng, 20000)
    bounds = interval_bounds(entry, "scalar", new.values, None, None, 0.9, wide_factor=2.0)
    inside = covered("scalar", new.truth, bounds.lo, bounds.hi)[:, 0]
    which = np.searchsorted(np.asarray(target.edges), new.values[:, 0], side="right")
    for k in range(3):
        assert inside[which == k].mean() > 0.86  # 400 calibration images per bin


def test_a_biased_model_gets_an_interval_shifted_towards_the_truth():
    """Readings 3 units high with little noise: two one-sided quantiles give a narrow interval
    below the reading, around the truth, where one quantile of |residual| would need +-3.8."""
    rng = np.random.default_rng(6)

    def biased(n):
        truth = rng.uniform(0, 100, n)
        return HeldOutReadings(values=(truth + 3.0 + rng.normal(0, 0.5, n))[:, None], spread=None,
                               truth=truth[:, None], scale=None, split="test")

    entry, _ = compute_interval_set("scalar", ("c",), None, biased(1000), tta="none", model="fp32",
                                    options=ConformalOptions(bins=1))
    (below, above), = entry.targets[0].quantiles[0.9]
    assert below == pytest.approx(3.0 + 1.645 * 0.5, abs=0.15)
    assert above == pytest.approx(-3.0 + 1.645 * 0.5, abs=0.15)  # negative: the interval lies below the reading
    new = biased(20000)
    bounds = interval_bounds(entry, "scalar", new.values, None, None, 0.9, wide_factor=2.0)
    assert covered("scalar", new.truth, bounds.lo, bounds.hi).mean() == pytest.approx(0.90, abs=0.02)
    assert bounds.width.mean() == pytest.approx(2 * 1.645 * 0.5, abs=0.3)


def test_angles_wrap_through_zero_and_the_whole_circle():
    entry, _ = compute_interval_set("angle", ("angle",), None, HeldOutReadings(
        values=np.zeros((50, 1)), spread=None, truth=np.linspace(-10, 10, 50)[:, None] % 360, scale=None,
        split="test"), tta="none", model="fp32")
    bounds = interval_bounds(entry, "angle", np.array([[355.0], [90.0]]), None, None, 0.9, wide_factor=2.0)
    assert bounds.lo[0, 0] > bounds.hi[0, 0]  # 355 +- ~9.6 passes through 0
    assert covered("angle", np.array([[2.0], [95.0]]), bounds.lo, bounds.hi).tolist() == [[True], [True]]
    assert covered("angle", np.array([[180.0], [180.0]]), bounds.lo, bounds.hi).tolist() == [[False], [False]]
    kernel = IntervalKernel(entry, "angle", 0.9, wide_factor=2.0)
    below, above = entry.targets[0].quantiles[0.9][0]
    bounds = kernel.bounds(np.array([[10.0]]), None)
    assert (bounds.lo[0, 0], bounds.hi[0, 0]) == (pytest.approx(10.0 - below), pytest.approx(10.0 + above))
    whole = interval_bounds(entry, "angle", np.array([[10.0]]), None, np.array([[100.0]]), 0.9, wide_factor=2.0)
    assert (whole.lo[0, 0], whole.hi[0, 0]) == (0.0, 360.0)


def test_distribution_bounds_stay_probabilities():
    entry, _ = compute_interval_set("distribution", ("a", "b"), None, HeldOutReadings(
        values=np.full((40, 2), 0.5), spread=None, truth=np.tile([[0.2, 0.8]], (40, 1)), scale=None, split="test"),
        tta="none", model="fp32")
    bounds = interval_bounds(entry, "distribution", np.array([[0.05, 0.95]]), None, None, 0.95, wide_factor=2.0)
    assert bounds.lo.min() >= 0.0 and bounds.hi.max() <= 1.0


def _card(intervals: dict) -> ModelCard:
    return ModelCard(kind="scalar", targets=("c",), input_size=(16, 16), intervals=intervals)


def test_card_round_trip_and_unknown_levels():
    rng = np.random.default_rng(3)
    entry, _ = compute_interval_set("scalar", ("c",), heteroscedastic(rng, 100), heteroscedastic(rng, 60),
                                    tta="none", model="int8")
    section = intervals_section([entry], ("c",), options=ConformalOptions(), note="test")
    card = ModelCard.from_json(_card(section).to_json())
    spec = parse_intervals(card.intervals, card.targets)
    assert spec.levels == LEVELS and spec.sets[0].model == "int8" and spec.sets[0].n_calibration == 60
    assert all(map(math.isinf, spec.sets[0].targets[0].quantiles[0.99][0]))  # 60 images cannot give 99 %
    assert spec.level(0.95) == 0.95
    with pytest.raises(EdgeregError, match="not one of the levels"):
        spec.level(0.97)


@pytest.mark.parametrize("mutate, message", [
    (lambda s: s["sets"][0]["targets"].pop("c"), "no quantiles for target 'c'"),
    (lambda s: s["sets"][0]["targets"]["c"]["difficulty"].update(name="magic"), "unknown difficulty"),
    (lambda s: s["sets"][0]["targets"]["c"]["quantiles"].update({"0.9": [1.0, 2.0]}), "needs 1 quantile pairs"),
    (lambda s: s["sets"][0]["targets"]["c"]["quantiles"].update({"0.9": [[1.0, -2.0]]}), "q_lo \\+ q_hi >= 0"),
    (lambda s: s.update(levels=[1.5]), "malformed|levels must be in"),
])
def test_malformed_interval_sections_are_card_errors(mutate, message):
    entry, _ = compute_interval_set("scalar", ("c",), None, heteroscedastic(np.random.default_rng(4), 50),
                                    tta="none", model="fp32")
    section = intervals_section([entry], ("c",), options=ConformalOptions(), note="")
    mutate(section)
    with pytest.raises(CardError, match=message):
        _card(section)


def test_difficulty_never_extrapolates_or_reaches_zero():
    difficulty = Difficulty("value", (-1.0, 1.0, 0.0, 0.0), (2.0, 5.0), 0.5)
    assert difficulty.sigma(np.array([0.0, 3.0, 100.0, np.nan]), None).tolist() == [1.0, 2.0, 4.0, 0.5]


def test_tta_spread_becomes_the_difficulty_when_it_predicts_the_error():
    rng = np.random.default_rng(5)

    def readings(n):
        truth = rng.uniform(80, 350, n)
        spread = rng.uniform(0.2, 5.0, n)  # some photos are hard, whatever their value
        values = truth + rng.normal(0.0, spread)
        return HeldOutReadings(values=values[:, None], spread=spread[:, None], truth=truth[:, None], scale=None,
                               split="test")

    entry, report = compute_interval_set("scalar", ("c",), readings(600), readings(1000), tta="d4", model="fp32",
                                         options=ConformalOptions(bins=1))
    assert report["c"]["difficulty"] in ("spread", "value+spread")
    new = readings(20000)
    kernel = IntervalKernel(entry, "scalar", 0.9, wide_factor=2.0)
    bounds = kernel.bounds(new.values, new.spread)
    inside = covered("scalar", new.truth, bounds.lo, bounds.hi)[:, 0]
    hard = new.spread[:, 0] > 4.0
    assert inside.mean() == pytest.approx(0.9, abs=0.03) and inside[hard].mean() > 0.85
    assert bounds.wide[hard].mean() > bounds.wide[~hard].mean()  # interval_wide marks the hard photos
