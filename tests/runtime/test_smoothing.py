"""Live smoothing, checked against values computed by hand (not only invariants such as sum == 1)."""

from __future__ import annotations

import numpy as np
import pytest

from edgereg.live.smoothing import EmaSmoother, MedianSmoother


def test_distribution_median_is_the_per_bin_median_renormalized():
    median = MedianSmoother(3, kind="distribution")
    rows = ([0.5, 0.5, 0.0], [0.2, 0.3, 0.5], [0.6, 0.1, 0.3])
    outputs = [median.update(np.array(row)) for row in rows]
    np.testing.assert_allclose(outputs[0], rows[0], atol=1e-12)  # one reading: itself
    np.testing.assert_allclose(outputs[1], [0.35, 0.4, 0.25], atol=1e-12)  # two: the mean, sums to 1
    # three: per-bin medians 0.5, 0.3, 0.3 sum to 1.1 and are scaled back to 1
    np.testing.assert_allclose(outputs[2], np.array([0.5, 0.3, 0.3]) / 1.1, atol=1e-12)
    # a fourth reading pushes the first out of the window
    out = median.update(np.array([0.1, 0.1, 0.8]))
    np.testing.assert_allclose(out, np.array([0.2, 0.1, 0.5]) / 0.8, atol=1e-12)


def test_scalar_median_is_not_renormalized_and_forgets_after_reset():
    median = MedianSmoother(4)
    for value in ([1.0, 10.0], [5.0, 30.0], [2.0, 20.0]):
        out = median.update(np.array(value))
    np.testing.assert_allclose(out, [2.0, 20.0])
    out = median.update(np.array([4.0, 40.0]))  # even count: the mean of the middle two
    np.testing.assert_allclose(out, [3.0, 25.0])
    median.reset()
    np.testing.assert_allclose(median.update(np.array([7.0, 0.5])), [7.0, 0.5])


def test_angle_median_across_zero_and_ema_with_its_alpha():
    median = MedianSmoother(5, kind="angle")
    for angle in (350.0, 355.0, 20.0, 5.0, 0.0):
        out = median.update(np.array([angle]))
    # around the circle the readings are 350, 355, 0, 5, 20: the middle one is 0
    assert 0.0 <= out[0] < 360.0 and min(out[0], 360.0 - out[0]) < 1e-9
    ema = EmaSmoother(4, kind="distribution")  # alpha = 2 / 5
    ema.update(np.array([1.0, 0.0]))
    np.testing.assert_allclose(ema.update(np.array([0.0, 1.0])), [0.6, 0.4], atol=1e-12)
    np.testing.assert_allclose(ema.update(np.array([0.0, 1.0])), [0.36, 0.64], atol=1e-12)


def test_degrees_wrap_to_a_half_open_turn():
    from edgereg.core.angles import to_full_turn, wrap_degrees

    angles = [0, 180, -180, 190, 200, 540, -190, 359.5, 720]
    assert wrap_degrees(angles).tolist() == [0.0, -180.0, -180.0, -170.0, -160.0, -180.0, 170.0, -0.5, 0.0]
    assert to_full_turn(angles).tolist() == [0.0, 180.0, 180.0, 190.0, 200.0, 180.0, 170.0, 359.5, 0.0]
    assert to_full_turn([370, -10, -1e-17]).tolist() == [10.0, 350.0, 0.0]


def test_window_of_one_is_allowed_and_less_is_an_error():
    from edgereg.errors import EdgeregError
    from edgereg.live.smoothing import StabilityTracker

    median, ema = MedianSmoother(1), EmaSmoother(1)
    assert median.kind.name == "scalar" and ema.kind.name == "scalar" and ema.alpha == 1.0
    for value in (3.0, 8.0, 5.0):
        assert median.update(np.array([value]))[0] == value and ema.update(np.array([value]))[0] == value
    for cls in (MedianSmoother, EmaSmoother):
        with pytest.raises(EdgeregError) as info:
            cls(0)
        assert str(info.value) == "--smooth must be >= 1 frames, got 0; e.g. --smooth 5"
    assert StabilityTracker(1, np.array([1.0])).update(np.array([4.0]))
    with pytest.raises(EdgeregError) as info:
        StabilityTracker(0, np.array([1.0]))
    assert str(info.value) == "the stability window must be >= 1 frames, got 0"


def circular_distance(a, b) -> np.ndarray:
    return np.abs((np.asarray(a, dtype=np.float64) - b + 180.0) % 360.0 - 180.0)


def test_two_angle_targets_are_smoothed_independently():
    from edgereg.core.angles import circular_mean

    readings = np.array([[350.0, 90.0], [10.0, 100.0], [0.0, 110.0]])  # (n, T)
    assert circular_distance(circular_mean(readings), [0.0, 100.0]).max() < 1e-9
    median = MedianSmoother(3, kind="angle")
    for row in readings:
        out = median.update(row)
    assert out.shape == (2,) and circular_distance(out, [0.0, 100.0]).max() < 1e-9
    ema = EmaSmoother(3, kind="angle")  # alpha 0.5
    ema.update(np.array([350.0, 90.0]))
    assert circular_distance(ema.update(np.array([10.0, 110.0])), [0.0, 100.0]).max() < 1e-9


def test_make_smoother_passes_the_window_and_the_kind():
    from edgereg.errors import EdgeregError
    from edgereg.live.smoothing import make_smoother

    ema = make_smoother("ema", 3, kind="angle")
    assert isinstance(ema, EmaSmoother) and ema.kind.name == "angle" and ema.alpha == 0.5
    median = make_smoother("median", 4, kind="distribution")
    assert isinstance(median, MedianSmoother) and median.kind.name == "distribution" and median.window == 4
    assert make_smoother("median", 2).kind.name == "scalar" and make_smoother("ema", 2).kind.name == "scalar"
    with pytest.raises(EdgeregError) as info:
        make_smoother("mean", 3)
    assert str(info.value) == "unknown smoothing 'mean': expected 'median' or 'ema'"


def test_stability_tolerances_by_card_and_override():
    from edgereg.core.card import ModelCard
    from edgereg.errors import EdgeregError
    from edgereg.live.smoothing import stability_tolerance

    coords = ModelCard(kind="coords", targets=("x0", "y0", "x1", "y1"), input_size=(8, 8))
    assert stability_tolerance(coords).tolist() == [1.0, 1.0, 1.0, 1.0]
    dist = ModelCard(kind="distribution", targets=("a", "b", "c"), input_size=(8, 8))
    assert stability_tolerance(dist).tolist() == [0.01, 0.01, 0.01]
    ranged = ModelCard(kind="vector", targets=("a", "b"), input_size=(8, 8), range=((0, 50), (10, 410)))
    tolerance = stability_tolerance(ranged)
    assert tolerance.dtype == np.float64 and tolerance.tolist() == [0.5, 4.0]
    assert stability_tolerance(ranged, 2.5).tolist() == [2.5, 2.5]
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(EdgeregError) as info:
            stability_tolerance(ranged, bad)
        assert str(info.value) == f"--stable-tol must be > 0 (in the targets' units), got {bad}"


def test_stability_edges():
    from edgereg.live.smoothing import StabilityTracker

    exact = StabilityTracker(2, np.array([0.5]))
    exact.update(np.array([1.0]))
    assert exact.update(np.array([1.5]))  # a spread equal to the tolerance is stable
    # relative tolerance (NaN): 1% of the latest reading, not of an older one
    relative = StabilityTracker(3, np.array([np.nan]))
    for value in (99.497, 100.0):
        relative.update(np.array([value]))
    assert relative.update(np.array([100.5]))  # spread 1.003 <= 1.005
    near_zero = StabilityTracker(2, np.array([np.nan]))
    near_zero.update(np.array([0.0]))
    assert not near_zero.update(np.array([0.005]))  # 1% of ~0 is ~0, not 1% of 1
    # on the circle the spread is measured from the latest reading: 88..92 degrees stay 4 apart
    circular = StabilityTracker(3, np.array([5.0]), circular=True)
    for value in (88.0, 92.0):
        circular.update(np.array([value]))
    assert circular.update(np.array([90.0]))
    across_zero = StabilityTracker(2, np.array([5.0]), circular=True)
    across_zero.update(np.array([358.0]))
    assert across_zero.update(np.array([1.0]))


def test_float32_readings_are_wrapped_and_smoothed_in_float64():
    """A float32 model output must not drag the angle arithmetic and the smoothers down to float32:
    190.1 degrees in float32 is 190.1000061..., and float32 arithmetic would round it again."""
    from edgereg.core.angles import to_full_turn, wrap_degrees

    reading = np.float32([190.1, -0.1])
    exact = reading.astype(np.float64)
    wrapped = wrap_degrees(reading)
    assert wrapped.dtype == np.float64
    np.testing.assert_array_equal(wrapped, (exact + 180.0) % 360.0 - 180.0)
    turned = to_full_turn(reading)
    assert turned.dtype == np.float64
    np.testing.assert_array_equal(turned, np.mod(exact, 360.0))
    for smoother in (MedianSmoother(3), EmaSmoother(3)):
        smoother.update(np.float32([1.1]))
        out = smoother.update(np.float32([2.3]))
        assert out.dtype == np.float64
    median = MedianSmoother(3)
    median.update(np.float32([1.1]))
    np.testing.assert_array_equal(median.update(np.float32([2.3])),
                                  [(np.float64(np.float32(1.1)) + np.float64(np.float32(2.3))) / 2])


def test_angle_stability_is_judged_around_the_newest_reading():
    """350, 10 and then 179 degrees are not stable: around 179 the three span 340 degrees (the old
    pair sits on the far side of the circle). Measured around 10 they would seem to span 189."""
    from edgereg.live.smoothing import StabilityTracker

    tracker = StabilityTracker(3, np.array([200.0]), circular=True)
    assert [tracker.update(np.array([a])) for a in (350.0, 10.0, 179.0)] == [False, False, False]
    steady = StabilityTracker(3, np.array([25.0]), circular=True)
    assert [steady.update(np.array([a])) for a in (350.0, 10.0, 359.0)] == [False, False, True]


def test_stability_spread_of_float32_readings_is_taken_in_float64():
    """1.0 - 1e-8 is 0.99999999 in float64 but rounds to 1.0 in float32: a tolerance between the two
    must call the pair stable."""
    from edgereg.live.smoothing import StabilityTracker

    tracker = StabilityTracker(2, np.array([0.999999995]))
    assert [tracker.update(np.float32([1e-8])), tracker.update(np.float32([1.0]))] == [False, True]
