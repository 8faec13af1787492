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
tiles       moments and spectrum of each cell of a 4 x 4 grid, averaged over    mixtures of
            the cells (linear in the proportions of a mixture)                 materials
template    per labelled point: the sub-pixel peak (u, v) and height of the NCC    positions
            map with a template learned from the training photos
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
# Floors under the logs of energies, near the quantization noise of 8-bit pixels ((1/255)^2 / 12 =
# 1.3e-6 in [0, 1] units): below them a log would read float rounding, which ONNX Runtime and torch
# (and the C backend) sum in different orders, and a readout would amplify the difference.
ENERGY_FLOOR = 1e-6  # absolute, for filter energies and variances of pixel values in [0, 1]
SHARE_FLOOR = 1e-6  # relative, for a band's share of the total spectral power


class Block(nn.Module):
    """Base of the feature blocks: ``forward(intensity (B, C, H, W)) -> (B, n_features)``."""

    n_features: int = 0
    names: tuple[str, ...] = ()

    def fit(self, intensity: torch.Tensor, targets: torch.Tensor | None = None) -> None:
        """Set data-dependent constants from training intensities ``(N, C, H, W)`` and, for blocks
        that learn from labels, the encoded targets ``(N, n_outputs)`` (default: nothing to set)."""


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

    def fit(self, intensity: torch.Tensor, targets: torch.Tensor | None = None) -> None:
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
        sides = [min(input_size) // 2 ** i for i in range(self.levels)]
        self.fits = tuple(side >= side_kernel for side, side_kernel in zip(sides, [side] * self.levels))
        self.n_features = 1 + self.levels * padded.shape[0]
        self.names = ("log_var",) + tuple(f"l{level}_s{s}_f{f}" for level in range(self.levels)
                                          for s in range(len(self.SIGMAS)) for f in range(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = (x * self.gray).sum(dim=1, keepdim=True)  # (B,C,H,W) -> (B,1,H,W)
        var = (g - g.mean(dim=(2, 3), keepdim=True)).square().mean(dim=(1, 2, 3))  # (B,)
        features = [torch.log(var + ENERGY_FLOOR).unsqueeze(1)]
        level = g
        for i in range(self.levels):
            if self.fits[i]:
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
        # the spectrum is computed transposed, (w, h), so that every matrix product has its constant
        # on the right (what the C backend lowers); the band masks are laid out to match
        transposed = [m.reshape(h, w).T.reshape(-1) for m in masks + [ac]]
        for name, value in (("ch", ch), ("sh", sh), ("cw", cw), ("sw", sw), ("window", window),
                            ("bands", np.stack(transposed[:-1], axis=1)), ("ac", transposed[-1][:, None])):
            self.register_buffer(name, torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32)))
        self.register_buffer("gray", torch.full((1, channels, 1, 1), 1.0 / channels))
        self.n_features = len(masks)
        self.names = tuple(f"{s}_b{b}" for s in ("all", "s0", "s45", "s90", "s135") for b in range(SPECTRUM_BANDS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = (x * self.gray).sum(dim=1, keepdim=True)  # (B,C,H,W) -> (B,1,H,W)
        if self.factor > 1:
            g = F.avg_pool2d(g, self.factor)  # (B,1,H,W) -> (B,1,h,w)
        g = (g - g.mean(dim=(2, 3), keepdim=True)) * self.window
        # X = (C_h - i S_h) g (C_w - i S_w) with symmetric C, S: rows first, then (transposed) columns
        a, b = g @ self.cw, g @ self.sw  # (B,1,h,w) @ (w,w) -> (B,1,h,w)
        a_t, b_t = a.transpose(2, 3), b.transpose(2, 3)  # (B,1,w,h)
        real = a_t @ self.ch - b_t @ self.sh  # (B,1,w,h) @ (h,h) -> (B,1,w,h): Re X transposed
        imag = a_t @ self.sh + b_t @ self.ch
        power = (real.square() + imag.square()).reshape(g.shape[0], -1)  # (B,1,w,h) -> (B,w*h)
        total = power @ self.ac + ENERGY_FLOOR  # (B,1)
        return torch.log((power @ self.bands) / total + SHARE_FLOOR)  # (B,h*w) @ (h*w,5*bands) -> (B,5*bands)


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


TILE_GRID = 4  # tiles per side


class Tiles(Block):
    """Moments and spectrum of every tile of a TILE_GRID x TILE_GRID grid, averaged over the tiles.

    For a photo that is a mixture of materials, each pure tile shows one material's features and
    their average is the mixture's composition times those features: linear in the proportions,
    which a linear readout inverts (the whole image's spectrum is not: the materials' spectra add
    before the log). The remainder rows/columns of the grid are dropped.
    ``(B, C, H, W) -> (B, F_moments + F_spectrum)`` of one tile.
    """

    def __init__(self, channels: int, input_size: tuple[int, int]):
        super().__init__()
        h, w = input_size
        self.grid = TILE_GRID if min(h, w) >= 8 * TILE_GRID else max(1, min(h, w) // 8)
        self.tile = (h // self.grid, w // self.grid)
        self.parts = nn.ModuleList([Moments(channels, self.tile), Spectrum(channels, self.tile)])
        self.n_features = sum(p.n_features for p in self.parts)
        self.names = tuple(f"tile_{n}" for p in self.parts for n in p.names)

    def _tiles(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        g, (th, tw) = self.grid, self.tile
        x = x[:, :, :g * th, :g * tw].reshape(b, c, g, th, g, tw)  # (B,C,H,W) -> (B,C,g,th,g,tw)
        return x.permute(0, 2, 4, 1, 3, 5).reshape(b * g * g, c, th, tw)  # -> (B*g*g,C,th,tw)

    def fit(self, intensity: torch.Tensor, targets: torch.Tensor | None = None) -> None:
        tiles = self._tiles(intensity)
        for part in self.parts:
            part.fit(tiles)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        tiles = self._tiles(x)
        features = torch.cat([part(tiles) for part in self.parts], dim=1)  # (B*g*g, F)
        return features.reshape(b, self.grid * self.grid, -1).mean(dim=1)  # (B*g*g,F) -> (B,g*g,F) -> (B,F)


TEMPLATE_SIDES = (1 / 8, 1 / 5, 1 / 3)  # template sides tried, as fractions of the shorter image side
PEAK_BAND = 0.05  # NCC values within this of the map's maximum form the sub-pixel centroid


class Template(Block):
    """Normalized cross-correlation with a template learned from the training photos, per point.

    For coordinate targets (pairs u, v in [0, 1] of the input): :meth:`fit` cuts a window around
    every labelled point of the training images (bilinear, sub-pixel), averages them into one
    template per point, and keeps the side (of TEMPLATE_SIDES) whose matching is most accurate on
    the training rows. ``forward`` computes the NCC map of the gray image with each template
    ("valid": every position where the template fits), then the centroid of the map's values within
    PEAK_BAND of its maximum: a sub-pixel peak with no ArgMax (C-friendly). Features per point:
    ``u, v`` of the peak and the peak's NCC. ``(B, C, H, W) -> (B, 3 * points)``.
    The template lives in a fixed ``side_max`` square; a mask selects the chosen side.
    """

    def __init__(self, channels: int, input_size: tuple[int, int], points: int = 1):
        super().__init__()
        h, w = input_size
        self.points = points
        sides = sorted({max(5, int(round(f * min(h, w))) | 1) for f in TEMPLATE_SIDES})
        self.sides = tuple(s for s in sides if s < min(h, w)) or (max(3, (min(h, w) // 2) | 1),)
        self.side_max = max(self.sides)
        k = self.side_max
        self.register_buffer("gray", torch.full((1, channels, 1, 1), 1.0 / channels))
        self.register_buffer("templates", torch.zeros(points, 1, k, k))  # zero mean, unit norm, masked
        self.register_buffer("mask", torch.ones(1, 1, k, k))  # 1 inside the chosen side
        self.register_buffer("count", torch.tensor(float(k * k)))
        ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                                indexing="ij")
        # zero-padded "same" maps: (i, j) is the window centred on input pixel (i, j); u = (x + 0.5) / W
        self.register_buffer("grid_u", ((xs + 0.5) / w).reshape(1, 1, -1))  # (1,1,H*W)
        self.register_buffer("grid_v", ((ys + 0.5) / h).reshape(1, 1, -1))
        self.n_features = 3 * points
        self.names = tuple(f"p{p}_{n}" for p in range(points) for n in ("u", "v", "ncc"))

    def ncc(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, points, H, W) normalized cross-correlation maps (zero padding: an
        object at the border is still found, matched on the part of the template inside the frame)."""
        pad = self.side_max // 2
        g = (x * self.gray).sum(dim=1, keepdim=True)  # (B,1,H,W)
        total = F.conv2d(g, self.mask, padding=pad)  # (B,1,H,W) window sums
        energy = F.conv2d(g.square(), self.mask, padding=pad)
        spread = (energy - total.square() / self.count).clamp_min(1e-12).sqrt()  # window std * sqrt(n)
        return F.conv2d(g, self.templates, padding=pad) / spread  # zero-mean template: the window mean drops out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.ncc(x)
        b = maps.shape[0]
        flat = maps.reshape(b, self.points, -1)  # (B,P,oh,ow) -> (B,P,oh*ow)
        peak = flat.max(dim=2, keepdim=True).values  # (B,P,1)
        weights = torch.relu(flat - peak + PEAK_BAND)  # (B,P,oh*ow)
        total = weights.sum(dim=2, keepdim=True) + 1e-12
        u = (weights * self.grid_u).sum(dim=2, keepdim=True) / total
        v = (weights * self.grid_v).sum(dim=2, keepdim=True) / total
        return torch.cat([u, v, peak], dim=2).reshape(b, -1)  # (B,P,3) -> (B,3P)

    def _set(self, templates: torch.Tensor, side: int) -> None:
        k = self.side_max
        off = (k - side) // 2
        mask = torch.zeros(1, 1, k, k)
        mask[..., off:off + side, off:off + side] = 1.0
        self.mask.copy_(mask)
        self.count.fill_(float(side * side))
        self.templates.copy_(templates)

    @torch.no_grad()
    def fit(self, intensity: torch.Tensor, targets: torch.Tensor | None = None) -> None:
        if targets is None or targets.shape[1] != 2 * self.points:
            return
        n, _, h, w = intensity.shape
        g = (intensity * self.gray).sum(dim=1, keepdim=True)  # (N,1,H,W)
        k = self.side_max
        offsets = torch.arange(k, dtype=torch.float32) - (k - 1) / 2
        best = None
        sample = torch.arange(n)[: min(n, 400)]
        for side in self.sides:
            templates = torch.zeros(self.points, 1, k, k)
            off = (k - side) // 2
            for p in range(self.points):
                cx = targets[:, 2 * p].float() * w - 0.5  # (N,) input pixels
                cy = targets[:, 2 * p + 1].float() * h - 0.5
                gx = (cx[:, None, None] + offsets[None, None, :]) / (w - 1) * 2 - 1  # (N,1,k) in [-1, 1]
                gy = (cy[:, None, None] + offsets[None, :, None]) / (h - 1) * 2 - 1  # (N,k,1)
                grid = torch.stack([gx.expand(n, k, k), gy.expand(n, k, k)], dim=3)  # (N,k,k,2)
                windows = F.grid_sample(g, grid, mode="bilinear", padding_mode="border", align_corners=True)
                mean = windows.mean(dim=0)[0]  # (N,1,k,k) -> (k,k)
                inner = torch.zeros(k, k)
                inner[off:off + side, off:off + side] = mean[off:off + side, off:off + side]
                inner[off:off + side, off:off + side] -= inner[off:off + side, off:off + side].mean()
                templates[p, 0] = inner / inner.norm().clamp_min(1e-12)
            self._set(templates, side)
            found = self.forward(intensity[sample]).reshape(len(sample), self.points, 3)[..., :2]  # (S,P,2)
            error = (found.reshape(len(sample), -1) - targets[sample].float()).square().mean().item()
            if best is None or error < best[0]:
                best = (error, templates.clone(), side)
        self._set(best[1], best[2])


BLOCKS = {"moments": Moments, "colour": ColourRegions, "spectrum": Spectrum, "bank": FilterBank, "tiles": Tiles,
          "template": Template, "pixels": Pixels}
POINT_BLOCKS = ("template",)  # blocks for coordinate targets only (built with the number of points)
# blocks with few, summarising features (pixels is not)
COMPACT = ("moments", "colour", "spectrum", "bank", "tiles", "template")
