"""Synthetic datasets that stand in for the users' photos: reaction wells, gravel, boxes, patches, arrows.

Each task renders its images with numpy and OpenCV (never torch: the demo and the runtime benchmarks
use this module) and writes the dataset format of docs/CONTRACTS.md::

    OUT/labels.csv        path (relative to the csv), one column per target, group (where meaningful)
    OUT/images/00000.png  ...

Every image is a pure function of ``(seed, index, n, size)``: it draws from its own random stream
(and its sample's or group's stream), so a dataset is reproducible byte for byte, renders in
parallel threads, and does not depend on the order the threads finish in.

Tasks (in brackets, the number of the user's account of the problem each one stands in for):

* ``assay`` (000): a round reaction well from above, its liquid coloured by a Beer-Lambert curve of
  the concentration (80..350 mg/L); the well is rotated and mirrored at random and carries
  asymmetric details (meniscus highlight, bubbles, a scratch) that turn with it; lighting varies a
  little; sensor noise. Four photos per sample; ``group`` is the sample id.
* ``gravel`` (002): irregular grey-brown particles on a round tray; ``bin0..bin4`` is the area
  fraction per size bin of the sample's size distribution (a Dirichlet draw); ``group`` is the
  distribution id, shared by several photos.
* ``box`` (003): a small bright box on clutter at a sub-pixel position ``x, y`` (source pixels,
  centre of the top-left pixel at (0, 0)); ``group`` is the quadrant ``q0..q3``.
* ``pixelstats`` (004): grayscale textured patches; ``mean, median, std`` of the saved 8-bit pixel
  values scaled to [0, 1].
* ``angle``: an arrow at an orientation ``angle`` in degrees, counter-clockwise as displayed from +x,
  in [0, 360).
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edgereg.errors import DatasetError, ShapeError, did_you_mean
from edgereg.files import atomic_path

ASSAY_RANGE = (80.0, 350.0)  # mg/L, the span of the lab instrument the assay imitates

# A rendered image: ((S, S, 3) uint8 BGR or (S, S) uint8 gray, targets in column order, group or None).
Rendered = tuple[np.ndarray, tuple[float, ...], str | None]

_SAMPLE_STREAM = 0  # random stream of a sample / group (shared by its photos)
_IMAGE_STREAM = 1  # random stream of one photo
_SUBPIXEL_BITS = 4  # cv2 drawing shift: coordinates in 1/16 pixel
_SUBPIXEL = float(1 << _SUBPIXEL_BITS)


@dataclass(frozen=True)
class SynthTask:
    """A synthetic dataset generator.

    Attributes:
        name: the task name used by ``make_dataset`` and ``edgereg synth``.
        key: random-stream id of the task (fixed, so adding a task never changes another's images).
        default_size: image side in pixels when no size is given.
        min_size: smallest side at which the task's details still render.
        columns: target columns of labels.csv, in order.
        grouped: whether labels.csv has a ``group`` column.
        summary: one line for ``edgereg synth --help``.
        render: ``render(index, n, size, seed) -> (image, targets, group)``.
    """

    name: str
    key: int  # stream id; never reuse or renumber
    default_size: int  # the side the task was designed at
    min_size: int  # below this the task's details vanish
    columns: tuple[str, ...]  # target columns, in labels.csv order
    grouped: bool  # photos share a sample/distribution/quadrant id
    summary: str  # for --help
    render: Callable[[int, int, int, int], Rendered]


def _rng(seed: int, task_key: int, stream: int, index: int) -> np.random.Generator:
    """An independent, reproducible random stream for one (task, stream, index)."""
    return np.random.default_rng([seed, task_key, stream, index])


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates ``(xx, yy)``, each (size, size) float32, x right, y down."""
    axis = np.arange(size, dtype=np.float32)
    return np.meshgrid(axis, axis)  # (S,) x (S,) -> 2 x (S, S)


def _disk_coverage(dist: np.ndarray, radius: float) -> np.ndarray:
    """Approximate area coverage in [0, 1] of each pixel by a disk, from its centre distance.

    Args:
        dist: (H, W) float32, distance of each pixel centre from the disk centre in pixels.
        radius: disk radius in pixels.
    """
    return np.clip(radius - dist + 0.5, 0.0, 1.0)


def _lerp(planes: np.ndarray, colour, alpha: np.ndarray) -> np.ndarray:
    """Blend ``colour`` over ``planes`` with per-pixel ``alpha``.

    Compositing works on planar images: numpy is several times faster broadcasting an (H, W) mask
    over a leading channel axis than over a trailing one of length 3.

    Args:
        planes: (3, H, W) float32, BGR planes.
        colour: (3,) BGR or (3, H, W) float.
        alpha: (H, W) float32 in [0, 1].
    """
    colour = np.asarray(colour, dtype=np.float32)
    if colour.ndim == 1:
        colour = colour[:, None, None]  # (3,) -> (3, 1, 1)
    return planes + (colour - planes) * alpha


def _smooth_noise(rng: np.random.Generator, size: int, *, cells: int) -> np.ndarray:
    """Low-frequency noise: a (cells, cells) random grid upsampled bicubically.

    Returns:
        (size, size) float32, roughly zero mean and unit spread.
    """
    coarse = rng.standard_normal((cells, cells), dtype=np.float32)
    return cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)


def _illumination(rng: np.random.Generator, size: int, *, gain: float, tint: float,
                  gradient: float) -> np.ndarray:
    """A lighting field: global gain, per-channel colour tint and a linear gradient.

    Args:
        gain: half-width of the uniform global gain around 1.
        tint: standard deviation of each channel's multiplier around 1.
        gradient: largest relative brightness change from the centre to an edge.

    Returns:
        (3, size, size) float32 multipliers around 1, BGR planes.
    """
    xx, yy = _grid(size)
    heading = rng.uniform(0.0, 2.0 * math.pi)
    ramp = ((xx - (size - 1) / 2) * math.cos(heading) + (yy - (size - 1) / 2) * math.sin(heading)) / (size / 2)
    field = 1.0 + rng.uniform(0.0, gradient) * ramp  # (S, S)
    scale = rng.uniform(1.0 - gain, 1.0 + gain) * (1.0 + tint * rng.standard_normal(3))  # (3,)
    return scale.astype(np.float32)[:, None, None] * field  # (3, 1, 1) * (S, S) -> (3, S, S)


def _to_uint8(image: np.ndarray, rng: np.random.Generator, *, blur: float, noise: float) -> np.ndarray:
    """Lens blur, Gaussian sensor noise, then rounding to 8 bits.

    Args:
        image: (3, H, W) float32 BGR planes or (H, W) float32 gray, values in [0, 255] before noise.
        blur: Gaussian blur sigma in pixels (0 for none).
        noise: sensor noise standard deviation in grey levels.

    Returns:
        (H, W, 3) uint8 BGR, or (H, W) uint8 for a gray input.
    """
    if image.ndim == 3:
        image = cv2.merge(list(image))  # (3, H, W) -> (H, W, 3)
    if blur > 0:
        image = cv2.GaussianBlur(image, (0, 0), blur)
    if noise > 0:
        image = image + noise * rng.standard_normal(image.shape, dtype=np.float32)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _fixed_point(points: np.ndarray) -> np.ndarray:
    """(K, 2) float pixel coordinates -> (K, 2) int32 for cv2 drawing with ``shift=_SUBPIXEL_BITS``."""
    return np.rint(np.asarray(points) * _SUBPIXEL).astype(np.int32)


def _polygon_coverage(polygons: list[np.ndarray], size: int, *, factor: int = 4) -> np.ndarray:
    """Area coverage of filled polygons, rendered ``factor`` times larger and shrunk with INTER_AREA.

    Args:
        polygons: each (K, 2) float64 vertices in pixel coordinates (centre of the top-left pixel at
            (0, 0)).
        size: output side in pixels.

    Returns:
        (size, size) float32 in [0, 1].
    """
    big = np.zeros((size * factor, size * factor), dtype=np.uint8)
    # A source point x lies at (x + 0.5) * factor - 0.5 in the enlarged canvas.
    scaled = [_fixed_point((p + 0.5) * factor - 0.5) for p in polygons]
    cv2.fillPoly(big, scaled, 255, cv2.LINE_8, _SUBPIXEL_BITS)
    return cv2.resize(big, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0


# --------------------------------------------------------------------------------------------------
# assay: a reaction well whose colour encodes the concentration

# Beer-Lambert: what reaches the camera through the liquid is white * 10 ** (-absorptivity * c).
# The reagent absorbs blue most and red least, so the liquid goes from straw yellow at 80 mg/L to
# deep red at 350 mg/L; each channel falls monotonically and exponentially (a nonlinear curve).
_ASSAY_WHITE_BGR = np.array([232.0, 238.0, 244.0])  # liquid at zero concentration, nominal light
_ASSAY_ABSORPTIVITY_BGR = np.array([0.0034, 0.0021, 0.00055])  # absorbance per mg/L
_WELL_RADIUS = 0.40  # liquid radius / image side
_WALL_WIDTH = 0.12  # well wall thickness / liquid radius
_ORACLE_RADIUS = 0.30  # the oracle averages a centred disk of this radius / image side
_PHOTOS_PER_SAMPLE = 4  # photos of one well, each rotated, mirrored and lit differently
_PLATE_BGR = np.array([196.0, 200.0, 203.0], dtype=np.float32)  # the white plate around the well
_WALL_BGR = np.array([168.0, 172.0, 176.0], dtype=np.float32)  # translucent plastic wall


def assay_colour(concentration) -> np.ndarray:
    """The generator's colour curve: the liquid's colour under nominal light.

    Args:
        concentration: scalar or (...,) array in mg/L.

    Returns:
        (..., 3) float64, BGR in [0, 255].
    """
    c = np.asarray(concentration, dtype=np.float64)[..., None]  # (...,) -> (..., 1)
    return _ASSAY_WHITE_BGR * 10.0 ** (-_ASSAY_ABSORPTIVITY_BGR * c)


def assay_oracle(images: np.ndarray) -> np.ndarray:
    """A classical colorimeter: mean colour of the well's centre, inverted through the known curve.

    It knows the generator's exact colour curve but sees the photos as they are: lighting changes,
    noise, bubbles and scratches inside the averaging disk all move its reading. The disk (radius
    0.30 of the image side, centred) stays inside the liquid of every photo, at any image size.

    Args:
        images: (N, H, W, 3) uint8, BGR, whole photos or centre crops (square, any size).

    Returns:
        (N,) float64 concentrations in mg/L, within ASSAY_RANGE.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[3] != 3 or images.dtype != np.uint8:
        raise ShapeError(f"expected images (N, H, W, 3) uint8 BGR, got {images.shape} {images.dtype}")
    _, height, width, _ = images.shape
    xx, yy = np.meshgrid(np.arange(width), np.arange(height))
    radius = _ORACLE_RADIUS * min(height, width)
    inside = (xx - (width - 1) / 2) ** 2 + (yy - (height - 1) / 2) ** 2 <= radius ** 2  # (H, W)
    mean_bgr = images[:, inside].mean(axis=1, dtype=np.float64)  # (N, P, 3) -> (N, 3)
    grid = np.linspace(*ASSAY_RANGE, 5401)  # 0.05 mg/L steps
    curve = assay_colour(grid)  # (K, 3)
    # Nearest curve point: argmin |m - c|^2 = argmin (|c|^2 - 2 m.c), an (N, K) matrix, no (N, K, 3).
    distance = (curve ** 2).sum(axis=1) - 2.0 * mean_bgr @ curve.T  # (K,) - (N, K) -> (N, K)
    return grid[np.argmin(distance, axis=1)]


@dataclass(frozen=True)
class _WellDetails:
    """Marks of one physical well, in the well's frame (liquid radius 1, y up)."""

    highlight: np.ndarray  # (K, 2) points of the meniscus highlight arc
    bubbles: np.ndarray  # (B, 3) x, y, radius
    scratch: np.ndarray | None  # (2, 2) end points, or None


def _well_details(rng: np.random.Generator) -> _WellDetails:
    start = rng.uniform(0.0, 2.0 * math.pi)
    arc = start + np.linspace(0.0, rng.uniform(0.6, 1.1), 16)
    highlight = 0.86 * np.stack([np.cos(arc), np.sin(arc)], axis=1)  # (16,) -> (16, 2)
    count = int(rng.integers(1, 5))
    where = rng.uniform(0.0, 2.0 * math.pi, count)
    reach = np.sqrt(rng.uniform(0.04, 0.6, count))
    bubbles = np.stack([reach * np.cos(where), reach * np.sin(where), rng.uniform(0.03, 0.08, count)], axis=1)
    scratch = None
    if rng.random() < 0.7:
        ends = rng.uniform(0.0, 2.0 * math.pi, 2)
        scratch = rng.uniform(0.3, 0.9, (2, 1)) * np.stack([np.cos(ends), np.sin(ends)], axis=1)
    return _WellDetails(highlight, bubbles, scratch)


def _well_to_image(points: np.ndarray, *, centre: np.ndarray, radius: float, turn: float,
                   mirrored: bool) -> np.ndarray:
    """Map (K, 2) well-frame points (radius 1, y up) to (K, 2) image pixels (y down).

    The well is mirrored (x -> -x) first, then turned counter-clockwise as displayed by ``turn``
    radians.
    """
    x = -points[:, 0] if mirrored else points[:, 0]
    y = points[:, 1]
    turned_x = math.cos(turn) * x - math.sin(turn) * y
    turned_y = math.sin(turn) * x + math.cos(turn) * y
    return np.stack([centre[0] + radius * turned_x, centre[1] - radius * turned_y], axis=1)


def _detail_masks(details: _WellDetails, size: int, *, centre, radius: float, turn: float,
                  mirrored: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Anti-aliased masks of the well's marks: (bright, dark, light), each (S, S) float32 in [0, 1]."""
    place = dict(centre=centre, radius=radius, turn=turn, mirrored=mirrored)
    bright = np.zeros((size, size), dtype=np.uint8)
    dark = np.zeros((size, size), dtype=np.uint8)
    light = np.zeros((size, size), dtype=np.uint8)
    arc = _fixed_point(_well_to_image(details.highlight, **place))
    cv2.polylines(bright, [arc], False, 255, max(1, round(0.06 * radius)), cv2.LINE_AA, _SUBPIXEL_BITS)
    centres = _well_to_image(details.bubbles[:, :2], **place)
    for (x, y), r in zip(centres, details.bubbles[:, 2] * radius):
        ring = max(1, round(0.35 * r))
        cv2.circle(dark, _fixed_point((x, y)), int(r * _SUBPIXEL), 255, ring, cv2.LINE_AA, _SUBPIXEL_BITS)
        glint = _fixed_point((x - 0.35 * r, y - 0.35 * r))
        cv2.circle(bright, glint, int(max(0.5, 0.25 * r) * _SUBPIXEL), 255, -1, cv2.LINE_AA, _SUBPIXEL_BITS)
    if details.scratch is not None:
        ends = _fixed_point(_well_to_image(details.scratch, **place))
        cv2.line(light, ends[0], ends[1], 255, 1, cv2.LINE_AA, _SUBPIXEL_BITS)
    bright = cv2.GaussianBlur(bright, (0, 0), max(0.5, 0.02 * radius))
    return bright.astype(np.float32) / 255, dark.astype(np.float32) / 255, light.astype(np.float32) / 255


def _render_assay(index: int, n: int, size: int, seed: int) -> Rendered:
    sample = index // _PHOTOS_PER_SAMPLE
    sample_rng = _rng(seed, 0, _SAMPLE_STREAM, sample)
    concentration = float(sample_rng.uniform(*ASSAY_RANGE))
    details = _well_details(sample_rng)
    rng = _rng(seed, 0, _IMAGE_STREAM, index)
    centre = (size - 1) / 2 + rng.uniform(-0.015, 0.015, 2) * size
    radius = float(_WELL_RADIUS * size * rng.uniform(0.97, 1.03))
    turn, mirrored = rng.uniform(0.0, 2.0 * math.pi), bool(rng.random() < 0.5)

    xx, yy = _grid(size)
    dist = np.hypot(xx - float(centre[0]), yy - float(centre[1]))  # (S, S) pixels from the well's centre
    image = _PLATE_BGR[:, None, None] + 3.0 * _smooth_noise(rng, size, cells=5)  # (3, 1, 1) + (S, S) -> (3, S, S)
    wall_shade = 1.0 - 0.10 * np.clip((dist - radius) / (_WALL_WIDTH * radius), 0, 1)  # (S, S)
    wall = _WALL_BGR[:, None, None] * wall_shade  # (3, 1, 1) * (S, S) -> (3, S, S)
    image = _lerp(image, wall, _disk_coverage(dist, radius * (1 + _WALL_WIDTH)))
    edge_darkening = 1.0 - 0.10 * np.clip(dist / radius, 0, 1) ** 6  # the meniscus bends light away
    liquid = assay_colour(concentration).astype(np.float32)[:, None, None] * edge_darkening  # (3, S, S)
    image = _lerp(image, liquid, _disk_coverage(dist, radius))
    bright, dark, light = _detail_masks(details, size, centre=centre, radius=radius, turn=turn,
                                        mirrored=mirrored)
    image = image * (1.0 - 0.55 * 0.5 * dark)  # bubble rims: 55 % darker at half opacity
    if details.scratch is not None:
        image = _lerp(image, (236.0, 238.0, 240.0), 0.3 * light)
    image = _lerp(image, (252.0, 252.0, 252.0), 0.65 * bright)
    image = image * _illumination(rng, size, gain=0.03, tint=0.01, gradient=0.04)
    return _to_uint8(image, rng, blur=0.6, noise=2.5), (concentration,), f"s{sample:05d}"


# --------------------------------------------------------------------------------------------------
# gravel: particles on a round tray, labelled with their size distribution

_GRAVEL_BIN_EDGES = np.array([0.030, 0.045, 0.068, 0.100, 0.150, 0.225])  # equivalent diameter / side
_GRAVEL_MAX_GROUPS = 40  # Dirichlet draws: enough distributions that held-out groups mean something
_GRAVEL_PHOTOS_PER_GROUP = 4  # at least this many photos per distribution while groups < 40
_TRAY_RADIUS = 0.47  # tray floor radius / image side


def gravel_groups(n: int) -> int:
    """Number of size distributions (groups) in a gravel dataset of ``n`` images."""
    return max(2, min(_GRAVEL_MAX_GROUPS, n // _GRAVEL_PHOTOS_PER_GROUP))


_OUTLINE_VERTICES = 10  # vertices per particle outline


def _particle_outlines(rng: np.random.Generator, diameters: np.ndarray) -> np.ndarray:
    """Irregular stones (and some smooth pebbles) of the given equivalent diameters, centred at 0.

    Args:
        diameters: (P,) float64, equivalent diameters in pixels.

    Returns:
        (P, K, 2) float64 outlines in pixels; polygon p has area pi * diameters[p]**2 / 4.
    """
    count, k = len(diameters), _OUTLINE_VERTICES
    pebble = rng.random(count) < 0.25  # rounded pebbles keep a regular outline
    jitter = np.where(pebble[:, None], 0.0, rng.uniform(-0.3, 0.3, (count, k)))
    angles = (np.arange(k) + jitter) * (2.0 * math.pi / k)  # (P, K)
    radii = np.where(pebble[:, None], 1.0, np.clip(1.0 + 0.22 * rng.standard_normal((count, k)), 0.6, 1.4))
    stretch = rng.uniform(1.0, 1.6, (count, 1))
    x = radii * np.cos(angles) * stretch  # (P, K)
    y = radii * np.sin(angles) / stretch
    turn = rng.uniform(0.0, math.pi, (count, 1))
    x, y = np.cos(turn) * x - np.sin(turn) * y, np.sin(turn) * x + np.cos(turn) * y
    area = 0.5 * np.abs((x * np.roll(y, -1, axis=1) - y * np.roll(x, -1, axis=1)).sum(axis=1))  # shoelace
    scale = diameters / 2.0 * np.sqrt(math.pi / area)  # (P,)
    return np.stack([x, y], axis=2) * scale[:, None, None]  # 2 x (P, K) -> (P, K, 2)


def _render_gravel(index: int, n: int, size: int, seed: int) -> Rendered:
    group = index % gravel_groups(n)
    fractions = _rng(seed, 2, _SAMPLE_STREAM, group).dirichlet(np.full(5, 0.8))  # area per bin
    rng = _rng(seed, 2, _IMAGE_STREAM, index)
    tray = _TRAY_RADIUS * size
    centre = (size - 1) / 2.0

    lo, hi = _GRAVEL_BIN_EDGES[:-1] * size, _GRAVEL_BIN_EDGES[1:] * size
    mean_area = math.pi / 4 * (hi ** 2 - lo ** 2) / (2 * np.log(hi / lo))  # E[area], log-uniform diameter
    expected = fractions * rng.uniform(0.5, 0.7) * math.pi * tray ** 2 / mean_area  # particles per bin
    counts = np.floor(expected).astype(int) + (rng.random(5) < expected % 1)
    bins = rng.permutation(np.repeat(np.arange(5), counts))  # drawing order: random overlaps
    diameters = np.exp(rng.uniform(np.log(lo[bins]), np.log(hi[bins])))  # (P,) log-uniform in the bin
    reach = np.sqrt(rng.random(len(bins))) * np.maximum(0.0, tray - diameters / 2)
    heading = rng.uniform(0.0, 2.0 * math.pi, len(bins))
    positions = centre + reach[:, None] * np.stack([np.cos(heading), np.sin(heading)], axis=1)  # (P, 2)
    outlines = _particle_outlines(rng, diameters)  # (P, K, 2)
    luma, brown = rng.uniform(75, 200, (len(bins), 1)), rng.random((len(bins), 1))
    tint = np.concatenate([1 - 0.30 * brown, 1 - 0.12 * brown, 1 + 0.08 * brown], axis=1)  # (P, 3) BGR
    colours = np.clip(luma * tint, 0, 255)  # (P, 3)
    bodies = _fixed_point(positions[:, None, :] + outlines)  # (P, K, 2)
    # A lighter face towards the lamp (up-left) gives each stone some relief.
    faces = _fixed_point(positions[:, None, :] + 0.55 * outlines - 0.12 * diameters[:, None, None])

    canvas = np.empty((size, size, 3), dtype=np.uint8)
    canvas[:] = (72, 74, 77)
    for body, face, colour in zip(bodies, faces, colours):
        cv2.fillPoly(canvas, [body], colour.tolist(), cv2.LINE_AA, _SUBPIXEL_BITS)
        cv2.fillPoly(canvas, [face], np.minimum(1.12 * colour, 255).tolist(), cv2.LINE_AA, _SUBPIXEL_BITS)
        cv2.polylines(canvas, [body], True, (0.7 * colour).tolist(), 1, cv2.LINE_AA, _SUBPIXEL_BITS)
    grain = 5.0 * rng.standard_normal((size, size), dtype=np.float32)
    image = canvas.transpose(2, 0, 1).astype(np.float32) + grain  # (S, S, 3) -> (3, S, S), + (S, S)
    xx, yy = _grid(size)
    outside = 1.0 - _disk_coverage(np.hypot(xx - centre, yy - centre), tray)
    image = _lerp(image, (46.0, 48.0, 52.0), outside)  # the tray's rim hides what reaches past it
    image = image * _illumination(rng, size, gain=0.05, tint=0.01, gradient=0.06)
    targets = tuple(float(f) for f in fractions)
    return _to_uint8(image, rng, blur=0.5, noise=2.0), targets, f"d{group:03d}"


# --------------------------------------------------------------------------------------------------
# box: a small bright box on clutter, at a sub-pixel position

def _box_coverage(lo: float, hi: float, size: int) -> np.ndarray:
    """Exact length of [lo, hi] inside each pixel [i - 0.5, i + 0.5]: (size,) float32 in [0, 1]."""
    centres = np.arange(size, dtype=np.float64)
    return np.clip(np.minimum(centres + 0.5, hi) - np.maximum(centres - 0.5, lo), 0.0, 1.0).astype(np.float32)


def _clutter(rng: np.random.Generator, size: int, *, max_level: float) -> np.ndarray:
    """A cluttered background: mottled texture, dim blobs and lines, all at most ``max_level``.

    Returns:
        (3, size, size) float32 BGR planes in [0, max_level].
    """
    tone = rng.uniform(50, 100) * (1 + 0.1 * rng.standard_normal(3))
    mottle = 18.0 * _smooth_noise(rng, size, cells=int(rng.integers(3, 8)))  # (S, S)
    image = tone.astype(np.float32) + mottle[..., None]  # (3,) + (S, S, 1) -> (S, S, 3)
    canvas = np.clip(image, 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(3, 9))):
        level = rng.uniform(30, max_level) * (1 + 0.08 * rng.standard_normal(3))
        colour = np.clip(level, 0, max_level).tolist()
        a, b = rng.uniform(0, size, 2), rng.uniform(0, size, 2)
        if rng.random() < 0.5:
            axes = rng.uniform(0.03, 0.12, 2) * size
            cv2.ellipse(canvas, _fixed_point(a), _fixed_point(axes), float(rng.uniform(0, 180)), 0, 360,
                        colour, -1, cv2.LINE_AA, _SUBPIXEL_BITS)
        else:
            cv2.line(canvas, _fixed_point(a), _fixed_point(b), colour, int(rng.integers(1, 3)),
                     cv2.LINE_AA, _SUBPIXEL_BITS)
    return np.minimum(canvas.transpose(2, 0, 1).astype(np.float32), max_level)  # (S, S, 3) -> (3, S, S)


def _render_box(index: int, n: int, size: int, seed: int) -> Rendered:
    rng = _rng(seed, 3, _IMAGE_STREAM, index)
    image = _clutter(rng, size, max_level=165.0)
    width, height = np.maximum(2.0, rng.uniform(0.09, 0.15, 2) * size)
    x = rng.uniform(width / 2 + 0.5, size - 1.5 - width / 2)
    y = rng.uniform(height / 2 + 0.5, size - 1.5 - height / 2)
    coverage = np.outer(_box_coverage(y - height / 2, y + height / 2, size),
                        _box_coverage(x - width / 2, x + width / 2, size))  # (S,) x (S,) -> (S, S)
    colour = rng.uniform(215, 250) * (1 + 0.03 * rng.standard_normal(3))
    image = _lerp(image, colour, coverage)
    centre = (size - 1) / 2.0
    quadrant = int(x >= centre) + 2 * int(y >= centre)  # q0 top-left, q1 top-right, q2/q3 bottom
    return _to_uint8(image, rng, blur=0.5, noise=3.0), (float(x), float(y)), f"q{quadrant}"


# --------------------------------------------------------------------------------------------------
# pixelstats: textured gray patches labelled with statistics of their own pixels

def _render_pixelstats(index: int, n: int, size: int, seed: int) -> Rendered:
    rng = _rng(seed, 4, _IMAGE_STREAM, index)
    xx, yy = _grid(size)
    u, v = xx / (size - 1) * 2 - 1, yy / (size - 1) * 2 - 1  # (S, S) in [-1, 1]
    if rng.random() < 0.35:  # an object on black, like a product photo
        image = np.zeros((size, size), dtype=np.float32)
    else:
        heading = rng.uniform(0.0, 2.0 * math.pi)
        image = rng.uniform(0, 200) + rng.uniform(0, 80) * (u * math.cos(heading) + v * math.sin(heading))
        image = image.astype(np.float32)
    for _ in range(int(rng.integers(0, 4))):
        mask = np.zeros((size, size), dtype=np.uint8)
        centre = rng.uniform(0.2, 0.8, 2) * (size - 1)
        extent = rng.uniform(0.1, 0.4, 2) * size
        shape = rng.integers(3)
        if shape == 0:
            cv2.ellipse(mask, _fixed_point(centre), _fixed_point(extent / 2), float(rng.uniform(0, 180)),
                        0, 360, 255, -1, cv2.LINE_AA, _SUBPIXEL_BITS)
        elif shape == 1:
            corners = np.array([centre - extent / 2, (centre[0] + extent[0] / 2, centre[1] - extent[1] / 2),
                                centre + extent / 2, (centre[0] - extent[0] / 2, centre[1] + extent[1] / 2)])
            cv2.fillPoly(mask, [_fixed_point(corners)], 255, cv2.LINE_AA, _SUBPIXEL_BITS)
        else:
            vertices = centre + rng.uniform(-1, 1, (int(rng.integers(3, 7)), 2)) * extent
            cv2.fillPoly(mask, [_fixed_point(vertices)], 255, cv2.LINE_AA, _SUBPIXEL_BITS)
        texture = rng.uniform(0, 255) + rng.uniform(0, 40) * rng.standard_normal((size, size))
        alpha = mask.astype(np.float32) / 255
        image = image * (1 - alpha) + texture.astype(np.float32) * alpha
    image = image + rng.uniform(0, 25) * rng.standard_normal((size, size)).astype(np.float32)
    pixels = _to_uint8(image, rng, blur=rng.uniform(0, 1.2) if rng.random() < 0.5 else 0.0, noise=0.0)
    values = pixels.astype(np.float64) / 255.0
    stats = (float(values.mean()), float(np.median(values)), float(values.std()))
    return pixels, stats, None


# --------------------------------------------------------------------------------------------------
# angle: an arrow at an orientation

def _arrow_outline(length: float, shaft: float, head_length: float, head_width: float) -> np.ndarray:
    """An arrow along +x centred at 0 (pointing right), in pixels, y down: (7, 2) float64."""
    tail, neck, tip = -length / 2, length / 2 - head_length, length / 2
    return np.array([(tail, -shaft / 2), (neck, -shaft / 2), (neck, -head_width / 2), (tip, 0.0),
                     (neck, head_width / 2), (neck, shaft / 2), (tail, shaft / 2)])


def _render_angle(index: int, n: int, size: int, seed: int) -> Rendered:
    rng = _rng(seed, 5, _IMAGE_STREAM, index)
    image = _clutter(rng, size, max_level=150.0)
    angle = float(rng.uniform(0.0, 360.0))
    length = rng.uniform(0.55, 0.75) * size
    outline = _arrow_outline(length, rng.uniform(0.07, 0.11) * length, rng.uniform(0.25, 0.35) * length,
                             rng.uniform(0.28, 0.4) * length)
    t = math.radians(angle)
    # Counter-clockwise as displayed from +x: the tip points along (cos t, -sin t) in pixels (y down).
    rotation = np.array([[math.cos(t), math.sin(t)], [-math.sin(t), math.cos(t)]])
    centre = (size - 1) / 2 + rng.uniform(-0.06, 0.06, 2) * size
    coverage = _polygon_coverage([outline @ rotation.T + centre], size)
    bright = rng.random() < 0.5
    colour = (rng.uniform(200, 250) if bright else rng.uniform(5, 30)) * (1 + 0.05 * rng.standard_normal(3))
    image = _lerp(image, colour, coverage)
    return _to_uint8(image, rng, blur=0.5, noise=3.0), (angle % 360.0,), None


# --------------------------------------------------------------------------------------------------
# count: particles in a round dish

_COUNT_MAX = 20  # particles per photo, 0..this
_DISH_RADIUS = 0.46  # dish radius / image side
_PARTICLE_ZONE = 0.36  # particle centres lie within this radius / image side (inside the dish)


def _render_count(index: int, n: int, size: int, seed: int) -> Rendered:
    rng = _rng(seed, 6, _IMAGE_STREAM, index)
    xx, yy = _grid(size)
    centre = (size - 1) / 2.0
    ground = rng.uniform(40, 90)
    image = np.full((3, size, size), ground, dtype=np.float32)  # a plain dark bench
    dish = _disk_coverage(np.hypot(xx - centre, yy - centre), _DISH_RADIUS * size)
    image = _lerp(image, rng.uniform(190, 225) * (1 + 0.03 * rng.standard_normal(3)), dish)
    wanted = int(rng.integers(0, _COUNT_MAX + 1))
    placed: list[tuple[float, float, float]] = []  # (x, y, radius) px; particles never touch
    for _ in range(50 * (wanted + 1)):
        if len(placed) == wanted:
            break
        radius = rng.uniform(0.035, 0.05) * size
        reach = _PARTICLE_ZONE * size * math.sqrt(rng.random())
        heading = rng.uniform(0.0, 2.0 * math.pi)
        x, y = centre + reach * math.cos(heading), centre + reach * math.sin(heading)
        if all(math.hypot(x - px, y - py) > radius + pr + 1.5 for px, py, pr in placed):
            placed.append((x, y, radius))
    for x, y, radius in placed:
        colour = rng.uniform(20, 70) * (1 + 0.05 * rng.standard_normal(3))
        image = _lerp(image, colour, _disk_coverage(np.hypot(xx - x, yy - y), radius))
    return _to_uint8(image, rng, blur=0.5, noise=3.0), (float(len(placed)),), None


# --------------------------------------------------------------------------------------------------

TASKS: dict[str, SynthTask] = {
    task.name: task for task in (
        SynthTask("assay", 0, 128, 32, ("concentration",), True,
                  "reaction well whose colour encodes a concentration in 80..350 mg/L", _render_assay),
        SynthTask("gravel", 2, 128, 48, tuple(f"bin{i}" for i in range(5)), True,
                  "particles on a tray, labelled with a 5-bin size distribution", _render_gravel),
        SynthTask("box", 3, 64, 16, ("x", "y"), True,
                  "a small bright box on clutter at a sub-pixel position (x, y)", _render_box),
        SynthTask("pixelstats", 4, 28, 8, ("mean", "median", "std"), False,
                  "gray textured patches, labelled with their pixels' mean, median, std", _render_pixelstats),
        SynthTask("angle", 5, 64, 16, ("angle",), False,
                  "an arrow at an orientation in degrees, counter-clockwise from +x", _render_angle),
        SynthTask("count", 6, 64, 32, ("count",), False,
                  "dark particles in a round dish, labelled with how many there are", _render_count),
    )
}


def get_task(name: str) -> SynthTask:
    """The task called ``name``; DatasetError with a did-you-mean for an unknown name."""
    if name not in TASKS:
        raise DatasetError(f"unknown synthetic task {name!r}{did_you_mean(name, TASKS)}; "
                           f"choose one of: {', '.join(TASKS)}")
    return TASKS[name]


def render(task: str, index: int, *, n: int, seed: int = 0, size: int | None = None) -> Rendered:
    """Render image ``index`` of a dataset of ``n`` images without writing anything.

    Returns:
        (image, targets, group): image (S, S, 3) uint8 BGR, or (S, S) uint8 gray for pixelstats;
        targets in the order of ``TASKS[task].columns``; group (str) or None.
    """
    spec = get_task(task)
    return spec.render(index, n, size or spec.default_size, seed)


def make_dataset(task: str, out_dir: str | os.PathLike, *, n: int, seed: int = 0, size: int | None = None,
                 overwrite: bool = False, threads: int | None = None) -> Path:
    """Render a synthetic dataset and write it in edgereg's dataset format.

    Writes ``out_dir/images/NNNNN.png`` and, last, ``out_dir/labels.csv`` (header ``path``, the
    task's target columns, then ``group`` for grouped tasks), so an interrupted run leaves no
    labels.csv. Images of an earlier, larger dataset in the same folder are left in place but are
    not listed.

    Args:
        task: one of ``TASKS``: assay, gravel, box, pixelstats, angle, count.
        out_dir: folder to write into (created).
        n: number of images, >= 1.
        seed: random seed, >= 0; the same seed, n and size give the same bytes.
        size: image side in pixels (square images); the task's default when None.
        overwrite: replace an existing labels.csv in ``out_dir``.
        threads: rendering threads (default: one per core).

    Returns:
        The path of labels.csv.

    Raises:
        DatasetError: unknown task, bad n/seed/size, an existing dataset without ``overwrite``, or
            an unwritable folder.
    """
    spec = get_task(task)
    size = spec.default_size if size is None else size
    if not isinstance(n, int) or n < 1:
        raise DatasetError(f"n must be a positive number of images, got {n!r}; e.g. --n 2000")
    if not isinstance(seed, int) or seed < 0:
        raise DatasetError(f"seed must be an integer >= 0, got {seed!r}")
    if not isinstance(size, int) or not spec.min_size <= size <= 4096:
        raise DatasetError(f"size for {task!r} must be an integer in {spec.min_size}..4096 pixels, got "
                           f"{size!r}; the default is {spec.default_size}")
    root = Path(out_dir)
    csv_path = root / "labels.csv"
    if csv_path.exists() and not overwrite:
        raise DatasetError(f"'{csv_path}' already exists; choose a new folder or pass --overwrite")
    try:
        (root / "images").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DatasetError(f"cannot create '{root / 'images'}': {exc.strerror or exc}; "
                           f"choose a writable folder") from None
    digits = max(5, len(str(n - 1)))

    def write_one(index: int) -> tuple[str, tuple[float, ...], str | None]:
        image, targets, group = spec.render(index, n, size, seed)
        relative = f"images/{index:0{digits}d}.png"
        ok, encoded = cv2.imencode(".png", image)
        if not ok:  # pragma: no cover - PNG encoding of a uint8 array does not fail
            raise DatasetError(f"OpenCV could not encode image {index} as PNG")
        (root / relative).write_bytes(encoded.tobytes())
        return relative, targets, group

    workers = threads or max(1, os.cpu_count() or 1)
    try:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="edgereg-synth") as pool:
            rows = list(pool.map(write_one, range(n)))
    except OSError as exc:
        raise DatasetError(f"cannot write images under '{root}': {exc.strerror or exc}; "
                           f"check the free space and permissions") from None

    header = ["path", *spec.columns] + (["group"] if spec.grouped else [])
    with atomic_path(csv_path, temp_name="labels.csv.partial") as partial, \
            open(partial, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for relative, targets, group in rows:
            writer.writerow([relative, *(repr(float(t)) for t in targets)] + ([group] if spec.grouped else []))
    return csv_path
