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

# task: (images, side in pixels, what the folder holds): small enough to build in well under a second each.
TINY_DATASETS = {
    "assay": (48, 48, "48 reaction-well photos (12 samples x 4), 48x48; columns concentration, group."),
    "gravel": (48, 64, "48 gravel photos, 64x64, 12 distributions; columns bin0..bin4, group."),
    "box": (48, 32, "48 box images, 32x32; columns x, y (source pixels), group (quadrant q0..q3)."),
    "pixelstats": (64, 28, "64 gray patches, 28x28; columns mean, median, std (in [0, 1])."),
    "angle": (48, 32, "48 arrow images, 32x32; column angle (degrees, counter-clockwise from +x)."),
}


def _dataset_fixture(task: str):
    """The session fixture ``<task>_dir``: the folder of ``TINY_DATASETS[task]``, built on first use."""
    n, size, description = TINY_DATASETS[task]

    def dataset_dir(tmp_path_factory) -> Path:
        root = tmp_path_factory.mktemp(f"{task}_data")
        make_dataset(task, root, n=n, seed=0, size=size)
        return root

    dataset_dir.__doc__ = description
    return pytest.fixture(dataset_dir, scope="session", name=f"{task}_dir")


assay_dir = _dataset_fixture("assay")
gravel_dir = _dataset_fixture("gravel")
box_dir = _dataset_fixture("box")
pixelstats_dir = _dataset_fixture("pixelstats")
angle_dir = _dataset_fixture("angle")


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
