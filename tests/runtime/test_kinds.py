"""The target-kind objects (edgereg.core.kinds), through their public methods, on values worked by hand."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from edgereg.core.card import KINDS, ModelCard
from edgereg.core.kinds import ANGLE, COORDS, DISTRIBUTION, KIND_BY_NAME, SCALAR, VECTOR, target_kind
from edgereg.core.tta import parse_tta
from edgereg.errors import CardError, EdgeregError


def test_every_card_kind_has_one_frozen_object_named_like_it():
    assert KINDS == ("scalar", "vector", "distribution", "coords", "angle", "count")
    assert [KIND_BY_NAME[name].name for name in KINDS] == list(KINDS)
    assert target_kind("angle") is ANGLE and target_kind(ANGLE) is ANGLE
    assert ModelCard(kind="coords", targets=("x", "y"), input_size=(8, 8)).target_kind is COORDS
    with pytest.raises(dataclasses.FrozenInstanceError):
        ANGLE.stable_tolerance = 5.0
    with pytest.raises(CardError, match=r"^unknown target kind 'vectr' \(did you mean 'vector'\?\)"):
        target_kind("vectr")


@pytest.mark.parametrize("kind, targets, problem", [
    ("coords", ("x", "y", "x2"), "x,y pairs for kind 'coords'"),
    ("angle", ("a", "b"), "one name for kind 'angle'"),
    ("distribution", ("only",), "at least 2 bins for kind 'distribution'"),
])
def test_target_name_rules_per_kind_and_the_card_message(kind, targets, problem):
    assert target_kind(kind).targets_problem(targets) == problem
    assert SCALAR.targets_problem(targets) is None and VECTOR.targets_problem(targets) is None
    with pytest.raises(CardError) as info:
        ModelCard(kind=kind, targets=targets, input_size=(8, 8))
    assert str(info.value) == f"field 'targets' must be {problem}, got {targets!r}"


def test_angle_reduction_of_350_and_10_is_0_with_the_circular_spread():
    # rot:2: the second view is rotated by 180 degrees, so a reading of 190 there means 10
    values, spread = ANGLE.reduce_views(np.array([[[350.0], [190.0]]]), parse_tta("rot:2"))
    assert min(values[0, 0], 360.0 - values[0, 0]) < 1e-9
    # circular std sqrt(-2 ln R) with R = cos 10 degrees: 10.03 degrees (an arithmetic std says 170)
    assert spread[0, 0] == pytest.approx(np.rad2deg(np.sqrt(-2.0 * np.log(np.cos(np.deg2rad(10.0))))), rel=1e-12)


def test_distribution_reduction_is_the_renormalized_mean_of_the_views():
    views = np.array([[[0.2, 0.3, 0.3], [0.4, 0.3, 0.1]]])  # (1, 2, 3): each view sums to 0.8
    values, spread = DISTRIBUTION.reduce_views(views, parse_tta("rot:2"))
    np.testing.assert_allclose(values, [[0.375, 0.375, 0.25]])  # mean (0.3, 0.3, 0.2) / 0.8
    np.testing.assert_allclose(spread, [[0.1, 0.0, 0.1]], atol=1e-15)


def test_scalar_reduction_is_mean_and_std_and_checks_the_view_count():
    values, spread = SCALAR.reduce_views(np.array([[[1.0], [3.0]]]), parse_tta("rot:2"))
    assert values.tolist() == [[2.0]] and spread.tolist() == [[1.0]]
    with pytest.raises(EdgeregError, match="expected 8 views per image for TTA d4, got 2"):
        SCALAR.reduce_views(np.zeros((1, 2, 1)), parse_tta("d4"))


def test_coords_reduction_undoes_a_half_turn_about_the_centre():
    # the rot:2 second view sees the point (0.2, 0.3) at (0.8, 0.7); with (0.82, 0.7) the views
    # disagree by 0.02 in u after undoing the turn: (0.2, 0.3) and (0.18, 0.3)
    values, spread = COORDS.reduce_views(np.array([[[0.2, 0.3], [0.82, 0.7]]]), parse_tta("rot:2"))
    np.testing.assert_allclose(values, [[0.19, 0.3]], atol=1e-12)
    np.testing.assert_allclose(spread, [[0.01, 0.0]], atol=1e-12)


def test_residuals_agreement_scale_and_spans():
    assert ANGLE.residual(np.array([5.0]), np.array([355.0])).tolist() == [10.0]  # the short way
    assert SCALAR.residual(np.array([5.0]), np.array([355.0])).tolist() == [-350.0]
    expected = np.array([[2.0, -4.0], [1.0, 0.5]])
    assert SCALAR.agreement_scale(expected).tolist() == [2.0, 4.0]
    assert ANGLE.agreement_scale(np.array([[1.0]])).tolist() == [360.0]
    from edgereg.preprocess import CropBox

    assert COORDS.spans(4, None, [CropBox(3.0, 4.0, 100.0, 50.0)]).tolist() == [[100.0, 50.0, 100.0, 50.0]]
    assert DISTRIBUTION.spans(3, None, [None]).tolist() == [[1.0, 1.0, 1.0]]  # boxes: only coords read them
    assert ANGLE.spans(1, None, [None, None]).tolist() == [[360.0], [360.0]]
    assert VECTOR.spans(2, ((0, 10), (5, 25)), [None]).tolist() == [[10.0, 20.0]]
    assert np.isnan(SCALAR.spans(1, None, [None])).all()


def test_coords_are_mapped_to_source_pixels_through_each_crop():
    uv = np.array([[0.0, 0.0, 1.0, 1.0]])  # two points: the top-left and bottom-right corners
    boxes = np.array([[10.0, 20.0, 100.0, 50.0]])  # x0, y0, w, h
    assert COORDS.to_user_units(uv, boxes).tolist() == [[9.5, 19.5, 109.5, 69.5]]
    assert SCALAR.to_user_units(uv, None).tolist() == uv.tolist()  # other kinds are already the user's
    with pytest.raises(EdgeregError, match="coords need each image's crop box"):
        COORDS.to_user_units(uv, None)
    from edgereg.preprocess import CropBox

    values, spread, scale = COORDS.to_source(uv, np.full((1, 4), 0.01), [CropBox(10.0, 20.0, 100.0, 50.0)], (8, 8))
    assert values.tolist() == [[9.5, 19.5, 109.5, 69.5]]
    np.testing.assert_allclose(spread, [[1.0, 0.5, 1.0, 0.5]])  # a fraction of the crop, in pixels
    assert scale.tolist() == [[100.0, 50.0, 100.0, 50.0]]
    # no boxes: the model input itself (8 x 8 pixels)
    values, _, _ = COORDS.to_source(np.array([[0.5, 0.5]]), None, None, (8, 8))
    assert values.tolist() == [[3.5, 3.5]]
    assert SCALAR.to_source(uv, None, None, (8, 8))[2] is None


def test_interval_domains_and_coverage():
    lo, hi = np.array([[350.0, -20.0]]), np.array([[370.0, 400.0]])
    width = hi - lo
    wrapped_lo, wrapped_hi = ANGLE.interval_bounds(lo, hi, width)
    assert wrapped_lo.tolist() == [[350.0, 0.0]] and wrapped_hi.tolist() == [[10.0, 360.0]]  # 420 wide: whole
    assert ANGLE.interval_width(wrapped_lo, wrapped_hi).tolist() == [[20.0, 360.0]]
    assert ANGLE.covered(np.array([[5.0, 123.0]]), wrapped_lo, wrapped_hi).tolist() == [[True, True]]
    assert ANGLE.covered(np.array([[20.0, 123.0]]), wrapped_lo, wrapped_hi).tolist() == [[False, True]]
    p_lo, p_hi = DISTRIBUTION.interval_bounds(np.array([-0.1, 0.2]), np.array([0.5, 1.3]), None)
    assert p_lo.tolist() == [0.0, 0.2] and p_hi.tolist() == [0.5, 1.0]
    assert SCALAR.covered(np.array([1.0, 3.0]), np.array([0.0, 0.0]), np.array([2.0, 2.0])).tolist() == [True, False]


def test_smoothing_arithmetic_per_kind():
    angles = np.array([[350.0], [10.0], [20.0]])
    assert ANGLE.median(angles)[0] == pytest.approx(10.0)  # the arithmetic median of 10, 20, 350 is 20
    bins = np.array([[0.2, 0.8], [0.4, 0.4], [0.6, 0.2]])
    np.testing.assert_allclose(DISTRIBUTION.median(bins), [0.4 / 0.8, 0.4 / 0.8])
    assert SCALAR.median(np.array([[1.0], [5.0], [2.0]])).tolist() == [2.0]
    state = ANGLE.ema_state(np.array([90.0]))
    np.testing.assert_allclose(state, [[0.0, 1.0]], atol=1e-15)  # (T, 2) unit vectors
    assert ANGLE.ema_reading(np.array([[-1.0, -1e-300]])).tolist() == [180.0]
    assert ANGLE.ema_reading(np.array([[1.0, -1e-300]]))[0] < 360.0  # never 360


def test_capabilities_of_each_kind():
    assert [KIND_BY_NAME[k].stable_tolerance for k in KINDS] == [None, None, 0.01, 1.0, 1.0, None]
    assert [KIND_BY_NAME[k].calibrated for k in KINDS] == [True, True, False, False, False, True]
    assert [KIND_BY_NAME[k].range_flagged for k in KINDS] == [True, True, False, False, False, True]
    assert [KIND_BY_NAME[k].lab_code for k in KINDS] == [0, 0, 2, 0, 1, 0]
    assert [KIND_BY_NAME[k].value_difficulty for k in KINDS] == [True, True, True, False, False, True]
    assert [k for k in KINDS if KIND_BY_NAME[k].xy_points] == ["coords"]
    assert [k for k in KINDS if KIND_BY_NAME[k].circular] == ["angle"]


def test_angle_intervals_wrap_through_zero_on_values_worked_by_hand():
    # bounds: mapped into [0, 360); a width of a whole turn or more is the whole circle (0, 360)
    lo, hi = ANGLE.interval_bounds(np.array([[-10.0, 100.0, 5.0]]), np.array([[10.0, 470.0, 5.0 + 360.0]]),
                                   np.array([[20.0, 370.0, 360.0]]))
    np.testing.assert_array_equal(lo, [[350.0, 0.0, 0.0]])
    np.testing.assert_array_equal(hi, [[10.0, 360.0, 360.0]])
    np.testing.assert_array_equal(ANGLE.interval_width(np.array([350.0, 10.0]), np.array([10.0, 30.0])), [20.0, 20.0])
    # coverage: a plain interval, one through 0 (lo > hi), the whole circle; edges count as inside
    lo, hi = np.array([[10.0, 350.0, 0.0]]), np.array([[30.0, 10.0, 360.0]])
    cases = {
        10.0: [True, True, True], 30.0: [True, False, True], 20.0: [True, False, True],
        9.9: [False, True, True], 30.1: [False, False, True], 350.0: [False, True, True],
        -5.0: [False, True, True], 365.0: [False, True, True], 180.0: [False, False, True],
        349.9: [False, False, True], 10.1: [True, False, True],
    }
    for truth, expected in cases.items():
        assert ANGLE.covered(np.full((1, 3), truth), lo, hi).tolist() == [expected], truth
    # a (0, 360) pair that is not the whole circle in one target only
    assert ANGLE.covered(np.array([[180.0, 180.0]]), np.array([[0.0, 0.0]]), np.array([[360.0, 90.0]])).tolist() \
        == [[True, False]]


def test_plain_coverage_and_residuals_include_the_edges_and_keep_float64():
    lo, hi = np.array([[1.0, 1.0, 1.0, 1.0]]), np.array([[2.0, 2.0, 2.0, 2.0]])
    assert SCALAR.covered(np.array([[1.0, 2.0, 0.999, 2.001]]), lo, hi).tolist() == [[True, True, False, False]]
    residual = SCALAR.residual(np.float32([[1.1]]), np.float32([[0.3]]))
    assert residual.dtype == np.float64
    np.testing.assert_array_equal(residual, np.float64(np.float32(1.1)) - np.float64(np.float32(0.3)))
    np.testing.assert_array_equal(ANGLE.residual(np.array([[350.0]]), np.array([[10.0]])), [[-20.0]])
    assert ANGLE.targets_problem(("a",)) is None and "one name" in ANGLE.targets_problem(("a", "b"))


def test_angle_median_is_taken_around_the_circular_mean():
    history = np.array([[350.0], [10.0], [20.0], [355.0], [5.0]])  # around 0: -10, 10, 20, -5, 5 -> median 5
    np.testing.assert_allclose(ANGLE.median(history), [5.0], atol=1e-9)
    np.testing.assert_allclose(ANGLE.median(np.array([[340.0], [350.0], [345.0]])), [345.0], atol=1e-9)
    state = ANGLE.ema_state(np.array([90.0, 180.0]))
    np.testing.assert_allclose(state, [[0.0, 1.0], [-1.0, 0.0]], atol=1e-12)


def test_distribution_bins_and_intervals_stay_probabilities():
    assert DISTRIBUTION.targets_problem(("a", "b")) is None
    assert "at least 2 bins" in DISTRIBUTION.targets_problem(("a",))
    lo, hi = DISTRIBUTION.interval_bounds(np.array([[-0.1, 0.2, 1.2]]), np.array([[0.1, 1.3, 1.5]]),
                                          np.array([[0.2, 1.1, 0.3]]))
    np.testing.assert_array_equal(lo, [[0.0, 0.2, 1.0]])
    np.testing.assert_array_equal(hi, [[0.1, 1.0, 1.0]])


def test_an_unhashable_kind_is_a_card_error_not_a_type_error():
    with pytest.raises(CardError, match=r"unknown target kind \['scalar'\]"):
        target_kind(["scalar"])
