"""The angle kind's output link (torch): degrees from a (sin, cos) pair, with an ONNX-exportable atan2.

``edgereg.training.targets.kind_training`` (the angle kind's ``output``) calls :func:`degrees_from_sin_cos`;
the exported graph holds only Atan, Div, Sqrt and Where (ONNX has no Atan2).
"""

from __future__ import annotations

import math

import torch


def atan2(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``atan2(y, x)`` in radians, (-pi, pi], from ONNX-exportable ops (Atan, Div, Sqrt, Where).

    ONNX has no Atan2. The half-angle identity ``tan(t / 2) = y / (r + x) = (r - x) / y`` with
    ``r = hypot(x, y)`` gives it without cancellation: the first form where ``x > 0``, the second
    where ``x <= 0`` and ``y != 0``; ``y == 0, x < 0`` is pi and the origin 0. Both inputs are first
    divided by ``max(|x|, |y|)`` so ``r`` neither underflows nor overflows, and denominators of the
    branch not taken are replaced by 1, so no NaN or infinity is ever computed.
    """
    largest = torch.maximum(x.abs(), y.abs())
    largest = torch.where(largest > 0, largest, 1.0)
    x, y = x / largest, y / largest  # now max(|x|, |y|) is 1 (or both are 0)
    r = torch.sqrt(x * x + y * y)
    right = x > 0
    off_axis = y != 0
    half_right = torch.atan(y / torch.where(right, r + x, 1.0))
    half_left = torch.atan((r - x) / torch.where(off_axis, y, 1.0))
    negative_axis = math.pi * (x < 0).to(x.dtype)
    return torch.where(right, 2 * half_right, torch.where(off_axis, 2 * half_left, negative_axis))


def degrees_from_sin_cos(sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
    """Angle in degrees, [0, 360), of the vector (cos, sin); any scale of the pair works."""
    degrees = atan2(sin, cos) * (180.0 / math.pi)
    degrees = torch.where(degrees < 0, degrees + 360.0, degrees)
    return torch.where(degrees >= 360.0, degrees - 360.0, degrees)  # -tiny + 360 rounds to 360
