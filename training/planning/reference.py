"""Reference normalisation: read colours relative to a reference region of the same photo.

A colour reader (seed 000's assay) sees the sample's colour times the lighting: white balance,
exposure and the camera's tone curve change from photo to photo. A region of known, constant
reflectance in the same photo (the white plate around a well) sees the same lighting, so the ratio
sample / reference cancels a per-channel gain, which no augmentation can teach a model that only
sees the sample. :class:`ReferenceNorm` divides every pixel by the mean colour of a fixed region
of the model input before the network sees it; it is part of the torch model, so the exported
ONNX graph computes it (Div, Sub, Min, ReduceSum: standard ops) and the runtime needs nothing new.

Regions are annuli about the image centre ``((W-1)/2, (H-1)/2)``, in fractions of the inscribed
circle's radius ``R = min(H, W) / 2``: a ring ``inner R <= r <= outer R``, or the corners
``r > R`` (outside the inscribed circle; not available with a circle crop). Where the plate is
depends on the photos (a well filling 80 % of the frame, a small well on a wide plate, a plate on
a patterned bench), so the radii are not fixed: :data:`RING_CANDIDATES` tiles ``0.35 R .. R`` with
rings of 0.15 R (every ring outside the sample disk the test reads).

``--reference auto`` decides from the data with a cheap test (:func:`choose_reference`): a ridge
regression of the targets on the log mean colour of the centre disk (``r < 0.3 R``), against the
same on the log ratio to each candidate region, scored by (grouped) 5-fold cross-validation on the
training rows. The best region is used when its ratio reader is at least 30 % better than the
plain one: then lighting, not the sample, explains much of the colour, and the region carries it.
A smaller gain is not worth the ratio's cost to a network (it divides by a noisy mean and hides
the absolute colour): on the synthetic assay, whose lighting varies by a few percent, a 19 %
better ratio reader came with a CNN at 3.3 mg/L against 2.6 without the reference.
A region that straddles the plate and a changing background scores worse than the plate alone,
so the test picks the plate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

REGIONS = ("ring", "corners")
RING_INNER, RING_OUTER = 0.85, 1.0  # a ring recorded without radii (runs of an earlier version)
RING_WIDTH = 0.15  # candidate rings are this wide (fraction of the inscribed radius) ...
RING_CANDIDATES = tuple((round(a, 2), round(a + RING_WIDTH, 2)) for a in (0.35, 0.5, 0.65, 0.775, 0.85))
SAMPLE_RADIUS = 0.3  # the test's sample region: the centre disk of this fraction of the radius
MIN_GAIN = 0.7  # a region must bring the test's RMSE below this fraction of the plain reader's
EPS = 1e-3  # added to reference means (pixel units in [0, 1]): a black reference cannot divide by 0


def radius_map(height: int, width: int) -> np.ndarray:
    """(H, W) float64 distance of each pixel centre from the image centre, in units of min(H, W) / 2."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    return np.hypot(xx - (width - 1) / 2, yy - (height - 1) / 2) / (min(height, width) / 2)


def region_mask(region: str, height: int, width: int, *, inner: float = RING_INNER,
                outer: float = RING_OUTER) -> np.ndarray:
    """(H, W) bool pixels of ``region``: ``ring`` (``inner <= r <= outer``, fractions of the
    inscribed radius) or ``corners`` (``r > 1``); see the module docstring."""
    r = radius_map(height, width)
    if region == "ring":
        return (r >= inner) & (r <= outer)
    if region == "corners":
        return r > 1.0
    raise ValueError(f"unknown reference region {region!r}; expected one of {REGIONS}")


def record_mask(record: dict, height: int, width: int) -> np.ndarray:
    """(H, W) bool mask of a run.json ``reference`` entry (``region`` and, for rings, its radii)."""
    return region_mask(record["region"], height, width, inner=float(record.get("inner", RING_INNER)),
                       outer=float(record.get("outer", RING_OUTER)))


def describe_region(region: dict) -> str:
    """``ring 0.65-0.80 R`` or ``corners``."""
    if region["region"] == "ring":
        return f"ring {region.get('inner', RING_INNER):.2f}-{region.get('outer', RING_OUTER):.2f} R"
    return region["region"]


def candidate_regions(*, circle: bool, only: str | None = None) -> list[dict]:
    """The reference regions the test tries: every candidate ring, and the corners without a circle crop.

    Args:
        only: ``ring`` or ``corners`` to try only that kind (``--reference ring|corners``).
    """
    regions = [{"region": "ring", "inner": a, "outer": b} for a, b in RING_CANDIDATES]
    if not circle:
        regions.append({"region": "corners"})
    return [r for r in regions if only is None or r["region"] == only]


def mean_colours(images: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(N, 3) float64 mean RGB in [0, 1] of ``mask`` pixels of (N, H, W, 3) uint8 BGR images."""
    return images[:, mask][..., ::-1].mean(axis=1, dtype=np.float64) / 255.0  # (N,P,3) -> (N,3) RGB


def _cv_rmse(features: np.ndarray, targets: np.ndarray, folds: np.ndarray, ridge: float = 1e-3) -> float:
    """Cross-validated RMSE (standardized targets) of a ridge regression with a bias term."""
    y = (targets - targets.mean(axis=0)) / np.maximum(targets.std(axis=0), 1e-12)
    x = (features - features.mean(axis=0)) / np.maximum(features.std(axis=0), 1e-12)
    x = np.hstack([x, np.ones((len(x), 1))])
    errors = np.zeros_like(y)
    for fold in np.unique(folds):
        test = folds == fold
        a = x[~test]
        w = np.linalg.solve(a.T @ a + ridge * len(a) * np.eye(a.shape[1]), a.T @ y[~test])
        errors[test] = x[test] @ w - y[test]
    return float(np.sqrt(np.mean(errors ** 2)))


def cv_folds(n: int, groups: np.ndarray | None, *, k: int = 5, seed: int = 0) -> np.ndarray:
    """(n,) fold ids 0..k-1: whole groups per fold when groups are given."""
    rng = np.random.default_rng(seed)
    if groups is None:
        return rng.permutation(n) % k
    names, inverse = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    return (rng.permutation(len(names)) % k)[inverse]


@dataclass(frozen=True)
class ReferenceChoice:
    """What the reference test found (stored in metrics.json)."""

    region: dict | None  # the chosen region ({"region": "ring", "inner": .., "outer": ..} or corners), or None
    reason: str
    scores: dict  # region description (or "none") -> cross-validated RMSE of the linear reader (standardized)


def choose_reference(images: np.ndarray, targets: np.ndarray, *, groups: np.ndarray | None, circle: bool,
                     seed: int = 0, only: str | None = None) -> ReferenceChoice:
    """Whether, and against which region, dividing by a reference helps a linear colour reader
    (module docstring).

    Args:
        images: (N, H, W, 3) uint8 BGR training images (as loaded).
        targets: (N, T) float training targets.
        groups: (N,) group labels or None (folds keep groups whole).
        circle: the model input is circle-masked (then only rings are possible).
        only: ``ring`` or ``corners``: the user chose the kind of region; the test picks the radii
            and the region is used whatever it scores.
    """
    n, height, width = images.shape[:3]
    if n < 20 and only is None:
        return ReferenceChoice(None, f"{n} training images are too few to test a reference", {})
    folds = cv_folds(n, groups, seed=seed, k=min(5, max(2, n // 4)))
    sample = np.log(mean_colours(images, radius_map(height, width) < SAMPLE_RADIUS) + EPS)  # (N,3)
    scores = {"none": _cv_rmse(sample, targets, folds)}
    regions = {}
    for region in candidate_regions(circle=circle, only=only):
        mask = record_mask(region, height, width)
        if mask.sum() < 8:
            continue
        reference = np.log(mean_colours(images, mask) + EPS)
        name = describe_region(region)
        regions[name] = region
        scores[name] = _cv_rmse(sample - reference, targets, folds)
    best = min(regions, key=scores.get, default=None)
    text = ", ".join(f"{name} {value:.3f}" for name, value in scores.items())
    if best is not None and (only is not None or scores[best] < MIN_GAIN * scores["none"]):
        return ReferenceChoice(regions[best], f"a linear colour reader is best with the {best} as reference "
                                              f"(CV RMSE, standardized: {text})", scores)
    return ReferenceChoice(None, f"no region explains the lighting (CV RMSE of a linear colour reader, "
                                 f"standardized: {text})", scores)


class ReferenceNorm(nn.Module):
    """Divide each colour channel by its mean over a reference region; re-standardize.

    ``(B, C, H, W) float32`` normalized images (``(p - mean_in) / std_in``, p in [0, 1]) ->
    ``(B, C, H, W) float32``: ``(p / (ref + EPS) - mean_out) / std_out`` where ``ref`` is the mean
    of ``p`` over the region, per image and channel.

    Written with Div, Sub, Min and ReduceSum only, ops ONNX Runtime's quantizer leaves in float, so
    that the network's first Conv stays the first learned layer, which int8 export keeps in float:
    the image is never quantized (quantizing it coarsened the colour an assay reads). The region
    mask enters as ``min(p, 2 * mask)``: p is in [0, 1], so that is p inside the region and 0
    outside, without a Mul.
    """

    def __init__(self, mask: np.ndarray, mean_in, std_in, mean_out, std_out):
        super().__init__()
        channels = len(mean_in)
        count = max(1, int(mask.sum()))

        def constant(name: str, values) -> None:
            self.register_buffer(name, torch.as_tensor(np.asarray(values, dtype=np.float32)).view(1, channels, 1, 1),
                                 persistent=False)

        constant("inv_std_in", 1.0 / np.asarray(std_in, dtype=np.float64))
        constant("neg_mean_in", -np.asarray(mean_in, dtype=np.float64))
        constant("mean_out", mean_out)
        constant("std_out", std_out)
        self.register_buffer("cap", torch.from_numpy(2.0 * mask.astype(np.float32))[None, None], persistent=False)
        # tensors, not Python floats: they become initializers rather than Constant nodes, which
        # ONNX Runtime's histogram calibrators would otherwise try to bin (and fail on)
        self.register_buffer("count", torch.full((1, 1, 1, 1), float(count)), persistent=False)
        self.register_buffer("neg_eps", torch.full((1, 1, 1, 1), -EPS), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pixels = x / self.inv_std_in - self.neg_mean_in  # (B,C,H,W) in [0, 1]
        inside = torch.minimum(pixels, self.cap)  # p in the region, 0 elsewhere (p >= 0: a uint8 image)
        reference = inside.sum(dim=(2, 3), keepdim=True) / self.count - self.neg_eps  # (B,C,1,1)
        return (pixels / reference - self.mean_out) / self.std_out


def ratio_statistics(images: np.ndarray, region: dict, *, circle: bool, limit: int = 512,
                     seed: int = 0) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (RGB) mean and std of ``pixel / reference mean`` over (a sample of) the images.

    Args:
        images: (N, H, W, 3) uint8 BGR training images.
        circle: count only the pixels inside the inscribed circle.
    """
    rng = np.random.default_rng(seed)
    sample = images if len(images) <= limit else images[rng.choice(len(images), limit, replace=False)]
    height, width = sample.shape[1:3]
    pixels = sample[..., ::-1].astype(np.float64) / 255.0  # (S,H,W,3) RGB
    reference = mean_colours(sample, record_mask(region, height, width))  # (S,3)
    ratio = pixels / (reference[:, None, None, :] + EPS)
    if circle:
        ratio = ratio[:, radius_map(height, width) <= 1.0]  # (S,H,W,3) -> (S,P,3)
    ratio = ratio.reshape(-1, 3)  # (..., 3) -> (S*P, 3)
    return tuple(float(v) for v in ratio.mean(axis=0)), tuple(float(v) for v in np.maximum(ratio.std(axis=0), 1e-3))


def build_reference(record: dict | None, *, input_size: tuple[int, int], mean_in, std_in, circle: bool):
    """The ReferenceNorm of a run.json ``reference`` entry, or None."""
    if not record:
        return None
    height, width = input_size
    return ReferenceNorm(record_mask(record, height, width), mean_in, std_in, record["mean_out"], record["std_out"])
