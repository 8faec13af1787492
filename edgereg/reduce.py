"""Reducing TTA views to one reading per image, by target kind (DESIGN.md's table).

Every function takes the model's outputs for all views, ``views: (B, V, T) float64``, and returns
``(values (B, T), spread (B, T))``: the reading and its disagreement across views (an uncertainty).

* scalar / vector: mean and standard deviation.
* distribution: mean of the probabilities (renormalized) and their standard deviation.
* coords: each view's [0, 1] (u, v) is mapped back through the inverse of its view transform, then
  mean and standard deviation.
* angle: each view's degrees are inverse-rotated (and un-flipped), then the circular mean and the
  circular standard deviation in degrees.
"""

from __future__ import annotations

import numpy as np

from edgereg.errors import TTAError
from edgereg.tta import TTASpec


def reduce_views(kind: str, views: np.ndarray, spec: TTASpec) -> tuple[np.ndarray, np.ndarray]:
    """Reduce ``views: (B, V, T)`` to ``(values (B, T), spread (B, T))`` for ``kind``."""
    if views.shape[1] != spec.n:
        raise TTAError(f"expected {spec.n} views per image for TTA {spec}, got {views.shape[1]}")
    if kind in ("scalar", "vector"):
        return views.mean(axis=1), views.std(axis=1)
    if kind == "distribution":
        mean = views.mean(axis=1)
        mean = mean / np.maximum(mean.sum(axis=1, keepdims=True), 1e-12)
        return mean, views.std(axis=1)
    if kind == "coords":
        unmapped = unmap_coords(views, spec)
        return unmapped.mean(axis=1), unmapped.std(axis=1)
    if kind == "angle":
        return circular_reduce(unmap_angles(views, spec))
    raise TTAError(f"target kind {kind!r} has no TTA reduction; use --tta none")


def unmap_coords(views: np.ndarray, spec: TTASpec) -> np.ndarray:
    """Map each view's normalized (u, v) pairs back to the un-transformed input.

    Args:
        views: (B, V, T) float64, T = 2 * points, (u, v) of each point in [0, 1] of its view.

    Returns:
        (B, V, T) float64 in [0, 1] of the original model input.
    """
    points = views.reshape(views.shape[0], views.shape[1], -1, 2).copy()  # (B,V,T) -> (B,V,P,2)
    u, v = points[..., 0] - 0.5, points[..., 1] - 0.5
    flipped = spec.flipped()[None, :, None]
    u = np.where(flipped, -u, u)  # undo the flip, applied last
    # the view rotated the image display-CCW by t: a source point (us, vs) appears at
    # u = cos t us + sin t vs, v = -sin t us + cos t vs; invert that rotation.
    t = np.deg2rad(spec.angles_deg())[None, :, None]
    cos_t, sin_t = np.cos(t), np.sin(t)
    us = cos_t * u - sin_t * v
    vs = sin_t * u + cos_t * v
    points[..., 0], points[..., 1] = us + 0.5, vs + 0.5
    return points.reshape(views.shape)  # (B,V,P,2) -> (B,V,T)


def unmap_angles(views: np.ndarray, spec: TTASpec) -> np.ndarray:
    """Undo each view's transform on angles in degrees: un-flip (a -> 180 - a), then subtract t."""
    flipped = spec.flipped()[None, :, None]
    angles = np.where(flipped, 180.0 - views, views)
    return angles - spec.angles_deg()[None, :, None]


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
