"""Fused preprocessing kernels (numba): one pass from uint8 BGR frames to the model's input.

Each kernel reads a batch ``images: (B, H, W, 3) uint8, BGR`` and writes
``out: (B * V, C, H, W) float32`` (V views per image, views of image b at rows b*V .. b*V+V-1) doing,
per output pixel and in one pass:

1. the view's geometric transform (identity, one of the 8 exact D4 transforms, or a rotation by an
   arbitrary angle with bilinear sampling),
2. BGR -> RGB (C = 3) or BGR -> gray with weights 0.299 R + 0.587 G + 0.114 B (C = 1),
3. normalization ``pixel * scale[c] + offset[c]`` (= ``(pixel / 255 - mean) / std``),
4. the circular mask: pixels with ``(x - (W-1)/2)^2 + (y - (H-1)/2)^2 > (min(H, W)/2)^2`` get ``fill``,
5. HWC -> CHW layout.

The conventions are those of ``edgereg.core.tta`` and ``docs/CONTRACTS.md``; ``edgereg.preprocess.reference``
implements the same in plain numpy and the tests hold the two equal. Kernels are compiled with
``cache=True`` so a new process loads them from disk instead of compiling.
"""

from __future__ import annotations

import math

from numba import njit, prange


@njit(cache=True, inline="always")
def _row_span(y, height, width, circle):
    """[x_lo, x_hi) of row y inside the circle (the whole row when circle is False)."""
    if not circle:
        return 0, width
    cy = (height - 1) / 2.0
    cx = (width - 1) / 2.0
    radius = min(height, width) / 2.0
    d2 = radius * radius - (y - cy) * (y - cy)
    if d2 < 0.0:
        return 0, 0
    half = math.sqrt(d2)
    lo = int(math.ceil(cx - half))
    hi = int(math.floor(cx + half)) + 1
    return max(lo, 0), min(hi, width)


@njit(cache=True, inline="always")
def _normalize_into(images, b, scale, offset, fill, circle, gray, out, o):
    """Write image b of ``images`` as the identity view into ``out[o]`` (steps 2-5 above)."""
    height, width = images.shape[1], images.shape[2]
    for y in range(height):
        lo, hi = _row_span(y, height, width, circle)
        for c in range(out.shape[1]):
            for x in range(0, lo):
                out[o, c, y, x] = fill
            for x in range(hi, width):
                out[o, c, y, x] = fill
        if gray:
            for x in range(lo, hi):
                out[o, 0, y, x] = (0.114 * images[b, y, x, 0] + 0.587 * images[b, y, x, 1]
                                   + 0.299 * images[b, y, x, 2]) * scale[0] + offset[0]
        else:
            for x in range(lo, hi):
                out[o, 0, y, x] = images[b, y, x, 2] * scale[0] + offset[0]
                out[o, 1, y, x] = images[b, y, x, 1] * scale[1] + offset[1]
                out[o, 2, y, x] = images[b, y, x, 0] * scale[2] + offset[2]


@njit(parallel=True, cache=True)
def fused_identity(images, scale, offset, fill, circle, gray, out):
    """One view per image.

    Args:
        images: (B, H, W, 3) uint8, BGR.
        scale, offset: (C,) float32 normalization.
        fill: float, value outside the circle.
        circle: bool, apply the circular mask.
        gray: bool, C == 1.
        out: (B, C, H, W) float32, written in place.
    """
    for b in prange(images.shape[0]):
        _normalize_into(images, b, scale, offset, fill, circle, gray, out, b)


@njit(cache=True)
def fused_identity_serial(images, scale, offset, fill, circle, gray, out):
    """:func:`fused_identity` on one thread, for small batches."""
    for b in range(images.shape[0]):
        _normalize_into(images, b, scale, offset, fill, circle, gray, out, b)


_TILE = 16  # transpose tile: 16 x 16 float32 = 1 KiB, two tiles stay in L1


@njit(cache=True, inline="always")
def _d4_image(images, b, scale, offset, fill, circle, gray, out):
    """The 8 D4 views of image b into ``out[8 b : 8 b + 8]``."""
    n = images.shape[1]
    o = b * 8
    _normalize_into(images, b, scale, offset, fill, circle, gray, out, o)
    for c in range(out.shape[1]):
        p = out[o, c]
        t = out[o + 7, c]
        for ty in range(0, n, _TILE):
            for tx in range(0, n, _TILE):
                for y in range(ty, min(ty + _TILE, n)):
                    for x in range(tx, min(tx + _TILE, n)):
                        t[x, y] = p[y, x]
        v1, v2, v3 = out[o + 1, c], out[o + 2, c], out[o + 3, c]
        v4, v5, v6 = out[o + 4, c], out[o + 5, c], out[o + 6, c]
        for r in range(n):
            rr = n - 1 - r
            for x in range(n):
                xx = n - 1 - x
                v1[r, x] = t[rr, x]
                v2[r, x] = p[rr, xx]
                v3[r, x] = t[r, xx]
                v4[r, x] = p[r, xx]
                v5[r, x] = t[rr, xx]
                v6[r, x] = p[rr, x]


@njit(parallel=True, cache=True)
def fused_d4(images, scale, offset, fill, circle, gray, out):
    """The 8 exact D4 views of square images (view k as in edgereg.core.tta).

    Each source pixel is converted and normalized once, into view 0; the other seven views are
    derived from that float plane: four by (reversed) row copies and four from one tiled
    transpose ``T = P.T``, since view 1 = flipud(T), 2 = rot180(P), 3 = fliplr(T), 4 = fliplr(P),
    5 = rot180(T), 6 = flipud(P), 7 = T. The circular mask is D4-invariant, so it is applied once.

    Args: as :func:`fused_identity`, except
        images: (B, N, N, 3) uint8, BGR (square).
        out: (B * 8, C, N, N) float32, written in place.
    """
    for b in prange(images.shape[0]):
        _d4_image(images, b, scale, offset, fill, circle, gray, out)


@njit(cache=True)
def fused_d4_serial(images, scale, offset, fill, circle, gray, out):
    """:func:`fused_d4` on one thread, for small batches."""
    for b in range(images.shape[0]):
        _d4_image(images, b, scale, offset, fill, circle, gray, out)


@njit(cache=True, inline="always")
def _rotate_row(images, b, y, angles_rad, scale, offset, fill, gray, out):
    """Row y of every rotated view of image b."""
    height, width = images.shape[1], images.shape[2]
    n_views = angles_rad.shape[0]
    cy = (height - 1) / 2.0
    cx = (width - 1) / 2.0
    lo, hi = _row_span(y, height, width, True)
    for v in range(n_views):
        o = b * n_views + v
        cos_t = math.cos(angles_rad[v])
        sin_t = math.sin(angles_rad[v])
        for c in range(out.shape[1]):
            for x in range(0, lo):
                out[o, c, y, x] = fill
            for x in range(hi, width):
                out[o, c, y, x] = fill
        for x in range(lo, hi):
            xs = cx + cos_t * (x - cx) - sin_t * (y - cy)
            ys = cy + sin_t * (x - cx) + cos_t * (y - cy)
            fx0 = math.floor(xs)
            fy0 = math.floor(ys)
            wx = xs - fx0
            wy = ys - fy0
            x0 = min(max(int(fx0), 0), width - 1)
            y0 = min(max(int(fy0), 0), height - 1)
            x1 = min(max(int(fx0) + 1, 0), width - 1)
            y1 = min(max(int(fy0) + 1, 0), height - 1)
            w00 = (1.0 - wx) * (1.0 - wy)
            w01 = wx * (1.0 - wy)
            w10 = (1.0 - wx) * wy
            w11 = wx * wy
            bgr0 = (w00 * images[b, y0, x0, 0] + w01 * images[b, y0, x1, 0]
                    + w10 * images[b, y1, x0, 0] + w11 * images[b, y1, x1, 0])
            bgr1 = (w00 * images[b, y0, x0, 1] + w01 * images[b, y0, x1, 1]
                    + w10 * images[b, y1, x0, 1] + w11 * images[b, y1, x1, 1])
            bgr2 = (w00 * images[b, y0, x0, 2] + w01 * images[b, y0, x1, 2]
                    + w10 * images[b, y1, x0, 2] + w11 * images[b, y1, x1, 2])
            if gray:
                out[o, 0, y, x] = (0.114 * bgr0 + 0.587 * bgr1 + 0.299 * bgr2) * scale[0] + offset[0]
            else:
                out[o, 0, y, x] = bgr2 * scale[0] + offset[0]
                out[o, 1, y, x] = bgr1 * scale[1] + offset[1]
                out[o, 2, y, x] = bgr0 * scale[2] + offset[2]


@njit(parallel=True, cache=True)
def fused_rotations(images, angles_rad, scale, offset, fill, gray, out):
    """Views rotated counter-clockwise (as displayed) by ``angles_rad`` with bilinear sampling.

    Output pixel (x, y) samples the source at ``xs = cx + cos t (x - cx) - sin t (y - cy)``,
    ``ys = cy + sin t (x - cx) + cos t (y - cy)`` with border clamping; the circular mask is always
    applied (corners of a rotated square are undefined).

    Args:
        images: (B, H, W, 3) uint8, BGR.
        angles_rad: (V,) float64, rotation of each view in radians.
        scale, offset: (C,) float32 normalization.
        fill: float, value outside the circle.
        gray: bool, C == 1.
        out: (B * V, C, H, W) float32, written in place.
    """
    height = images.shape[1]
    for task in prange(images.shape[0] * height):
        _rotate_row(images, task // height, task % height, angles_rad, scale, offset, fill, gray, out)


@njit(cache=True)
def fused_rotations_serial(images, angles_rad, scale, offset, fill, gray, out):
    """:func:`fused_rotations` on one thread, for small batches."""
    height = images.shape[1]
    for task in range(images.shape[0] * height):
        _rotate_row(images, task // height, task % height, angles_rad, scale, offset, fill, gray, out)


# Each kernel has a serial twin for small batches, where waking worker threads costs more than the
# work; edgereg.preprocess.batch.PARALLEL_MIN_VALUES says where.


def pick(parallel_kernel, serial_kernel, out_values: int, parallel_min_values: int):
    """The parallel kernel for outputs of at least ``parallel_min_values`` values, else the serial one."""
    return parallel_kernel if out_values >= parallel_min_values else serial_kernel

