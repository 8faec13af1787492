"""Reference normalisation: read colours relative to a reference region of the same photo.

A colour reader (seed 000's assay) sees the sample's colour times the lighting: white balance,
exposure and the camera's tone curve change from photo to photo. A region of known, constant
reflectance in the same photo (the white plate around a well) sees the same lighting, so the ratio
sample / reference cancels a per-channel gain, which no augmentation can teach a model that only
sees the sample. :class:`ReferenceNorm` divides every pixel by the mean colour of a fixed region
of the model input before the network sees it; it is part of the torch model, so the exported
ONNX graph computes it (Mul, ReduceSum, Div, Add: standard ops) and the runtime needs nothing new.

Regions (fractions of the inscribed circle's radius ``R = min(H, W) / 2`` about the image centre
``((W-1)/2, (H-1)/2)``): ``ring`` is ``0.85 R <= r <= R`` (the rim of a round sample's plate),
``corners`` is ``r > R`` (outside the inscribed circle; not available with a circle crop).

``--reference auto`` decides from the data with a cheap test (:func:`choose_reference`): a ridge
regression of the targets on the log mean colour of the centre disk (``r < 0.5 R``), against the
same on the log ratio to each candidate region, scored by (grouped) 5-fold cross-validation on the
training rows. A region is used when its ratio reader is at least 10 % better: then lighting, not
the sample, explains part of the colour, and the region carries it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

REGIONS = ("ring", "corners")
RING_INNER = 0.85  # the ring region starts at this fraction of the inscribed radius
SAMPLE_RADIUS = 0.5  # the test's sample region: the centre disk of this fraction of the radius
MIN_GAIN = 0.9  # a region must bring the test's RMSE below this fraction of the plain reader's
EPS = 1e-3  # added to reference means (pixel units in [0, 1]): a black reference cannot divide by 0


def radius_map(height: int, width: int) -> np.ndarray:
    """(H, W) float64 distance of each pixel centre from the image centre, in units of min(H, W) / 2."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    return np.hypot(xx - (width - 1) / 2, yy - (height - 1) / 2) / (min(height, width) / 2)


def region_mask(region: str, height: int, width: int) -> np.ndarray:
    """(H, W) bool pixels of ``region`` (see the module docstring)."""
    r = radius_map(height, width)
    if region == "ring":
        return (r >= RING_INNER) & (r <= 1.0)
    if region == "corners":
        return r > 1.0
    raise ValueError(f"unknown reference region {region!r}; expected one of {REGIONS}")


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

    region: str | None  # the chosen region, or None
    reason: str
    scores: dict  # region name (or "none") -> cross-validated RMSE of the linear reader (standardized)


def choose_reference(images: np.ndarray, targets: np.ndarray, *, groups: np.ndarray | None, circle: bool,
                     seed: int = 0) -> ReferenceChoice:
    """Whether dividing by a reference region helps a linear colour reader (module docstring).

    Args:
        images: (N, H, W, 3) uint8 BGR training images (as loaded).
        targets: (N, T) float training targets.
        groups: (N,) group labels or None (folds keep groups whole).
        circle: the model input is circle-masked (then only ``ring`` is possible).
    """
    n, height, width = images.shape[:3]
    if n < 20:
        return ReferenceChoice(None, f"{n} training images are too few to test a reference", {})
    folds = cv_folds(n, groups, seed=seed)
    sample = np.log(mean_colours(images, radius_map(height, width) < SAMPLE_RADIUS) + EPS)  # (N,3)
    scores = {"none": _cv_rmse(sample, targets, folds)}
    for region in REGIONS:
        if region == "corners" and circle:
            continue
        mask = region_mask(region, height, width)
        if mask.sum() < 8:
            continue
        reference = np.log(mean_colours(images, mask) + EPS)
        scores[region] = _cv_rmse(sample - reference, targets, folds)
    best = min((r for r in scores if r != "none"), key=scores.get, default=None)
    text = ", ".join(f"{name} {value:.3f}" for name, value in scores.items())
    if best is not None and scores[best] < MIN_GAIN * scores["none"]:
        return ReferenceChoice(best, f"a linear colour reader improves with the {best} as reference "
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


def ratio_statistics(images: np.ndarray, region: str, *, circle: bool, limit: int = 512,
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
    reference = mean_colours(sample, region_mask(region, height, width))  # (S,3)
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
    return ReferenceNorm(region_mask(record["region"], height, width), mean_in, std_in,
                         record["mean_out"], record["std_out"])
