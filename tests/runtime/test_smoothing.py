"""Live smoothing, checked against values computed by hand (not only invariants such as sum == 1)."""

from __future__ import annotations

import numpy as np
import pytest

from edgereg.smoothing import EmaSmoother, MedianSmoother


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
