"""The training-time image pipeline: normalization equals the runtime's; targets move with the image."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgereg.errors import EdgeregError
from edgereg.preprocess import PreprocessConfig, preprocess_batch
from edgereg.preprocess.reference import rotate_bilinear
from edgereg.training.fitting.augment import AugmentConfig, augment_batch, parse_augment, to_float_batch, to_model_input

torch.set_num_threads(1)


def _dot_images(centres_xy: np.ndarray, size: int, sigma: float = 1.2) -> np.ndarray:
    """(B, size, size, 3) uint8 BGR: a Gaussian bright dot on black at each (x, y) in pixels."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    images = []
    for x, y in centres_xy:
        blob = np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma ** 2))
        images.append(np.repeat((250 * blob)[..., None], 3, axis=2))
    return np.round(np.stack(images)).astype(np.uint8)


def _centroids(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) float -> (B, 2) intensity-weighted (x, y) in pixels."""
    weight = images.mean(dim=1).double().numpy()  # (B,3,H,W) -> (B,H,W)
    ys, xs = np.mgrid[0:weight.shape[1], 0:weight.shape[2]]
    total = weight.sum(axis=(1, 2))
    return np.stack([(weight * xs).sum(axis=(1, 2)) / total, (weight * ys).sum(axis=(1, 2)) / total], axis=1)


@pytest.mark.parametrize("channels", ["rgb", "gray"])
@pytest.mark.parametrize("crop", ["none", "center", "circle"])
def test_training_normalization_equals_runtime_preprocessing(channels, crop):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (5, 20, 24 if crop == "none" else 20, 3), dtype=np.uint8)
    n = 3 if channels == "rgb" else 1
    config = PreprocessConfig(input_size=images.shape[1:3], channels=channels, crop=crop,
                              mean=tuple(rng.uniform(0.2, 0.6, n)), std=tuple(rng.uniform(0.1, 0.3, n)), fill=-0.7)
    runtime = preprocess_batch(images, config)
    training = to_model_input(to_float_batch(images), config).numpy()
    assert training.shape == runtime.shape
    np.testing.assert_allclose(training, runtime, rtol=0, atol=1e-6)


def test_rotation_is_the_runtime_rotation_and_the_angle_target_follows():
    """kind angle, target 0: the augmented target is the rotation, and the image is the contract's
    bilinear display-CCW rotation by that angle (edgereg.preprocess.reference.rotate_bilinear)."""
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (6, 17, 17, 3), dtype=np.uint8)
    generator = torch.Generator().manual_seed(0)
    out, angles = augment_batch(to_float_batch(images), torch.zeros(6, 1), kind="angle",
                                config=AugmentConfig(rotation="any"), generator=generator)
    assert len(np.unique(np.round(angles.numpy(), 3))) == 6  # six different rotations drawn
    for b in range(6):
        expected = rotate_bilinear(images[b], float(angles[b, 0])).transpose(2, 0, 1)  # (H,W,3) -> (3,H,W)
        np.testing.assert_allclose(out[b].numpy(), expected, atol=2e-3)


@pytest.mark.parametrize("rotation", ["d4", "none"])
def test_coords_targets_move_with_the_image(rotation):
    size = 32
    rng = np.random.default_rng(3)
    centres = rng.uniform(8, 24, (16, 2))  # (x, y) pixels, away from the border
    images = _dot_images(centres, size)
    uv = (centres + 0.5) / size  # CONTRACTS: u = (x + 0.5) / W
    config = AugmentConfig(rotation=rotation, hflip=True, translate=0.05)
    out, moved = augment_batch(to_float_batch(images), torch.from_numpy(uv), kind="coords", config=config,
                               generator=torch.Generator().manual_seed(4))
    expected_xy = moved.double().numpy() * size - 0.5
    assert np.abs(expected_xy - centres).max() > 1.0  # the draws really moved the dots
    np.testing.assert_allclose(_centroids(out), expected_xy, atol=0.15)


def test_angle_targets_move_with_the_image_under_flips_and_rotations():
    size = 33
    centre = (size - 1) / 2
    angles = np.arange(0, 360, 30, dtype=np.float64)  # direction of the dot from the centre, CCW displayed
    xy = np.stack([centre + 10 * np.cos(np.deg2rad(angles)), centre - 10 * np.sin(np.deg2rad(angles))], axis=1)
    out, moved = augment_batch(to_float_batch(_dot_images(xy, size)), torch.from_numpy(angles[:, None]),
                               kind="angle", config=AugmentConfig(rotation="any", hflip=True),
                               generator=torch.Generator().manual_seed(5))
    dx, dy = (_centroids(out) - centre).T
    measured = np.rad2deg(np.arctan2(-dy, dx))  # CONTRACTS: atan2(-dy, dx)
    gap = np.mod(measured - moved[:, 0].double().numpy() + 180, 360) - 180
    np.testing.assert_allclose(gap, 0, atol=1.0)


def test_invariant_kinds_keep_their_targets_and_runs_are_reproducible():
    rng = np.random.default_rng(6)
    images = to_float_batch(rng.integers(0, 256, (8, 16, 16, 3), dtype=np.uint8))
    targets = torch.from_numpy(rng.uniform(80, 350, (8, 1)))
    config = parse_augment("all", kind="scalar", crop="circle", square=True)
    first = augment_batch(images, targets, kind="scalar", config=config, generator=torch.Generator().manual_seed(7))
    second = augment_batch(images, targets, kind="scalar", config=config, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(first[1], targets.float())
    torch.testing.assert_close(first[0], second[0])
    assert first[0].min() >= 0 and first[0].max() <= 255
    assert not torch.allclose(first[0], images)


def test_grayscale_jitter_makes_equal_channels():
    rng = np.random.default_rng(8)
    images = to_float_batch(rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8))
    out, _ = augment_batch(images, torch.zeros(4, 1), kind="scalar", config=AugmentConfig(grayscale=1.0),
                           generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out[:, 0], out[:, 2])
    torch.testing.assert_close(out[:, 0], 0.114 * images[:, 0] + 0.587 * images[:, 1] + 0.299 * images[:, 2])


def test_parse_augment_defaults_follow_kind_and_crop():
    assert parse_augment("auto", kind="scalar", crop="circle", square=True).rotation == "any"
    coords = parse_augment("auto", kind="coords", crop="none", square=True)
    assert coords.rotation == "none" and not coords.hflip and coords.translate == 0.25  # translation only
    declared = parse_augment("auto", kind="coords", crop="none", square=True, invariance="d4")
    assert declared.rotation == "d4" and declared.hflip
    lit = parse_augment("auto", kind="scalar", crop="circle", square=True, lighting=True)
    assert lit.channel_gain > 0 and lit.gradient > 0 and lit.photometric
    whole_frame = parse_augment("auto", kind="vector", crop="none", square=True)
    assert whole_frame.translate == 0 and not whole_frame.photometric
    assert parse_augment("none", kind="scalar", crop="circle", square=True) == AugmentConfig()
    custom = parse_augment("auto,noise=0.01,hflip=0", kind="angle", crop="circle", square=True)
    assert custom.noise == 0.01 and not custom.hflip


@pytest.mark.parametrize("spec, crop, square, fragment", [
    ("auto,nois=0.01", "circle", True, "did you mean 'noise'"),
    ("sometimes", "circle", True, "preset"),
    ("auto,rotation=any", "center", True, "--crop circle"),
    ("auto,rotation=d4", "none", False, "square"),
    ("auto,noise=0.5", "circle", True, "out of range"),
    ("auto,noise=lots", "circle", True, "expected a number"),
])
def test_parse_augment_rejects_bad_specs(spec, crop, square, fragment):
    with pytest.raises(EdgeregError, match=fragment):
        parse_augment(spec, kind="scalar", crop=crop, square=square)
