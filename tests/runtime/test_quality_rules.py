"""The quality gate at the edge of each threshold, its analysis image, and its exact messages."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edgereg.errors import ShapeError
from edgereg.live.quality import QualityConfig, QualityGate, QualityReport

NO_BLUR = dict(blur_threshold=0.0)  # flat test frames have no texture; judge the other checks alone


def flat(level: int, shape=(10, 10)) -> np.ndarray:
    return np.full(shape, level, dtype=np.uint8)


def test_thresholds_are_inclusive_where_the_docs_say_below_or_more_than():
    gate = QualityGate(QualityConfig(**NO_BLUR))
    assert gate.check(flat(16)).reason is None  # mean 16 is not below black_level 16
    assert QualityGate(QualityConfig(**NO_BLUR)).check(flat(15)).reason == "black"
    half = flat(100)
    half[:5] = 250  # exactly half the pixels at the clipped level: not more than half
    report = QualityGate(QualityConfig(**NO_BLUR)).check(half)
    assert report.clipped == 0.5 and report.reason is None
    half[5, 0] = 250
    assert QualityGate(QualityConfig(**NO_BLUR)).check(half).reason == "overexposed"
    assert QualityGate(QualityConfig(**NO_BLUR)).check(flat(250)).clipped == 1.0  # 250 counts as clipped
    assert QualityGate(QualityConfig(**NO_BLUR)).check(flat(249)).clipped == 0.0


def test_a_change_of_exactly_frozen_max_diff_counts_as_identical():
    gate = QualityGate(QualityConfig(frozen_frames=1, **NO_BLUR))
    first = flat(100)
    second = first.copy()
    second[0] = 101  # 10 of 100 pixels differ by 1: mean |diff| = 0.1
    assert gate.check(first).reason is None
    report = gate.check(second)
    assert report.change == pytest.approx(0.1) and report.reason == "frozen"
    third = second.copy()
    third[1] = 102  # row 1 moves by 2 gray levels: mean |diff| 0.2, a live frame
    assert gate.check(third).reason is None


def test_sharpness_equal_to_the_threshold_is_sharp():
    frame = np.random.default_rng(0).integers(0, 200, (40, 40), dtype=np.uint8)
    sharpness = float(cv2.Laplacian(frame, cv2.CV_64F).var())
    report = QualityGate(QualityConfig(blur_threshold=sharpness)).check(frame)
    assert report.sharpness == sharpness and report.reason is None
    assert QualityGate(QualityConfig(blur_threshold=sharpness * 1.001)).check(frame).reason == "blurred"


def test_analysis_image_is_an_area_downscale_to_the_analysis_width():
    gate = QualityGate(QualityConfig(analysis_width=32))
    frame = np.random.default_rng(1).integers(0, 256, (48, 96, 3), dtype=np.uint8)
    gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    np.testing.assert_array_equal(gate.analysis_image(frame), cv2.resize(gray, (32, 16), interpolation=cv2.INTER_AREA))
    assert gate.analysis_image(gray[:, :32]).shape == (48, 32)  # not wider: unchanged
    np.testing.assert_array_equal(gate.analysis_image(gray[:, :20]), gray[:, :20])
    assert gate.analysis_image(flat(7, (2, 100))).shape == (1, 32)  # 2 * 32 / 100 rounds to 1 row
    assert gate.analysis_image(flat(7, (1, 20))).shape == (1, 20)  # one row is a frame too


def test_bad_frames_are_shape_errors_that_say_what_came():
    gate = QualityGate()
    for bad, got in [([[1]], "list"), (np.zeros((4, 4, 3), np.float32), "(4, 4, 3) float32"),
                     (np.zeros((4, 4, 4), np.uint8), "(4, 4, 4) uint8"), (np.zeros((0, 4), np.uint8), "(0, 4) uint8"),
                     (np.zeros((2, 2, 2, 3), np.uint8), "(2, 2, 2, 3) uint8")]:
        with pytest.raises(ShapeError) as info:
            gate.check(bad)
        assert str(info.value) == f"expected a frame (H, W, 3) uint8 BGR, got {got}"


def test_config_limits():
    QualityConfig(frozen_frames=1, analysis_width=8)
    with pytest.raises(ValueError) as info:
        QualityConfig(frozen_frames=0)
    assert str(info.value) == "frozen_frames must be >= 1, got 0"
    with pytest.raises(ValueError) as info:
        QualityConfig(analysis_width=7)
    assert str(info.value) == "analysis_width must be >= 8, got 7"


def test_reports_describe_themselves_and_round_their_numbers():
    config = QualityConfig()
    report = QualityReport(None, 123.456789, 0.123456789, 45.678901, None)
    assert report.ok and report.describe(config) == "ok"
    assert report.as_dict() == {"reason": None, "brightness": 123.4568, "clipped": 0.1235, "sharpness": 45.6789,
                                "change": None}
    lines = {reason: QualityReport(reason, 3.14159, 0.756, 2.345, 0.05).describe(config)
             for reason in ("black", "overexposed", "frozen", "blurred")}
    assert lines == {"black": "black: brightness 3.1 < 16", "overexposed": "overexposed: 76% of pixels clipped > 50%",
                     "frozen": "frozen: identical to the previous 3 frames", "blurred": "blurred: sharpness 2.3 < 10"}
    assert QualityReport("frozen", 1.0, 0.0, 0.0, 0.00001).as_dict()["change"] == 0.0
