"""Real-photograph datasets for ``benchmarks/accuracy.py --real``, and their classical baselines.

The photographs are the ones scikit-image ships inside its wheel (``skimage/data/*.png|jpg``: read
from the installed package's folder with OpenCV, never downloaded; ``pip install edgereg[bench]``).
Four task classes, each written in edgereg's dataset format (labels.csv + PNGs), train and test
drawn from *different* photos or parts of photos, and each with the classical reader of its field:

* ``pixelstats``: 28x28 gray patches of natural photos, targets mean / median / std of the 8-bit
  values in [0, 1]. Train patches from the left 70 % of each photo, test patches from the right
  30 %. Baseline: the seed paper's Base net (``base_seed004``) trained with the same budget. Noise
  floor: none, the targets are exact functions of the pixels.
* ``texture``: apparent texture scale. A 64x64 patch shows a (64 d)-pixel square of a texture photo
  shrunk by d in 1..3; training uses 9 levels (1, 1.25, .., 3) from the left 52 % of each photo,
  the test the 8 levels between them (1.125, .., 2.875) from the right 48 %. (Not top/bottom: the
  grass and gravel photos are taken at an angle, so their stones and blades shrink towards the
  top; a row split would give the test a different apparent scale for the same zoom.) Baseline:
  ridge regression on log band powers of the FFT (12 log-spaced radial bands,
  contrast-normalized). Noise floor: the perspective within a photo (the same zoom shows smaller
  grains at the top than at the bottom) makes the label only an approximate function of the
  patch; estimated as the RMSE of the FFT reader trained and tested on the *same* levels from
  the test columns (no interpolation, no unseen parts).
* ``assay``: a white plate with a well of liquid whose colour follows Beer-Lambert for 80..350
  mg/L, on a background cut from a real photo, under per-photo lighting: exposure, white balance,
  a gradient, and a camera tone curve whose gamma drifts per photo. Test photos use backgrounds
  from other photos and wider lighting. Baselines: the colour ratio well/plate with the known
  absorptivities, and a ridge regression on the well/plate log-ratios. Noise floor: the ratio
  reader that knows the absorptivities and the exact nominal tone curve, on noise-free renders: what
  the per-photo gamma drift alone leaves.
* ``coords``: a coin cut from ``coins.png`` (24 different coins, shrunk, rotated, relit) pasted at a
  sub-pixel position on a 64x64 crop of another photo; x, y of its centre (pixel centres at integer
  coordinates). Training in quadrants q0-q2, the test only in q3. Baseline: normalized
  cross-correlation template matching with the mean coin, refined to sub-pixel by a parabola fit.
  Noise floor: the same matcher given each test image's exact coin template (an oracle).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import cv2
import numpy as np

PHOTOS_TRAIN = ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png", "camera.png")
PHOTOS_TEST = ("ihc.png", "retina.jpg", "coins.png", "motorcycle_right.png", "moon.png", "page.png")
BACKGROUNDS_TEST = ("ihc.png", "retina.jpg", "motorcycle_right.png", "page.png", "hubble_deep_field.jpg")
# textures with a characteristic scale (bricks, blades, stones); not the moon: its craters follow
# a power law of sizes, so a 3x zoom of its surface looks like another part of it (an FFT reader
# is no better than the mean there) and the label is not a property of the patch
TEXTURES = ("brick.png", "grass.png", "gravel.png")
PIXELSTATS_PHOTOS = PHOTOS_TRAIN + PHOTOS_TEST + ("brick.png", "grass.png", "gravel.png", "moon.png")
ASSAY_WHITE = np.array([0.93, 0.95, 0.97])  # linear RGB of the liquid at zero concentration
ASSAY_ABSORPTIVITY = np.array([0.00055, 0.0021, 0.0034])  # per mg/L, R G B (blue absorbs most)
ASSAY_RANGE = (80.0, 350.0)
TEXTURE_LEVELS = tuple(1.0 + 0.25 * i for i in range(9))
TEXTURE_TEST_LEVELS = tuple(1.125 + 0.25 * i for i in range(8))


def data_dir() -> Path:
    """The folder of photographs inside the installed scikit-image wheel."""
    try:
        import skimage
    except ImportError:  # pragma: no cover - the bench extra installs it
        raise SystemExit("the real-photo benchmark needs scikit-image: pip install 'edgereg[bench]'") from None
    return Path(skimage.__file__).parent / "data"


def photo(name: str) -> np.ndarray:
    """(H, W, 3) uint8 BGR of a photograph shipped in scikit-image's wheel (gray ones as 3 equal planes)."""
    path = data_dir() / name
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise SystemExit(f"{path} is not in the installed scikit-image; reinstall it: pip install 'edgereg[bench]'")
    return image


def write_dataset(out: Path, rows: list[tuple[np.ndarray, tuple, str | None]], columns: tuple[str, ...]) -> Path:
    """Write PNGs and labels.csv (path, columns..., group when any row has one)."""
    (out / "images").mkdir(parents=True, exist_ok=True)
    grouped = any(group is not None for _, _, group in rows)
    with open(out / "labels.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", *columns] + (["group"] if grouped else []))
        for i, (image, values, group) in enumerate(rows):
            relative = f"images/{i:05d}.png"
            cv2.imwrite(str(out / relative), image)
            writer.writerow([relative, *(repr(float(v)) for v in values)] + ([group] if grouped else []))
    return out


def read_dataset(root: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(images (N, H, W, 3) uint8 BGR, targets (N, T) float64, column names)."""
    with open(root / "labels.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        columns = [c for c in reader.fieldnames if c not in ("path", "group")]
        rows = list(reader)
    images = np.stack([cv2.imread(str(root / r["path"]), cv2.IMREAD_COLOR) for r in rows])
    return images, np.array([[float(r[c]) for c in columns] for r in rows]), columns


# --------------------------------------------------------------------------------------------------
# pixel statistics


def pixelstats_rows(n: int, *, test: bool, seed: int) -> list:
    rng = np.random.default_rng(seed)
    grays = [cv2.cvtColor(photo(name), cv2.COLOR_BGR2GRAY) for name in PIXELSTATS_PHOTOS]
    rows = []
    for _ in range(n):
        gray = grays[rng.integers(len(grays))]
        scale = rng.uniform(1.0, 3.0)  # patches of 28..84 source pixels, shrunk to 28
        side = int(round(28 * scale))
        height, width = gray.shape
        split = int(0.7 * width)
        lo, hi = (split, width - side) if test else (0, split - side)
        x = int(rng.integers(lo, max(lo + 1, hi)))
        y = int(rng.integers(0, height - side))
        patch = cv2.resize(gray[y:y + side, x:x + side], (28, 28), interpolation=cv2.INTER_AREA)
        values = patch.astype(np.float64) / 255.0
        rows.append((patch, (values.mean(), np.median(values), values.std()), None))
    return rows


# --------------------------------------------------------------------------------------------------
# texture scale


def texture_rows(levels, per_level: int, *, test: bool, seed: int, side: int = 64) -> list:
    rng = np.random.default_rng(seed)
    textures = [cv2.cvtColor(photo(name), cv2.COLOR_BGR2GRAY) for name in TEXTURES]
    rows = []
    for level in levels:
        for _ in range(per_level):
            texture = textures[rng.integers(len(textures))]
            height, width = texture.shape
            region = int(round(side * level))
            # train from the left 52 % of the photo, test from the right 48 %: a split across
            # columns, because the grass and gravel photos recede upwards (their apparent scale
            # changes with the row), and a top/bottom split would make the test ask for a scale the
            # same zoom does not have in the training rows
            left_lo, left_hi = (int(0.52 * width), width - region) if test else (0, int(0.52 * width) - region)
            x = int(rng.integers(left_lo, max(left_lo + 1, left_hi + 1)))
            y = int(rng.integers(0, height - region + 1))
            patch = cv2.resize(texture[y:y + region, x:x + region], (side, side), interpolation=cv2.INTER_AREA)
            patch = np.rot90(patch, int(rng.integers(4))).copy()
            rows.append((patch, (level,), f"level{level:.3f}"))
    return rows


def band_powers(images: np.ndarray, bands: int = 12) -> np.ndarray:
    """(N, bands) log power of the (windowed, mean-removed) gray image in log-spaced radial bands,
    normalized by the total power (contrast-invariant): the classical texture-scale features."""
    n, height, width = images.shape[:3]
    gray = images.astype(np.float64).mean(axis=3) if images.ndim == 4 else images.astype(np.float64)
    window = np.outer(np.hanning(height), np.hanning(width))
    fy, fx = np.meshgrid(np.fft.fftfreq(height), np.fft.fftfreq(width), indexing="ij")
    radius = np.hypot(fx, fy)
    edges = np.geomspace(1.0 / max(height, width), 0.5, bands + 1)
    out = np.empty((n, bands))
    for i in range(n):
        plane = (gray[i] - gray[i].mean()) * window
        power = np.abs(np.fft.fft2(plane)) ** 2
        total = power[radius > 0].sum() + 1e-9
        for b in range(bands):
            ring = (radius >= edges[b]) & (radius < edges[b + 1])
            out[i, b] = np.log(power[ring].sum() / total + 1e-9)
    return out


def ridge_fit_predict(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, *, alpha: float = 1e-3,
                      quadratic: bool = True) -> np.ndarray:
    """Ridge regression (standardized features, plus their squares when ``quadratic``)."""
    def expand(x):
        return np.hstack([x, x ** 2]) if quadratic else x

    mean, std = train_x.mean(axis=0), train_x.std(axis=0) + 1e-9
    a, b = expand((train_x - mean) / std), expand((test_x - mean) / std)
    a_mean, a_std = a.mean(axis=0), a.std(axis=0) + 1e-9
    a, b = (a - a_mean) / a_std, (b - a_mean) / a_std
    a1, b1 = np.hstack([a, np.ones((len(a), 1))]), np.hstack([b, np.ones((len(b), 1))])
    w = np.linalg.solve(a1.T @ a1 + alpha * len(a1) * np.eye(a1.shape[1]), a1.T @ train_y)
    return b1 @ w


# --------------------------------------------------------------------------------------------------
# colour assay


def _tone(linear: np.ndarray, gamma: float) -> np.ndarray:
    """Camera tone curve: linear radiance in [0, 1] -> encoded value in [0, 1]."""
    return np.clip(linear, 0.0, 1.0) ** (1.0 / gamma)


def assay_render(concentration: float, background: np.ndarray, rng: np.random.Generator, *, wide: bool,
                 noise: bool = True, size: int = 96) -> tuple[np.ndarray, float]:
    """One photo of a well (BGR uint8, size x size) and the per-photo gamma it was taken with."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    centre = (size - 1) / 2 + rng.uniform(-0.02, 0.02, 2) * size
    r = np.hypot(xx - centre[0], yy - centre[1])
    plate_r, well_r = 0.44 * size * rng.uniform(0.97, 1.03), 0.26 * size * rng.uniform(0.95, 1.05)
    # background: a real photo crop, in linear light
    bg = (background[..., ::-1].astype(np.float64) / 255.0) ** 2.2  # RGB linear
    plate = np.array([0.82, 0.83, 0.84]) * rng.uniform(0.97, 1.03, 3)
    liquid = ASSAY_WHITE * 10.0 ** (-ASSAY_ABSORPTIVITY * concentration) * plate / 0.83
    image = bg.copy()
    plate_alpha = np.clip(plate_r - r + 0.5, 0, 1)[..., None]
    image = image * (1 - plate_alpha) + plate * plate_alpha
    well_alpha = np.clip(well_r - r + 0.5, 0, 1)[..., None]
    edge = 1.0 - 0.08 * np.clip(r / well_r, 0, 1)[..., None] ** 6
    image = image * (1 - well_alpha) + liquid * edge * well_alpha
    # lighting: exposure, white balance, gradient (all multiplicative in linear light)
    spread = 2.0 if wide else 1.0
    exposure = rng.uniform(1 - 0.15 * spread, 1 + 0.15 * spread)
    balance = 1 + 0.06 * spread * rng.standard_normal(3)
    heading = rng.uniform(0, 2 * math.pi)
    ramp = ((xx - size / 2) * math.cos(heading) + (yy - size / 2) * math.sin(heading)) / (size / 2)
    gradient = 1 + rng.uniform(0, 0.06 * spread) * ramp
    image = image * exposure * balance * gradient[..., None] * 0.7
    gamma = 2.2 * math.exp(rng.normal(0, 0.012 * spread))  # the camera's tone curve drifts per photo
    encoded = _tone(image, gamma) * 255.0
    if noise:
        encoded = encoded + rng.normal(0, 1.5, encoded.shape)
        encoded = cv2.GaussianBlur(encoded, (0, 0), 0.5)
    return np.clip(np.rint(encoded[..., ::-1]), 0, 255).astype(np.uint8), gamma


def assay_rows(n: int, *, test: bool, seed: int) -> list:
    rng = np.random.default_rng(seed)
    photos = [photo(name) for name in (BACKGROUNDS_TEST if test else PHOTOS_TRAIN)]
    rows = []
    for i in range(n):
        source = photos[rng.integers(len(photos))]
        y, x = int(rng.integers(0, source.shape[0] - 96)), int(rng.integers(0, source.shape[1] - 96))
        concentration = float(rng.uniform(*ASSAY_RANGE))
        image, _ = assay_render(concentration, source[y:y + 96, x:x + 96], rng, wide=test)
        rows.append((image, (concentration,), f"s{i:05d}"))
    return rows


def _disk_means(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(well RGB, plate RGB) mean encoded values in [0, 1] of (N, S, S, 3) BGR renders."""
    size = images.shape[1]
    yy, xx = np.mgrid[0:size, 0:size]
    r = np.hypot(xx - (size - 1) / 2, yy - (size - 1) / 2) / size
    well, plate = r < 0.18, (r > 0.33) & (r < 0.41)
    rgb = images[..., ::-1].astype(np.float64) / 255.0
    return rgb[:, well].mean(axis=1), rgb[:, plate].mean(axis=1)


def assay_ratio_reader(images: np.ndarray, *, gamma: float = 2.2) -> np.ndarray:
    """Concentration from absorbances -log10(well / plate) per channel with the known absorptivities
    (least squares through the zero-concentration offset), after undoing the nominal tone curve."""
    well, plate = _disk_means(images)
    absorbance = -np.log10(np.maximum(well, 1e-4) ** gamma / np.maximum(plate, 1e-4) ** gamma)  # (N, 3)
    offset = -np.log10(ASSAY_WHITE / 0.83)  # the liquid's absorbance at zero concentration, per channel
    a = absorbance - offset
    return np.clip(a @ ASSAY_ABSORPTIVITY / (ASSAY_ABSORPTIVITY @ ASSAY_ABSORPTIVITY), *ASSAY_RANGE)


def assay_log_ratio_features(images: np.ndarray) -> np.ndarray:
    well, plate = _disk_means(images)
    return np.log(np.maximum(well, 1e-4)) - np.log(np.maximum(plate, 1e-4))


def assay_floor(n: int, *, seed: int) -> float:
    """RMSE of the ratio reader on noise-free renders under the test lighting: the part of the
    error the per-photo tone-curve drift alone leaves to a reader with one reference."""
    rng = np.random.default_rng(seed)
    background = np.full((96, 96, 3), 128, np.uint8)
    truth, images = [], []
    for _ in range(n):
        c = float(rng.uniform(*ASSAY_RANGE))
        image, _ = assay_render(c, background, rng, wide=True, noise=False)
        truth.append(c)
        images.append(image)
    return float(np.sqrt(np.mean((assay_ratio_reader(np.stack(images)) - np.array(truth)) ** 2)))


# --------------------------------------------------------------------------------------------------
# object coordinates


def coin_templates(scale: float = 0.45) -> list[tuple[np.ndarray, np.ndarray]]:
    """The coins of coins.png as (gray patch float32, alpha mask float32), shrunk by ``scale``."""
    gray = cv2.cvtColor(photo("coins.png"), cv2.COLOR_BGR2GRAY)
    blurred = cv2.GaussianBlur(gray, (0, 0), 2)
    _, mask = cv2.threshold(blurred, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((5, 5), np.uint8))
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask)
    coins = []
    for k in range(1, count):
        x, y, w, h, area = stats[k]
        if area < 400 or w > 80 or h > 80 or x == 0 or y == 0:
            continue
        pad = 3
        region = (slice(y - pad, y + h + pad), slice(x - pad, x + w + pad))
        patch = gray[region].astype(np.float32)
        alpha = cv2.GaussianBlur((labels[region] == k).astype(np.float32), (0, 0), 1.0)
        side = (int(round(patch.shape[1] * scale)), int(round(patch.shape[0] * scale)))
        coins.append((cv2.resize(patch, side, interpolation=cv2.INTER_AREA),
                      cv2.resize(alpha, side, interpolation=cv2.INTER_AREA)))
    return coins


def coords_render(rng: np.random.Generator, coins, backgrounds, quadrants, *, size: int = 64
                  ) -> tuple[np.ndarray, tuple[float, float], str, int, float]:
    """One image: (BGR uint8, (x, y) of the coin centre, quadrant, coin index, rotation degrees)."""
    index = int(rng.integers(len(coins)))
    patch, alpha = coins[index]
    angle = float(rng.uniform(0, 360))
    background = backgrounds[rng.integers(len(backgrounds))]
    y0, x0 = int(rng.integers(0, background.shape[0] - size)), int(rng.integers(0, background.shape[1] - size))
    canvas = background[y0:y0 + size, x0:x0 + size].astype(np.float32) * rng.uniform(0.6, 1.1)
    half = max(patch.shape) / 2 + 1
    quadrant = int(rng.choice(quadrants))
    centre = (size - 1) / 2
    lo_x, hi_x = (half, centre) if quadrant in (0, 2) else (centre, size - 1 - half)
    lo_y, hi_y = (half, centre) if quadrant in (0, 1) else (centre, size - 1 - half)
    x, y = float(rng.uniform(lo_x, hi_x)), float(rng.uniform(lo_y, hi_y))
    # the patch's centre ((w-1)/2, (h-1)/2) goes to (x, y), rotated about itself (pixel-centre convention)
    pc = np.array([(patch.shape[1] - 1) / 2, (patch.shape[0] - 1) / 2])
    rotation = cv2.getRotationMatrix2D((float(pc[0]), float(pc[1])), angle, 1.0)
    rotation[:, 2] += np.array([x, y]) - pc
    warped = cv2.warpAffine(patch * rng.uniform(0.8, 1.2), rotation, (size, size), flags=cv2.INTER_LINEAR)
    cover = cv2.warpAffine(alpha, rotation, (size, size), flags=cv2.INTER_LINEAR)[..., None]
    image = canvas * (1 - cover) + warped[..., None] * cover
    image = image + rng.normal(0, 2.0, image.shape)
    label = int(x >= centre) + 2 * int(y >= centre)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), (x, y), f"q{label}", index, angle


def coords_rows(n: int, *, test: bool, seed: int) -> tuple[list, list]:
    rng = np.random.default_rng(seed)
    coins = coin_templates()
    backgrounds = [photo(name) for name in (BACKGROUNDS_TEST if test else PHOTOS_TRAIN)]
    rows, truth = [], []
    for _ in range(n):
        image, (x, y), group, index, angle = coords_render(rng, coins, backgrounds, (3,) if test else (0, 1, 2))
        rows.append((image, (x, y), group))
        truth.append((index, angle))
    return rows, truth


def match_template(images: np.ndarray, templates: list[np.ndarray]) -> np.ndarray:
    """(N, 2) x, y of the best normalized cross-correlation match of each image's template (one
    template for all when ``templates`` has one), refined to sub-pixel by a 1-D parabola per axis."""
    out = np.empty((len(images), 2))
    for i, image in enumerate(images):
        gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).astype(np.float32)
        template = templates[i if len(templates) > 1 else 0].astype(np.float32)
        score = cv2.matchTemplate(gray, template, cv2.TM_CCOEFF_NORMED)
        _, _, _, (mx, my) = cv2.minMaxLoc(score)

        def refine(a, b, c):
            denominator = a - 2 * b + c
            return 0.0 if denominator == 0 else 0.5 * (a - c) / denominator

        dx = refine(score[my, mx - 1], score[my, mx], score[my, mx + 1]) if 0 < mx < score.shape[1] - 1 else 0.0
        dy = refine(score[my - 1, mx], score[my, mx], score[my + 1, mx]) if 0 < my < score.shape[0] - 1 else 0.0
        # the template's centre pixel sits at ((w-1)/2, (h-1)/2) from its top-left corner
        out[i] = (mx + dx + (template.shape[1] - 1) / 2, my + dy + (template.shape[0] - 1) / 2)
    return out


def mean_coin_template(coins) -> np.ndarray:
    """The average coin (each rotated by several angles) on a mid-gray ground, the matcher's template."""
    side = max(max(p.shape) for p, _ in coins) + 2
    total = np.zeros((side, side), np.float32)
    count = 0
    for patch, alpha in coins:
        for angle in range(0, 360, 45):
            pc = ((patch.shape[1] - 1) / 2, (patch.shape[0] - 1) / 2)
            m = cv2.getRotationMatrix2D(pc, angle, 1.0)
            m[:, 2] += np.array([(side - 1) / 2, (side - 1) / 2]) - np.array(pc)
            p = cv2.warpAffine(patch, m, (side, side))
            a = cv2.warpAffine(alpha, m, (side, side))
            total += p * a + 100.0 * (1 - a)
            count += 1
    return total / count


def exact_templates(coins, truth) -> list[np.ndarray]:
    """The oracle's templates: each test image's own coin at its own rotation (mid-gray ground)."""
    out = []
    for index, angle in truth:
        patch, alpha = coins[index]
        side = max(patch.shape) + 2
        pc = ((patch.shape[1] - 1) / 2, (patch.shape[0] - 1) / 2)
        m = cv2.getRotationMatrix2D(pc, angle, 1.0)
        m[:, 2] += np.array([(side - 1) / 2, (side - 1) / 2]) - np.array(pc)
        p, a = cv2.warpAffine(patch, m, (side, side)), cv2.warpAffine(alpha, m, (side, side))
        out.append(p * a + 100.0 * (1 - a))
    return out
