"""Smoothing live readings over frames, and deciding when a smoothed reading is stable.

* :class:`MedianSmoother`: the median of the last N readings (robust to single bad frames).
* :class:`EmaSmoother`: an exponential moving average with ``alpha = 2 / (N + 1)`` (the same
  centre of mass as an N-frame mean; no lag jump when a reading leaves the window).
* :class:`StabilityTracker`: ``stable`` once the smoothed reading has stayed within a tolerance
  (max - min, per target) for N consecutive readings.

Target kinds (``edgereg.core.kinds``) decide the arithmetic: angles (degrees) are smoothed on the circle
(the EMA averages unit vectors; the median is taken of the differences to the circular mean), and
distributions are renormalized to sum to 1 after a per-bin median.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import deque

import numpy as np

from edgereg.core.angles import wrap_degrees
from edgereg.core.card import ModelCard
from edgereg.core.kinds import TargetKind, target_kind
from edgereg.errors import EdgeregError

METHODS = ("median", "ema")
RANGE_FRACTION = 0.01  # default tolerance: 1% of a bounded target's range


class Smoother(ABC):
    """Turns a stream of readings ``(T,) float64`` into smoothed readings ``(T,) float64``."""

    def __init__(self, window: int, *, kind: str | TargetKind = "scalar") -> None:
        if window < 1:
            raise EdgeregError(f"--smooth must be >= 1 frames, got {window}; e.g. --smooth 5")
        self.window = int(window)
        self.kind = target_kind(kind)

    @abstractmethod
    def update(self, values: np.ndarray) -> np.ndarray:
        """Add one reading ``(T,)`` and return the smoothed reading ``(T,)``."""

    @abstractmethod
    def reset(self) -> None:
        """Forget the history (e.g. after the camera came back)."""


class MedianSmoother(Smoother):
    """Median of the last ``window`` readings, per target."""

    def __init__(self, window: int, *, kind: str | TargetKind = "scalar") -> None:
        super().__init__(window, kind=kind)
        self._history: deque[np.ndarray] = deque(maxlen=self.window)

    def update(self, values: np.ndarray) -> np.ndarray:
        self._history.append(np.asarray(values, dtype=np.float64))
        return self.kind.median(np.stack(self._history))  # (n, T) -> (T,)

    def reset(self) -> None:
        self._history.clear()


class EmaSmoother(Smoother):
    """Exponential moving average with ``alpha = 2 / (window + 1)``; starts at the first reading."""

    def __init__(self, window: int, *, kind: str | TargetKind = "scalar") -> None:
        super().__init__(window, kind=kind)
        self.alpha = 2.0 / (self.window + 1.0)
        self._state: np.ndarray | None = None  # (T,), or (T, 2) unit vectors for angles

    def update(self, values: np.ndarray) -> np.ndarray:
        values = self.kind.ema_state(np.asarray(values, dtype=np.float64))
        self._state = values if self._state is None else self._state + self.alpha * (values - self._state)
        return self.kind.ema_reading(self._state)

    def reset(self) -> None:
        self._state = None


def make_smoother(method: str, window: int, *, kind: str | TargetKind = "scalar") -> Smoother:
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
    bounded targets; the kind's own tolerance otherwise (``TargetKind.stable_tolerance``: 1 degree for
    angles, 1 pixel for coords, 0.01 for distribution bins); NaN for an unbounded scalar/vector, which
    :class:`StabilityTracker` reads as 1% of the current value.
    """
    n_targets = len(card.targets)
    if override is not None:
        if not override > 0:
            raise EdgeregError(f"--stable-tol must be > 0 (in the targets' units), got {override}")
        return np.full(n_targets, float(override))
    if card.target_kind.stable_tolerance is not None:
        return np.full(n_targets, card.target_kind.stable_tolerance)
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


__all__ = ["METHODS", "EmaSmoother", "MedianSmoother", "Smoother", "StabilityTracker", "make_smoother",
           "stability_tolerance"]
