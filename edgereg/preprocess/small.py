"""numpy twins of the identity and D4 kernels, bit-identical to them, for processes that need no numba.

A process that reads one image (``edgereg infer MODEL one.jpg``, a live frame at start-up) would
spend ~0.4 s of CPU importing numba and initialising its CPU target to load the cached kernels,
against ~0.1 ms of work; folder scoring preprocesses a batch of 32 64x64 frames in ~0.9 ms here
against numba's ~0.2 ms, so numba's start-up pays only after ~15,000 frames, while decoding them
costs ~1 ms each either way. These functions do the same arithmetic in numpy, and
:func:`edgereg.preprocess.batch.preprocess_batch` uses them until a call needs numba (rotations,
or at least ``NUMBA_MIN_VALUES`` output values at once); from then on the numba kernels serve
every call.

Bit-identical, not merely close: the RGB kernel computes ``uint8 * float32 scale + float32 offset``
in float32 (numba's promotion of uint8 with float32), the gray kernel ``0.114 B + 0.587 G + 0.299 R``
in float64 then the affine map in float64, and the D4 views are exact copies of the normalized plane;
numpy here does the same operations in the same types and order (no fused multiply-add on either
side), so the tests hold the two equal with ``array_equal``.
"""

from __future__ import annotations

import numpy as np

NUMBA_MIN_VALUES = 1 << 22  # output values of one call (16 MiB of float32) from which numba is loaded


def identity(images: np.ndarray, scale: np.ndarray, offset: np.ndarray, fill: float, mask: np.ndarray | None,
             gray: bool, out: np.ndarray) -> None:
    """One view per image, as ``kernels.fused_identity``.

    Args:
        images: (B, H, W, 3) uint8, BGR.
        scale, offset: (C,) float32 normalization.
        fill: value outside the circle.
        mask: (H, W) bool, True inside the circle, or None for no mask.
        gray: C == 1.
        out: (B, C, H, W) float32, written in place.
    """
    if gray:
        bgr = images.astype(np.float64)
        luma = 0.114 * bgr[..., 0] + 0.587 * bgr[..., 1] + 0.299 * bgr[..., 2]  # (B, H, W) float64
        out[:, 0] = luma * float(scale[0]) + float(offset[0])
    else:
        rgb = images[..., ::-1].transpose(0, 3, 1, 2).astype(np.float32)  # (B,H,W,BGR) -> (B,RGB,H,W)
        np.multiply(rgb, scale[:, None, None], out=out)
        out += offset[:, None, None]
    if mask is not None:
        out[:, :, ~mask] = fill


def d4(images: np.ndarray, scale: np.ndarray, offset: np.ndarray, fill: float, mask: np.ndarray | None,
       gray: bool, out: np.ndarray) -> None:
    """The 8 D4 views of square images, as ``kernels.fused_d4`` (view k of image b at row 8 b + k).

    Args:
        out: (B * 8, C, N, N) float32, written in place; the rest as :func:`identity`.
    """
    views = out.reshape(len(images), 8, *out.shape[1:])  # (B*8, C, N, N) -> (B, 8, C, N, N)
    identity(images, scale, offset, fill, mask, gray, views[:, 0])
    plane = views[:, 0]
    for k in range(1, 8):
        view = np.rot90(plane, k % 4, axes=(2, 3))  # display-CCW rotation of every (N, N) plane
        views[:, k] = view[..., ::-1] if k >= 4 else view


def circle_mask(height: int, width: int) -> np.ndarray:
    """(H, W) bool, True where the kernels' ``_row_span`` keeps the pixel (same float64 arithmetic)."""
    ys, xs = np.mgrid[0:height, 0:width]
    radius = min(height, width) / 2.0
    d2 = radius * radius - (ys - (height - 1) / 2.0) ** 2  # (H, W), per row as in _row_span
    half = np.sqrt(np.maximum(d2, 0.0))
    lo = np.ceil((width - 1) / 2.0 - half)
    hi = np.floor((width - 1) / 2.0 + half) + 1
    return (d2 >= 0.0) & (xs >= lo) & (xs < hi)
