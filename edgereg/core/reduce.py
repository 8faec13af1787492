"""Undoing TTA view transforms on readings: the geometry each target kind's reduction needs.

Each kind's ``reduce_views`` (``edgereg.core.kinds``, table in docs/architecture.md) takes the model's
outputs for all views, ``views: (B, V, T) float64``, and returns ``(values (B, T), spread (B, T))``:
the reading and its disagreement across views (an uncertainty).

* scalar / vector: mean and standard deviation.
* distribution: mean of the probabilities (renormalized) and their standard deviation.
* coords: each view's [0, 1] (u, v) is mapped back through the inverse of its view transform, then
  mean and standard deviation.
* angle: each view's degrees are inverse-rotated (and un-flipped), then the circular mean and the
  circular standard deviation in degrees.
"""

from __future__ import annotations

import numpy as np

from edgereg.core.angles import circular_reduce
from edgereg.core.tta import TTASpec


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


__all__ = ["circular_reduce", "unmap_angles", "unmap_coords"]
