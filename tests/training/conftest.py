"""Shared fixtures for training tests: small synthetic datasets, built once per session.

Each fixture returns the dataset folder (holding labels.csv and images/) written by
``edgereg.training.synth.make_dataset``. The names are a contract other test modules rely on:
``assay_dir``, ``gravel_dir``, ``box_dir``, ``pixelstats_dir``, ``angle_dir``. Treat the folders as
read-only (copy one to modify it); loading them may add a ``.edgereg-cache/`` inside.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from edgereg.training.synth import make_dataset

# (task, images, side in pixels): small enough to build in well under a second each.
TINY_DATASETS = {
    "assay": (48, 48),
    "gravel": (48, 64),
    "box": (48, 32),
    "pixelstats": (64, 28),
    "angle": (48, 32),
}


def _build(tmp_path_factory, task: str) -> Path:
    n, size = TINY_DATASETS[task]
    root = tmp_path_factory.mktemp(f"{task}_data")
    make_dataset(task, root, n=n, seed=0, size=size)
    return root


@pytest.fixture(scope="session")
def assay_dir(tmp_path_factory) -> Path:
    """48 reaction-well photos (12 samples x 4), 48x48; columns concentration, group."""
    return _build(tmp_path_factory, "assay")


@pytest.fixture(scope="session")
def gravel_dir(tmp_path_factory) -> Path:
    """48 gravel photos, 64x64, 12 distributions; columns bin0..bin4, group."""
    return _build(tmp_path_factory, "gravel")


@pytest.fixture(scope="session")
def box_dir(tmp_path_factory) -> Path:
    """48 box images, 32x32; columns x, y (source pixels), group (quadrant q0..q3)."""
    return _build(tmp_path_factory, "box")


@pytest.fixture(scope="session")
def pixelstats_dir(tmp_path_factory) -> Path:
    """64 gray patches, 28x28; columns mean, median, std (in [0, 1])."""
    return _build(tmp_path_factory, "pixelstats")


@pytest.fixture(scope="session")
def angle_dir(tmp_path_factory) -> Path:
    """48 arrow images, 32x32; column angle (degrees, counter-clockwise from +x)."""
    return _build(tmp_path_factory, "angle")


@pytest.fixture
def randomize_batchnorm():
    """``randomize_batchnorm(module, seed=0) -> module``: non-trivial BN statistics and affine terms
    (as after training), so BN folding and exports are really exercised; returns it in eval mode."""
    import torch

    def randomize(module, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for bn in (m for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d)):
                n = bn.num_features
                bn.running_mean.copy_(torch.rand(n, generator=generator) - 0.5)
                bn.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                bn.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                bn.bias.copy_(torch.rand(n, generator=generator) - 0.5)
        return module.eval()

    return randomize
