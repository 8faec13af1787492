"""Fixed feature blocks: what an engineer of the field reads from a photo before training a CNN.

Every block is an ``nn.Module`` mapping intensities ``(B, C, H, W) float32`` (pixel values in about
[0, 1]: the normalized model input mapped back through the preprocessing's affine, or the reference
ratio when a reference region divides the colours) to features ``(B, F) float32``. ``F`` is fixed by
the constructor (``n_features``), so a block's buffers have the same shapes at build time and after
:meth:`fit`; the state dict of a fitted block rebuilds it exactly.

The blocks use only ops that ONNX exports plainly and the C backend lowers (Conv, AveragePool,
ReduceMean/ReduceSum, MatMul, Less, Cast, Log, Sqrt, Div, ...): no TopK or Sort. Order statistics
are read by counting: with the possible values ``L_0 < ... < L_K`` (the 256 levels of an 8-bit
image, or quantiles of the training pixels when the values are not on that grid), the r-th smallest
of N values is ``L_0 + sum_k (L_{k+1} - L_k) [#{x <= L_k} < r]``: exact on 8-bit data.

==========  =================================================================  ===================
block       features                                                           for
==========  =================================================================  ===================
moments     per channel: mean, std, min, max, order statistics (2/10/25/75/    pixel statistics,
            90/98 % and the two middle ones, whose average is the median)      exposure, contrast
colour      per channel: log mean over a centre disc, two rings, the corners   colour assays,
            and a 3x3 grid of cells (differences of logs are log-ratios)       reference ratios
bank        log energy of a filter bank on the gray image: at every octave of  texture scale,
            a pyramid, a centre-surround (difference of Gaussians) and four    grain size,
            oriented derivative filters, at two scales per octave              orientation
spectrum    log power in 12 log-spaced radial bands of the windowed 2-D DFT,    texture scale,
            over all orientations and in 4 sectors, relative to the total      periodicity
pixels      the image average-pooled to at most 16 x 16 (native when <= 32)    anything linear in
                                                                               the pixels (mean)
==========  =================================================================  ===================
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

EIGHT_BIT_LEVELS = 256
ORDER_QUANTILES = (0.02, 0.10, 0.25, 0.75, 0.90, 0.98)  # besides min, max and the middle pair
MAX_ORDER_PIXELS = 784  # order statistics are read from at most this many pixels per channel (strided; 28 x 28 exactly)
LOG_FLOOR = 1e-3  # intensities are clamped here before a log (a black region must not give -inf)
ENERGY_FLOOR = 1e-8


class Block(nn.Module):
    """Base of the feature blocks: ``forward(intensity (B, C, H, W)) -> (B, n_features)``."""

    n_features: int = 0
    names: tuple[str, ...] = ()

    def fit(self, intensity: torch.Tensor) -> None:
        """Set data-dependent constants from training intensities ``(N, C, H, W)`` (default: none)."""


# ----------------------------------------------------------------------------------------------------
# Moments and order statistics


class Moments(Block):
    """Per channel: mean, std (population), and order statistics read by counting (module docstring).

    ``(B, C, H, W) -> (B, C * (2 + Q))`` with Q = 4 + len(ORDER_QUANTILES) ranks: min, max, the middle
    pair (equal for an odd pixel count) and the quantiles. Order statistics use every ``stride``-th
    pixel on each axis so that at most MAX_ORDER_PIXELS pixels per channel are counted.
    """

    def __init__(self, channels: int, input_size: tuple[int, int]):
        super().__init__()
        h, w = input_size
        self.stride = max(1, math.ceil(math.sqrt(h * w / MAX_ORDER_PIXELS)))
        n = len(range(0, h, self.stride)) * len(range(0, w, self.stride))  # pixels counted per channel
        ranks = [1, n, (n + 1) // 2, n // 2 + 1] + [min(n, max(1, round(q * n))) for q in ORDER_QUANTILES]
        self.channels = channels
        self.register_buffer("ranks", torch.tensor(ranks, dtype=torch.float32).view(1, 1, 1, -1))  # (1,1,1,Q)
        # levels (C, K+1) and thresholds between them (C, K); the default is the 8-bit grid
        levels = torch.arange(EIGHT_BIT_LEVELS, dtype=torch.float32).div(255.0).expand(channels, -1).clone()
        self.register_buffer("levels", levels)
        self.n_features = channels * (2 + len(ranks))
        self.names = tuple(f"c{c}_{stat}" for c in range(channels) for stat in
                           ("mean", "std", "min", "max", "mid_lo", "mid_hi", *(f"q{q:g}" for q in ORDER_QUANTILES)))

    def fit(self, intensity: torch.Tensor) -> None:
        """Keep the 8-bit grid when the training values lie on it, else use their quantiles."""
        sample = intensity[:, :, ::self.stride, ::self.stride].transpose(0, 1).reshape(self.channels, -1)  # (C, N*P)
        on_grid = bool(((sample * 255.0 - torch.round(sample * 255.0)).abs() < 1e-3).all())
        if on_grid:
            levels = torch.arange(EIGHT_BIT_LEVELS, dtype=torch.float32).div(255.0).expand(self.channels, -1)
        else:
            q = torch.linspace(0.0, 1.0, EIGHT_BIT_LEVELS, dtype=torch.float64)
            levels = torch.quantile(sample.double()[:, :: max(1, sample.shape[1] // 200_000)], q, dim=1).T.float()
            levels = torch.cummax(levels, dim=1).values  # (C, K+1) non-decreasing
        self.levels.copy_(levels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        flat = x.reshape(b, c, -1)  # (B,C,H,W) -> (B,C,H*W)
        mean = flat.mean(dim=2)  # (B,C)
        std = (flat - mean.unsqueeze(2)).square().mean(dim=2).clamp_min(0.0).sqrt()  # (B,C)
        sub = x[:, :, ::self.stride, ::self.stride].reshape(b, c, -1, 1)  # (B,C,h,w) -> (B,C,P,1)
        thresholds = (0.5 * (self.levels[:, 1:] + self.levels[:, :-1])).view(1, c, 1, -1)  # (1,C,1,K)
        counts = (sub <= thresholds).float().sum(dim=2)  # (B,C,P,K) -> (B,C,K): #{x <= L_k}
        below = (counts.unsqueeze(3) < self.ranks).float()  # (B,C,K,1) < (1,1,1,Q) -> (B,C,K,Q)
        steps = (self.levels[:, 1:] - self.levels[:, :-1]).view(1, c, -1, 1)  # (C,K) -> (1,C,K,1)
        order = self.levels[:, :1].view(1, c, 1) + (below * steps).sum(dim=2)  # (B,C,Q)
        return torch.cat([mean.unsqueeze(2), std.unsqueeze(2), order], dim=2).reshape(b, -1)  # (B,C,2+Q) -> (B,F)


# ----------------------------------------------------------------------------------------------------
# Colour regions


def region_masks(input_size: tuple[int, int]) -> tuple[np.ndarray, tuple[str, ...]]:
    """(R, H*W) float32 weights, each row summing to 1 (or 0 for an empty region), and region names.

    Regions: a centre disc (radius < 0.2 of the shorter side), rings 0.2-0.35 and 0.35-0.5, the
    corners (outside the inscribed circle), and a 3 x 3 grid of cells.
    """
    h, w = input_size
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    r = np.hypot((ys + 0.5 - h / 2) / min(h, w), (xs + 0.5 - w / 2) / min(h, w))
    masks = [r < 0.2, (r >= 0.2) & (r < 0.35), (r >= 0.35) & (r < 0.5), r >= 0.5]
    names = ["disc", "ring1", "ring2", "corners"]
    for i in range(3):
        for j in range(3):
            masks.append((ys >= i * h / 3) & (ys < (i + 1) * h / 3) & (xs >= j * w / 3) & (xs < (j + 1) * w / 3))
            names.append(f"cell{i}{j}")
    weights = np.stack([m.reshape(-1) / max(1, m.sum()) for m in masks]).astype(np.float32)
    return weights, tuple(names)


class ColourRegions(Block):
    """Per channel, the log of the mean intensity over fixed regions (:func:`region_masks`).

    ``(B, C, H, W) -> (B, C * R)``. A log-ratio of two regions or two channels (absorbance against a
    plate, chromaticity) is a difference of these features, which a linear readout forms itself.
    """

    def __init__(self, channels: int, input_size: tuple[int, int]):
        super().__init__()
        weights, names = region_masks(input_size)
        self.register_buffer("weights", torch.from_numpy(weights).T.contiguous())  # (H*W, R)
        self.n_features = channels * len(names)
        self.names = tuple(f"c{c}_{n}" for c in range(channels) for n in names)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        means = x.reshape(b, c, -1) @ self.weights  # (B,C,H*W) @ (H*W,R) -> (B,C,R)
        return torch.log(means.clamp_min(LOG_FLOOR)).reshape(b, -1)  # (B,C,R) -> (B,C*R)


# ----------------------------------------------------------------------------------------------------
# Filter bank


def gaussian_derivative_kernels(sigma: float) -> np.ndarray:
    """(5, k, k) float32: a centre-surround (DoG, sigma vs 2 sigma, zero mean) and first derivatives
    of a Gaussian at 0, 45, 90 and 135 degrees, each scaled to unit L2 norm; k = 2 ceil(3 sigma) + 1
    for the surround's 2 sigma, capped by the caller's image."""
    half = int(math.ceil(3 * 2 * sigma)) if sigma * 2 <= 2.5 else int(math.ceil(2.5 * 2 * sigma))
    ys, xs = np.mgrid[-half:half + 1, -half:half + 1].astype(np.float64)

    def gauss(s):
        g = np.exp(-(xs ** 2 + ys ** 2) / (2 * s * s))
        return g / g.sum()

    dog = gauss(sigma) - gauss(2 * sigma)
    g = gauss(sigma)
    kernels = [dog - dog.mean()]
    for angle in (0.0, 45.0, 90.0, 135.0):
        t = math.radians(angle)
        d = -(xs * math.cos(t) + ys * math.sin(t)) / (sigma * sigma) * g  # derivative along the angle
        kernels.append(d - d.mean())
    kernels = [k / max(np.sqrt((k ** 2).sum()), 1e-12) for k in kernels]
    return np.stack(kernels).astype(np.float32)


class FilterBank(Block):
    """Log energies of a filter bank on the gray image over an image pyramid.

    Level 0 is the image, each next level a 2 x 2 average of the previous, while its shorter side is
    at least ``8 + kernel``. At every level two kernel sets (sigma 1 and sqrt 2: half-octave steps)
    of :func:`gaussian_derivative_kernels` run as "valid" convolutions (no padding: borders are not
    features). Features: log mean squared response per (level, sigma, filter), and the log variance
    of the gray image. ``(B, C, H, W) -> (B, 1 + levels * 2 * 5)``.
    """

    SIGMAS = (1.0, math.sqrt(2.0))

    def __init__(self, channels: int, input_size: tuple[int, int]):
        super().__init__()
        kernels = [gaussian_derivative_kernels(s) for s in self.SIGMAS]
        side = max(k.shape[-1] for k in kernels)
        padded = np.zeros((len(kernels) * 5, 1, side, side), dtype=np.float32)
        for i, k in enumerate(kernels):
            off = (side - k.shape[-1]) // 2
            padded[i * 5:(i + 1) * 5, 0, off:off + k.shape[-1], off:off + k.shape[-1]] = k
        self.register_buffer("kernels", torch.from_numpy(padded))  # (10, 1, k, k)
        self.register_buffer("gray", torch.full((1, channels, 1, 1), 1.0 / channels))
        h, w = input_size
        levels = 0
        while min(h, w) >= 8 + side and levels < 6:
            levels, h, w = levels + 1, h // 2, w // 2
        self.levels = max(1, levels)
        self.n_features = 1 + self.levels * padded.shape[0]
        self.names = ("log_var",) + tuple(f"l{l}_s{s}_f{f}" for l in range(self.levels)
                                          for s in range(len(self.SIGMAS)) for f in range(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = (x * self.gray).sum(dim=1, keepdim=True)  # (B,C,H,W) -> (B,1,H,W)
        var = (g - g.mean(dim=(2, 3), keepdim=True)).square().mean(dim=(1, 2, 3))  # (B,)
        features = [torch.log(var + ENERGY_FLOOR).unsqueeze(1)]
        level = g
        for i in range(self.levels):
            if min(level.shape[-2:]) >= self.kernels.shape[-1]:
                response = F.conv2d(level, self.kernels)  # (B,1,h,w) -> (B,10,h-k+1,w-k+1)
                energy = response.square().mean(dim=(2, 3))  # (B,10)
            else:  # too small for the kernels: a constant the readout ignores
                energy = level.new_zeros(level.shape[0], self.kernels.shape[0])
            features.append(torch.log(energy + ENERGY_FLOOR))
            if i + 1 < self.levels:
                level = F.avg_pool2d(level, 2)  # (B,1,h,w) -> (B,1,h/2,w/2)
        return torch.cat(features, dim=1)  # (B, 1 + levels * 10)


# ----------------------------------------------------------------------------------------------------
# Spectrum


SPECTRUM_BANDS = 12
SPECTRUM_MAX_SIDE = 128  # larger images are average-pooled to about this side first


def dft_matrices(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, n) cos and sin matrices of the length-n DFT: ``X[k] = sum_t x[t] (cos - i sin)(2 pi k t / n)``."""
    k = np.arange(n)[:, None] * np.arange(n)[None, :]
    return np.cos(2 * np.pi * k / n), np.sin(2 * np.pi * k / n)


class Spectrum(Block):
    """Log power of the windowed gray image in log-spaced radial bands of the 2-D Fourier spectrum,
    over all orientations and in four orientation sectors, relative to the total power (contrast
    invariant): the classical texture-scale reader.

    The DFT is four constant matrix products (``C_h X C_w^T`` etc.), so the block exports to MatMul
    and runs in the C backend. ``(B, C, H, W) -> (B, 5 * SPECTRUM_BANDS)``.
    """

    def __init__(self, channels: int, input_size: tuple[int, int]):
        super().__init__()
        h, w = input_size
        self.factor = max(1, math.ceil(max(h, w) / SPECTRUM_MAX_SIDE))
        h, w = h // self.factor, w // self.factor
        ch, sh = dft_matrices(h)
        cw, sw = dft_matrices(w)
        window = np.outer(np.hanning(h), np.hanning(w))
        fy, fx = np.meshgrid(np.fft.fftfreq(h), np.fft.fftfreq(w), indexing="ij")
        radius, angle = np.hypot(fx, fy), np.mod(np.arctan2(fy, fx), np.pi)  # orientation in [0, pi)
        edges = np.geomspace(1.0 / max(h, w), 0.5 * math.sqrt(2.0), SPECTRUM_BANDS + 1)
        masks = []
        for sector in [None, 0, 1, 2, 3]:
            in_sector = np.ones_like(radius, bool) if sector is None else (
                np.abs(np.mod(angle - sector * np.pi / 4 + np.pi / 8, np.pi)) < np.pi / 4)
            for b in range(SPECTRUM_BANDS):
                masks.append(((radius >= edges[b]) & (radius < edges[b + 1]) & in_sector).reshape(-1))
        ac = (radius > 0).reshape(-1)  # everything but the DC term
        for name, value in (("ch", ch), ("sh", sh), ("cwt", cw.T), ("swt", sw.T), ("window", window),
                            ("bands", np.stack(masks, axis=1)), ("ac", ac[:, None])):
            self.register_buffer(name, torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32)))
        self.register_buffer("gray", torch.full((1, channels, 1, 1), 1.0 / channels))
        self.n_features = len(masks)
        self.names = tuple(f"{s}_b{b}" for s in ("all", "s0", "s45", "s90", "s135") for b in range(SPECTRUM_BANDS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = (x * self.gray).sum(dim=1, keepdim=True)  # (B,C,H,W) -> (B,1,H,W)
        if self.factor > 1:
            g = F.avg_pool2d(g, self.factor)  # (B,1,H,W) -> (B,1,h,w)
        g = (g - g.mean(dim=(2, 3), keepdim=True)) * self.window
        a, b = g @ self.cwt, g @ self.swt  # (B,1,h,w) @ (w,w) -> (B,1,h,w)
        real = self.ch @ a - self.sh @ b  # (h,h) @ (B,1,h,w) -> (B,1,h,w)
        imag = self.sh @ a + self.ch @ b
        power = (real.square() + imag.square()).reshape(g.shape[0], -1)  # (B,1,h,w) -> (B,h*w)
        total = power @ self.ac + ENERGY_FLOOR  # (B,1)
        return torch.log((power @ self.bands) / total + 1e-9)  # (B,h*w) @ (h*w,5*bands) -> (B,5*bands)


# ----------------------------------------------------------------------------------------------------
# Pixels


PIXELS_NATIVE = 32  # inputs up to this side are read pixel for pixel
PIXELS_SIDE = 16  # larger ones are average-pooled to about this side


class Pixels(Block):
    """The image itself at a chosen resolution: native up to PIXELS_NATIVE, else average-pooled by an
    integer factor to about PIXELS_SIDE (the remainder rows/columns are dropped).
    ``(B, C, H, W) -> (B, C * h * w)``."""

    def __init__(self, channels: int, input_size: tuple[int, int]):
        super().__init__()
        h, w = input_size
        self.factor = 1 if max(h, w) <= PIXELS_NATIVE else max(1, round(max(h, w) / PIXELS_SIDE))
        self.n_features = channels * (h // self.factor) * (w // self.factor)
        self.names = tuple(f"p{i}" for i in range(self.n_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.factor > 1:
            x = F.avg_pool2d(x, self.factor)  # (B,C,H,W) -> (B,C,H/f,W/f)
        return x.reshape(x.shape[0], -1)  # (B,C,h,w) -> (B,C*h*w)


BLOCKS = {"moments": Moments, "colour": ColourRegions, "spectrum": Spectrum, "bank": FilterBank, "pixels": Pixels}
COMPACT = ("moments", "colour", "spectrum", "bank")  # blocks with few, summarising features (pixels is not)
