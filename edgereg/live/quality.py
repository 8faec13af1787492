"""The frame quality gate of the live readout: no number for a frame that is not a sample.

Each frame is reduced to a small gray image (``analysis_width`` pixels wide, INTER_AREA) and
checked, in this order (the first failing check names the reason):

* ``black``: mean gray level below ``black_level`` (lens cap, light off, no signal).
* ``overexposed``: more than ``overexposed_fraction`` of the pixels at or above ``clipped_level``.
* ``frozen``: the frame is identical (mean absolute difference at most ``frozen_max_diff`` gray
  levels) to each of the previous ``frozen_frames`` frames: the driver repeats a stale buffer.
* ``blurred``: the variance of the Laplacian (OpenCV) is below ``blur_threshold``.

The thresholds are data in :class:`QualityConfig`; every report carries the measured numbers so
that an integrator can calibrate them on their own analyzer (``edgereg infer --camera 0 --jsonl``
prints them per frame).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np

from edgereg.errors import ShapeError

REASONS = ("black", "overexposed", "frozen", "blurred")


@dataclass(frozen=True)
class QualityConfig:
    """Thresholds of the quality gate (gray levels are 0..255 after BGR -> gray)."""

    black_level: float = 16.0  # mean gray below this is no picture: lens cap, light off, dead feed
    clipped_level: int = 250  # a pixel at or above this level has lost its colour to saturation
    overexposed_fraction: float = 0.5  # half the frame clipped: the reading would be of the glare
    frozen_frames: int = 3  # identical to this many previous frames: a stuck driver, not a still sample
    frozen_max_diff: float = 0.1  # mean |diff| in gray levels that counts as identical; sensor noise is ~1
    blur_threshold: float = 10.0  # variance of the Laplacian below this is out of focus/motion; 0 disables
    analysis_width: int = 320  # frames are downscaled first: fast, and thresholds resolution-independent

    def __post_init__(self) -> None:
        if self.frozen_frames < 1:
            raise ValueError(f"frozen_frames must be >= 1, got {self.frozen_frames}")
        if self.analysis_width < 8:
            raise ValueError(f"analysis_width must be >= 8, got {self.analysis_width}")


@dataclass(frozen=True)
class QualityReport:
    """The gate's verdict on one frame.

    Attributes:
        reason: None when the frame is a sample, else one of :data:`REASONS`.
        brightness: mean gray level, 0..255.
        clipped: fraction of pixels at or above ``clipped_level``, 0..1.
        sharpness: variance of the Laplacian of the analysis image.
        change: mean absolute gray difference to the previous frame (None for the first frame).
    """

    reason: str | None
    brightness: float
    clipped: float
    sharpness: float
    change: float | None

    @property
    def ok(self) -> bool:
        return self.reason is None

    def describe(self, config: QualityConfig) -> str:
        """One line for humans, e.g. ``blurred: sharpness 3.1 < 10``."""
        if self.reason is None:
            return "ok"
        return {
            "black": f"black: brightness {self.brightness:.1f} < {config.black_level:g}",
            "overexposed": f"overexposed: {self.clipped:.0%} of pixels clipped > {config.overexposed_fraction:.0%}",
            "frozen": f"frozen: identical to the previous {config.frozen_frames} frames",
            "blurred": f"blurred: sharpness {self.sharpness:.1f} < {config.blur_threshold:g}",
        }[self.reason]

    def as_dict(self) -> dict[str, float | str | None]:
        return {key: (round(v, 4) if isinstance(v, float) else v) for key, v in asdict(self).items()}


class QualityGate:
    """Checks frames one after another (the ``frozen`` check remembers the previous frames).

    Args:
        config: the thresholds.
    """

    def __init__(self, config: QualityConfig = QualityConfig()) -> None:
        self.config = config
        self._previous: np.ndarray | None = None
        self._repeats = 0  # consecutive frames identical to their predecessor

    def reset(self) -> None:
        """Forget the previous frames (after a camera drop-out)."""
        self._previous = None
        self._repeats = 0

    def analysis_image(self, frame: np.ndarray) -> np.ndarray:
        """(h, w) uint8 gray, at most ``analysis_width`` wide, of a (H, W, 3) BGR or (H, W) frame."""
        if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim not in (2, 3) \
                or (frame.ndim == 3 and frame.shape[2] != 3) or min(frame.shape[:2]) == 0:
            got = f"{frame.shape} {frame.dtype}" if isinstance(frame, np.ndarray) else type(frame).__name__
            raise ShapeError(f"expected a frame (H, W, 3) uint8 BGR, got {got}")
        gray = frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        height, width = gray.shape
        if width > self.config.analysis_width:
            size = (self.config.analysis_width, max(1, round(height * self.config.analysis_width / width)))
            gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
        return gray

    def check(self, frame: np.ndarray) -> QualityReport:
        """Measure ``frame`` ((H, W, 3) uint8 BGR) and decide whether it is a sample.

        Raises:
            ShapeError: not an (H, W, 3) or (H, W) uint8 array.
        """
        config = self.config
        gray = self.analysis_image(frame)
        brightness = float(gray.mean())
        clipped = float(np.count_nonzero(gray >= config.clipped_level)) / gray.size
        sharpness = float(cv2.Laplacian(gray, cv2.CV_64F).var())
        change = None
        if self._previous is not None and self._previous.shape == gray.shape:
            change = float(cv2.absdiff(gray, self._previous).mean())
        self._repeats = self._repeats + 1 if change is not None and change <= config.frozen_max_diff else 0
        self._previous = gray

        if brightness < config.black_level:
            reason = "black"
        elif clipped > config.overexposed_fraction:
            reason = "overexposed"
        elif self._repeats >= config.frozen_frames:
            reason = "frozen"
        elif sharpness < config.blur_threshold:
            reason = "blurred"
        else:
            reason = None
        return QualityReport(reason, brightness, clipped, sharpness, change)
