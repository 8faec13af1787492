"""Arithmetic of angles in degrees on the circle (the ``angle`` target kind's units).

Every function takes and returns float64 degrees; none of them knows about models or cards.
"""

from __future__ import annotations

import numpy as np


def wrap_degrees(angles: np.ndarray) -> np.ndarray:
    """Angles in degrees wrapped to [-180, 180)."""
    return (np.asarray(angles, dtype=np.float64) + 180.0) % 360.0 - 180.0


def to_full_turn(angles: np.ndarray) -> np.ndarray:
    """Angles in degrees mapped to [0, 360) (``-1e-17 % 360`` rounds to 360.0; that becomes 0)."""
    turned = np.mod(np.asarray(angles, dtype=np.float64), 360.0)
    return np.where(turned >= 360.0, 0.0, turned)


def circular_difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a - b`` in degrees, taken the short way round the circle, in [-180, 180)."""
    return wrap_degrees(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))


def circular_mean(angles: np.ndarray) -> np.ndarray:
    """Circular mean in degrees over axis 0 of ``(n, T)`` angles in degrees -> ``(T,)``, in (-180, 180]."""
    radians = np.deg2rad(angles)
    return np.rad2deg(np.arctan2(np.sin(radians).mean(axis=0), np.cos(radians).mean(axis=0)))


def circular_reduce(angles_deg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Circular mean in [0, 360) and circular std (degrees) over axis 1 of ``(B, V, T)``.

    Views that cancel out (mean resultant length below 1e-12, e.g. 0 and 180 degrees) have no mean
    direction; their spread is reported as the cap sqrt(-2 ln 1e-12) rad = 425.9 degrees.
    """
    rad = np.deg2rad(angles_deg)
    s, c = np.sin(rad).mean(axis=1), np.cos(rad).mean(axis=1)
    mean = np.rad2deg(np.arctan2(s, c)) % 360.0
    mean = np.where(mean >= 360.0, 0.0, mean)  # a tiny negative angle (-1e-15) % 360 rounds to 360.0
    resultant = np.clip(np.hypot(s, c), 1e-12, 1.0)
    return mean, np.rad2deg(np.sqrt(-2.0 * np.log(resultant)))
