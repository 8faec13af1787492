"""Plain-numpy reference of the fused kernels: slow, obvious, and the definition tests hold to."""

from __future__ import annotations

import numpy as np

from edgereg.core.tta import TTASpec, parse_tta
from edgereg.preprocess.config import PreprocessConfig

GRAY_WEIGHTS_BGR = np.array([0.114, 0.587, 0.299])


def circle_mask(height: int, width: int) -> np.ndarray:
    """(H, W) bool, True inside the inscribed circle (centre ((W-1)/2, (H-1)/2), r = min(H, W)/2)."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    radius = min(height, width) / 2.0
    return (xs - (width - 1) / 2.0) ** 2 + (ys - (height - 1) / 2.0) ** 2 <= radius ** 2


def d4_view(image: np.ndarray, code: int) -> np.ndarray:
    """D4 view ``code`` (0..7) of an (H, W, ...) array: rot90 counter-clockwise, then flip if >= 4."""
    view = np.rot90(image, code % 4, axes=(0, 1))
    return np.flip(view, axis=1) if code >= 4 else view


def rotate_bilinear(image: np.ndarray, angle_deg: float) -> np.ndarray:
    """Rotate (H, W, 3) counter-clockwise (as displayed) about the centre; bilinear, border-clamped.

    Returns:
        (H, W, 3) float64 (not rounded, like the kernel).
    """
    height, width = image.shape[:2]
    t = np.deg2rad(angle_deg)
    cy, cx = (height - 1) / 2.0, (width - 1) / 2.0
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    src_x = cx + np.cos(t) * (xs - cx) - np.sin(t) * (ys - cy)
    src_y = cy + np.sin(t) * (xs - cx) + np.cos(t) * (ys - cy)
    fx0, fy0 = np.floor(src_x), np.floor(src_y)
    wx, wy = (src_x - fx0)[..., None], (src_y - fy0)[..., None]
    x0 = np.clip(fx0.astype(int), 0, width - 1)
    x1 = np.clip(fx0.astype(int) + 1, 0, width - 1)
    y0 = np.clip(fy0.astype(int), 0, height - 1)
    y1 = np.clip(fy0.astype(int) + 1, 0, height - 1)
    img = image.astype(np.float64)
    return ((1 - wx) * (1 - wy) * img[y0, x0] + wx * (1 - wy) * img[y0, x1]
            + (1 - wx) * wy * img[y1, x0] + wx * wy * img[y1, x1])


def normalize(image_bgr: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """(H, W, 3) BGR values in [0, 255] (any dtype) -> (C, H, W) float64 normalized, unmasked."""
    bgr = image_bgr.astype(np.float64)
    if config.channels == "gray":
        planes = (bgr @ GRAY_WEIGHTS_BGR)[None]  # (H, W, 3) @ (3,) -> (1, H, W)
    else:
        planes = bgr[..., ::-1].transpose(2, 0, 1)  # (H, W, BGR) -> (RGB, H, W)
    mean = np.asarray(config.mean, dtype=np.float64)[:, None, None]
    std = np.asarray(config.std, dtype=np.float64)[:, None, None]
    return (planes / 255.0 - mean) / std


def preprocess_batch_ref(images: np.ndarray, config: PreprocessConfig,
                         tta: TTASpec | str | None = None) -> np.ndarray:
    """Reference of :func:`edgereg.preprocess.preprocess_batch` (same arguments and result)."""
    spec = tta if isinstance(tta, TTASpec) else parse_tta(tta)
    n, height, width, _ = images.shape
    rows = []
    for b in range(n):
        for v in range(spec.n):
            if spec.mode == "rot":
                view = rotate_bilinear(images[b], spec.angles_deg()[v])
                masked = True
            else:
                view = d4_view(images[b], v)
                masked = config.circle
            planes = normalize(view, config)
            if masked:
                planes[:, ~circle_mask(height, width)] = config.fill
            rows.append(planes)
    return np.stack(rows).astype(np.float32)  # (B*V, C, H, W)
