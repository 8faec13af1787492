"""Fitting the blocks of a readout from a plan's rows, with no import of the trainer's modules.

:mod:`edgereg.training.plan` builds a hybrid model's readout from here before its first step, and
:mod:`edgereg.training.blocks.race` the candidate readouts; ``plan`` is a FitPlan (duck-typed: its
``loaded``, ``split``, ``preprocess`` and ``reference``).
"""

from __future__ import annotations

import numpy as np
import torch

from edgereg.preprocess import preprocess_batch
from edgereg.training.blocks.readout import block_features, fit_head, prepare_blocks


def intensity_affine(plan) -> tuple:
    """(scale, offset) per channel from the model input back to pixel values (or reference ratios)."""
    if plan.reference:
        return plan.reference["std_out"], plan.reference["mean_out"]
    return plan.preprocess.std, plan.preprocess.mean


@torch.no_grad()
def model_inputs(regressor, plan, rows: np.ndarray, batch: int = 512) -> torch.Tensor:
    """(N, C, H, W) float32: the readout's input for ``rows`` (runtime preprocessing, then the
    reference normalisation when the plan has one)."""
    images = plan.loaded.dataset.images[np.asarray(rows)]
    parts = []
    for start in range(0, len(images), batch):
        x = torch.from_numpy(preprocess_batch(images[start:start + batch], plan.preprocess))
        parts.append(regressor.reference(x) if regressor.reference is not None else x)
    return torch.cat(parts) if parts else torch.zeros(0)


def initialize_from_data(regressor, plan, *, seed: int = 0) -> dict:
    """Fit the readout inside a hybrid model (``regressor.model.readout``) on the plan's train rows."""
    readout = regressor.model.readout
    x = model_inputs(regressor, plan, plan.split.train)
    scale, offset = intensity_affine(plan)
    rows = np.asarray(plan.split.train)
    groups = None if plan.loaded.dataset.groups is None else np.asarray(plan.loaded.dataset.groups)[rows]
    with torch.no_grad():
        z = regressor.encode_targets(plan.loaded.dataset.targets[rows])
    prepare_blocks(readout, x, z, intensity_scale=scale, intensity_offset=offset)
    return fit_head(readout, block_features(readout, x), z.double().numpy(), groups, seed=seed)
