"""The input normalization: per-channel pixel statistics of the train images."""

from __future__ import annotations

import numpy as np

from edgereg.preprocess import PreprocessConfig
from edgereg.preprocess.reference import GRAY_WEIGHTS_BGR, circle_mask


def normalization_stats(images: np.ndarray, geometry: PreprocessConfig, *, limit: int = 512,
                        seed: int = 0) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of pixel values in [0, 1] over (a sample of) the train images.

    Args:
        images: (N, H, W, 3) uint8 BGR, the train split.
        geometry: channels (rgb/gray) and crop (circle: only pixels inside the mask count).

    Returns:
        (mean, std) tuples with one value per model channel (RGB order, or one for gray).
    """
    rng = np.random.default_rng(seed)
    sample = images if len(images) <= limit else images[rng.choice(len(images), limit, replace=False)]
    pixels = sample.astype(np.float64) / 255.0  # (S, H, W, 3) BGR
    if geometry.circle:
        pixels = pixels[:, circle_mask(*pixels.shape[1:3])]  # (S, H, W, 3) -> (S, P, 3)
    pixels = pixels.reshape(-1, 3)  # (..., 3) -> (S*P, 3)
    planes = pixels @ GRAY_WEIGHTS_BGR[:, None] if geometry.channels == "gray" else pixels[:, ::-1]  # RGB
    std = np.maximum(planes.std(axis=0), 1e-3)  # a constant channel must not divide by zero
    return tuple(float(v) for v in planes.mean(axis=0)), tuple(float(v) for v in std)

