"""Fitting the blocks of a readout from a plan's rows, with no import of the trainer's modules.

:mod:`edgereg.training.planning.fit_plan` builds a hybrid model's readout from here before its first step, and
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


def prepare_from_plan(readout, regressor, plan, x: torch.Tensor | None = None) -> tuple[torch.Tensor, np.ndarray]:
    """Prepare ``readout``'s blocks (a BlockReadout inside ``regressor``) on the plan's train rows.

    Args:
        x: the train rows' model inputs when the caller has them (:func:`model_inputs`).

    Returns:
        (x (N, C, H, W) float32 model inputs, z (N, n_outputs) float64 encoded targets) of the train rows.
    """
    rows = np.asarray(plan.split.train)
    x = model_inputs(regressor, plan, rows) if x is None else x
    scale, offset = intensity_affine(plan)
    with torch.no_grad():
        z = regressor.encode_targets(plan.loaded.dataset.targets[rows])
    prepare_blocks(readout, x, z, intensity_scale=scale, intensity_offset=offset)
    return x, z.double().numpy()


def fit_from_plan(readout, regressor, plan, *, seed: int = 0) -> dict:
    """Prepare and fit ``readout`` (a BlockReadout inside ``regressor``: the model itself, or a
    hybrid's readout) on the plan's train rows, in place; returns the fit record."""
    x, z = prepare_from_plan(readout, regressor, plan)
    rows = np.asarray(plan.split.train)
    groups = None if plan.loaded.dataset.groups is None else np.asarray(plan.loaded.dataset.groups)[rows]
    return fit_head(readout, block_features(readout, x), z, groups, seed=seed)


def initialize_from_data(regressor, plan, *, seed: int = 0) -> dict:
    """Fit the readout inside a hybrid model (``regressor.model.readout``) on the plan's train rows."""
    return fit_from_plan(regressor.model.readout, regressor, plan, seed=seed)
