"""The frame quality gate on generated frames: each reason, and sharp varied frames passing."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edgereg.errors import ShapeError
from edgereg.live.quality import QualityConfig, QualityGate


def textured(rng, size=(240, 320)):
    """A sharp, mid-grey frame with edges (a grid of random blocks)."""
    blocks = rng.integers(40, 220, (size[0] // 16, size[1] // 16, 3), dtype=np.uint8)
    return cv2.resize(blocks, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)


def noisy(frame, rng, amplitude=4):
    noise = rng.integers(-amplitude, amplitude + 1, frame.shape)
    return np.clip(frame.astype(int) + noise, 0, 255).astype(np.uint8)


def test_sharp_varied_frames_pass(rng):
    gate = QualityGate()
    base = textured(rng)
    reports = [gate.check(noisy(base, rng)) for _ in range(6)]
    assert all(r.ok for r in reports), [r.reason for r in reports]
    assert reports[0].change is None and reports[1].change > 1.0


def test_black_frame(rng):
    report = QualityGate().check(noisy(np.zeros((120, 160, 3), np.uint8), rng, 3))
    assert report.reason == "black" and report.brightness < 16
    assert "brightness" in report.describe(QualityConfig())


def test_overexposed_frame(rng):
    frame = textured(rng)
    frame[:, : frame.shape[1] * 2 // 3] = 255  # two thirds clipped
    report = QualityGate().check(frame)
    assert report.reason == "overexposed" and report.clipped > 0.6
    frame[:, : frame.shape[1] // 3] = textured(rng)[:, : frame.shape[1] // 3]  # one third clipped
    assert QualityGate().check(frame).ok


def test_frozen_after_n_identical_frames(rng):
    gate = QualityGate(QualityConfig(frozen_frames=3))
    frame = textured(rng)
    reasons = [gate.check(frame.copy()).reason for _ in range(5)]
    assert reasons == [None, None, None, "frozen", "frozen"]
    assert gate.check(noisy(frame, rng)).ok  # a live frame again
    gate.reset()
    assert gate.check(frame).ok


def test_blurred_frame_and_disabling_the_check(rng):
    frame = textured(rng)
    blurred = cv2.GaussianBlur(frame, (0, 0), 12)
    gate = QualityGate()
    sharp_report = gate.check(frame)
    blur_report = QualityGate().check(blurred)
    assert sharp_report.ok and blur_report.reason == "blurred"
    assert blur_report.sharpness < 10 < sharp_report.sharpness
    assert QualityGate(QualityConfig(blur_threshold=0)).check(blurred).ok


def test_thresholds_do_not_depend_on_resolution(rng):
    small = textured(rng, (240, 320))
    large = cv2.resize(small, (1280, 960), interpolation=cv2.INTER_NEAREST)
    a, b = QualityGate().check(small), QualityGate().check(large)
    assert a.ok and b.ok
    assert b.sharpness == pytest.approx(a.sharpness, rel=0.05)


def test_gray_frames_are_accepted_and_bad_arrays_refused(rng):
    gray = cv2.cvtColor(textured(rng), cv2.COLOR_BGR2GRAY)
    assert QualityGate().check(gray).ok
    with pytest.raises(ShapeError, match="expected a frame"):
        QualityGate().check(np.zeros((10, 10, 4), np.uint8))
    with pytest.raises(ShapeError):
        QualityGate().check(np.zeros((10, 10, 3), np.float32))
