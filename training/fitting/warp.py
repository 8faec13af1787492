"""The geometric augmentation's maps (torch): rotate, mirror and shift, for images and for points.

``edgereg.training.fitting.augment`` warps the images with :func:`forward_matrices`; the coords kind
(``edgereg.training.targets.kind_training``) moves its (u, v) targets with :func:`move_points`, so a point
lands where its pixel went. Angles in degrees, counter-clockwise as displayed; pixels y-down.
"""

from __future__ import annotations

import torch


def forward_matrices(angles: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """(B, 2, 2) float64 maps of centred source pixels to centred output pixels: rotate(flip(p)).

    A display-CCW rotation by t in y-down pixels is ``[[cos t, sin t], [-sin t, cos t]]``; the flip
    negates x first.
    """
    radians = torch.deg2rad(angles.double())
    cos, sin = torch.cos(radians), torch.sin(radians)
    sign = torch.where(flips, -1.0, 1.0).double()
    return torch.stack([torch.stack([cos * sign, sin], dim=1),
                        torch.stack([-sin * sign, cos], dim=1)], dim=1)  # (B,2) x2 -> (B,2,2)


def move_points(targets: torch.Tensor, angles: torch.Tensor, flips: torch.Tensor, shifts: torch.Tensor,
                size: torch.Size) -> torch.Tensor:
    """(u, v) points ``(B, 2K)`` in [0, 1] of images of ``size`` (H, W), moved with the images:
    rotated by ``angles (B,)`` degrees, mirrored where ``flips (B,)``, shifted by ``shifts (B, 2)`` px."""
    height, width = size
    dims = torch.tensor([float(width), float(height)], dtype=torch.float64)
    points = targets.double().cpu().view(targets.shape[0], -1, 2)  # (B,2K) -> (B,K,2) (u, v)
    centred = points * dims - 0.5 - (dims - 1) / 2.0  # [0,1] -> pixels about the centre
    # (B,K,2) @ (B,2,2)^T + (B,1,2): each point p becomes M p + shift
    moved = centred @ forward_matrices(angles, flips).transpose(1, 2) + shifts.double().unsqueeze(1)
    uv = (moved + (dims - 1) / 2.0 + 0.5) / dims
    return uv.reshape(targets.shape).to(targets.device, torch.float32)  # (B,K,2) -> (B,2K)
