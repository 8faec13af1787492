"""Smoothing live readings over frames, and deciding when a smoothed reading is stable.

* :class:`MedianSmoother`: the median of the last N readings (robust to single bad frames).
* :class:`EmaSmoother`: an exponential moving average with ``alpha = 2 / (N + 1)`` (the same
  centre of mass as an N-frame mean; no lag jump when a reading leaves the window).
* :class:`StabilityTracker`: ``stable`` once the smoothed reading has stayed within a tolerance
  (max - min, per target) for N consecutive readings.

Target kinds: angles (degrees) are smoothed on the circle (the EMA averages unit vectors; the
median is taken of the differences to the circular mean), and distributions are renormalized to
sum to 1 after a per-bin median.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import deque

import numpy as np

from edgereg.card import ModelCard
from edgereg.errors import EdgeregError

METHODS = ("median", "ema")
RANGE_FRACTION = 0.01  # default tolerance: 1% of a bounded target's range
KIND_TOLERANCE = {"angle": 1.0, "coords": 1.0, "distribution": 0.01}  # degrees, pixels, probability


def wrap_degrees(angles: np.ndarray) -> np.ndarray:
    """Angles in degrees wrapped to [-180, 180)."""
    return (np.asarray(angles, dtype=np.float64) + 180.0) % 360.0 - 180.0


def to_full_turn(angles: np.ndarray) -> np.ndarray:
    """Angles in degrees mapped to [0, 360) (``-1e-17 % 360`` rounds to 360.0; that becomes 0)."""
    turned = np.mod(np.asarray(angles, dtype=np.float64), 360.0)
    return np.where(turned >= 360.0, 0.0, turned)


class Smoother(ABC):
    """Turns a stream of readings ``(T,) float64`` into smoothed readings ``(T,) float64``."""

    def __init__(self, window: int, *, kind: str = "scalar") -> None:
        if window < 1:
            raise EdgeregError(f"--smooth must be >= 1 frames, got {window}; e.g. --smooth 5")
        self.window = int(window)
        self.kind = kind

    @abstractmethod
    def update(self, values: np.ndarray) -> np.ndarray:
        """Add one reading ``(T,)`` and return the smoothed reading ``(T,)``."""

    @abstractmethod
    def reset(self) -> None:
        """Forget the history (e.g. after the camera came back)."""


class MedianSmoother(Smoother):
    """Median of the last ``window`` readings, per target."""

    def __init__(self, window: int, *, kind: str = "scalar") -> None:
        super().__init__(window, kind=kind)
        self._history: deque[np.ndarray] = deque(maxlen=self.window)

    def update(self, values: np.ndarray) -> np.ndarray:
        self._history.append(np.asarray(values, dtype=np.float64))
        stack = np.stack(self._history)  # (n, T)
        if self.kind == "angle":
            centre = circular_mean(stack)
            return to_full_turn(centre + np.median(wrap_degrees(stack - centre), axis=0))
        median = np.median(stack, axis=0)
        if self.kind == "distribution":
            median = median / max(float(median.sum()), 1e-12)
        return median

    def reset(self) -> None:
        self._history.clear()


class EmaSmoother(Smoother):
    """Exponential moving average with ``alpha = 2 / (window + 1)``; starts at the first reading."""

    def __init__(self, window: int, *, kind: str = "scalar") -> None:
        super().__init__(window, kind=kind)
        self.alpha = 2.0 / (self.window + 1.0)
        self._state: np.ndarray | None = None  # (T,), or (T, 2) unit vectors for angles

    def update(self, values: np.ndarray) -> np.ndarray:
        values = np.asarray(values, dtype=np.float64)
        if self.kind == "angle":
            radians = np.deg2rad(values)
            values = np.stack([np.cos(radians), np.sin(radians)], axis=-1)  # (T,) -> (T, 2)
        self._state = values if self._state is None else self._state + self.alpha * (values - self._state)
        if self.kind == "angle":
            return to_full_turn(np.rad2deg(np.arctan2(self._state[..., 1], self._state[..., 0])))
        return self._state.copy()

    def reset(self) -> None:
        self._state = None


def circular_mean(angles: np.ndarray) -> np.ndarray:
    """Circular mean in degrees over axis 0 of ``(n, T)`` angles in degrees -> ``(T,)``."""
    radians = np.deg2rad(angles)
    return np.rad2deg(np.arctan2(np.sin(radians).mean(axis=0), np.cos(radians).mean(axis=0)))


def make_smoother(method: str, window: int, *, kind: str = "scalar") -> Smoother:
    """A smoother by name: "median" or "ema".

    Raises:
        EdgeregError: an unknown method or a window < 1.
    """
    if method == "median":
        return MedianSmoother(window, kind=kind)
    if method == "ema":
        return EmaSmoother(window, kind=kind)
    raise EdgeregError(f"unknown smoothing {method!r}: expected 'median' or 'ema'")


def stability_tolerance(card: ModelCard, override: float | None = None) -> np.ndarray:
    """Per-target tolerance ``(T,) float64`` of the ``stable`` indicator, in the targets' units.

    ``override`` (``--stable-tol``) applies to every target. Otherwise: 1% of the card's range for
    bounded targets; 1 degree for angles, 1 pixel for coords, 0.01 for distribution bins; NaN for an
    unbounded scalar/vector, which :class:`StabilityTracker` reads as 1% of the current value.
    """
    n_targets = len(card.targets)
    if override is not None:
        if not override > 0:
            raise EdgeregError(f"--stable-tol must be > 0 (in the targets' units), got {override}")
        return np.full(n_targets, float(override))
    if card.kind in KIND_TOLERANCE:
        return np.full(n_targets, KIND_TOLERANCE[card.kind])
    if card.range is not None:
        return np.array([RANGE_FRACTION * (hi - lo) for lo, hi in card.range], dtype=np.float64)
    return np.full(n_targets, np.nan)


class StabilityTracker:
    """``stable`` when the last ``frames`` smoothed readings stay within ``tolerance`` per target.

    Args:
        frames: how many consecutive readings must agree (N >= 1).
        tolerance: (T,) float64 allowed max - min per target; NaN = 1% of the reading's magnitude.
        circular: angles in degrees (the spread is measured on the circle).
    """

    def __init__(self, frames: int, tolerance: np.ndarray, *, circular: bool = False) -> None:
        if frames < 1:
            raise EdgeregError(f"the stability window must be >= 1 frames, got {frames}")
        self.frames = int(frames)
        self.tolerance = np.asarray(tolerance, dtype=np.float64)
        self.circular = circular
        self._history: deque[np.ndarray] = deque(maxlen=self.frames)

    def reset(self) -> None:
        self._history.clear()

    def update(self, smoothed: np.ndarray) -> bool:
        """Add one smoothed reading ``(T,)``; True once the window is full and within tolerance."""
        self._history.append(np.asarray(smoothed, dtype=np.float64))
        if len(self._history) < self.frames:
            return False
        stack = np.stack(self._history)  # (N, T)
        if self.circular:
            stack = wrap_degrees(stack - stack[-1])
        spread = stack.max(axis=0) - stack.min(axis=0)
        relative = RANGE_FRACTION * np.maximum(np.abs(stack[-1]), 1e-9)
        tolerance = np.where(np.isnan(self.tolerance), relative, self.tolerance)
        return bool(np.all(spread <= tolerance))
