"""The plan of one fit: everything fixed before the first step (stored in run.json).

:func:`plan_basis` measures what does not depend on the model (the rows fitted, the normalization
and reference statistics on the train split, augmentation, the target transform) once;
:meth:`PlanBasis.plan` derives each model's :class:`FitPlan` from it (the race derives all its
candidates' plans from one basis). :func:`make_plan` does both for one model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np
import torch

from edgereg.data.dataset import default_range
from edgereg.errors import DatasetError
from edgereg.json_values import json_safe
from edgereg.preprocess import PreprocessConfig
from edgereg.training.config import TrainConfig
from edgereg.training.fitting.augment import AugmentConfig, parse_augment
from edgereg.training.models import default_model
from edgereg.training.planning.loading import LoadedData
from edgereg.training.planning.normalization import normalization_stats
from edgereg.training.planning.validation import seen_group_rows
from edgereg.training.run import build_regressor
from edgereg.training.targets.kind_training import kind_training
from edgereg.training.targets.regressor import OutputTransform


def resolve_reference(loaded: LoadedData, config: TrainConfig, train_rows: np.ndarray, *, seed: int = 0):
    """The reference region to use (or None) and why: ``--reference`` when given, else the data's
    answer (:func:`edgereg.training.planning.reference.choose_reference`) for RGB scalar/vector/distribution."""
    from edgereg.training.planning.reference import ReferenceChoice, choose_reference

    if config.reference == "none":
        return ReferenceChoice(None, "--reference none", {})
    if config.reference == "auto" and (not kind_training(loaded.kind).colour_reading
                                       or loaded.geometry.channels != "rgb"):
        return ReferenceChoice(None, f"only colour readings (RGB scalar/vector/distribution) are tested; this is "
                                     f"{loaded.geometry.channels} {loaded.kind}", {})
    dataset = loaded.dataset
    rows = np.asarray(train_rows)
    return choose_reference(dataset.images[rows], dataset.targets[rows],
                            groups=None if dataset.groups is None else np.asarray(dataset.groups)[rows],
                            circle=loaded.crop == "circle", seed=seed,
                            only=None if config.reference == "auto" else config.reference)


@dataclass(frozen=True)
class PlanBasis:
    """The model-independent part of a plan: one split's fitted rows and the statistics measured on them.

    Every candidate model of a race (and any fit on the same split, seen rows and reference)
    shares it; :meth:`plan` adds the model.
    """

    loaded: LoadedData
    split: Any  # Split with train = rows actually fitted
    seen: np.ndarray  # (S,) rows of training groups held back (group splits), else empty
    preprocess: PreprocessConfig  # with mean/std measured on the train split
    augment: AugmentConfig
    transform: Any  # edgereg.training.targets.regressor.OutputTransform fitted on the train split
    reference: dict | None  # reference normalisation: region, mean_out, std_out (run.json "reference")
    model_kwargs: dict  # config.model_kwargs
    loss_name: str | None  # config.loss
    default_model: str  # config.model when named, else the kind's default

    def plan(self, model_name: str | None = None) -> FitPlan:
        """The FitPlan of ``model_name`` (default: :attr:`default_model`) on this basis."""
        shared = {f.name: getattr(self, f.name) for f in fields(PlanBasis)}
        return FitPlan(**{**shared, "model_kwargs": dict(self.model_kwargs)},
                       model_name=model_name or self.default_model)


@dataclass(frozen=True)
class FitPlan(PlanBasis):
    """One fit's data, preprocessing, augmentation and model, fixed before the first step: a
    :class:`PlanBasis` and the model fitted on it."""

    model_name: str


def plan_basis(loaded: LoadedData, config: TrainConfig, split, *, reference_region: dict | None = None,
               seen_frac: float | None = None) -> PlanBasis:
    """Fit normalization and target transforms on the train split and fix the augmentation.

    Args:
        reference_region: divide colours by this region's mean (a ``ReferenceChoice.region``; see
            edgereg.training.planning.reference).
        seen_frac: share of train rows held back to measure memorisation (default config.seen_frac).

    Raises:
        DatasetError: fewer than 2 rows to fit.
    """
    from edgereg.training.planning.reference import ratio_statistics

    dataset = loaded.dataset
    fraction = config.seen_frac if seen_frac is None else seen_frac
    train, seen = seen_group_rows(split, dataset.groups, fraction=fraction, seed=config.seed)
    if len(train) < 2:
        raise DatasetError(f"the train split has {len(train)} rows; training needs at least 2: add images "
                           "or lower --val-frac/--test-frac")
    fitted_split = replace(split, train=train)
    masked = replace(loaded.geometry, crop=loaded.crop)
    mean, std = normalization_stats(dataset.images[train], masked, seed=config.seed)
    preprocess = replace(masked, mean=mean, std=std)
    height, width = preprocess.input_size
    reference = None
    if reference_region is not None:
        mean_out, std_out = ratio_statistics(dataset.images[train], reference_region, circle=preprocess.circle,
                                             seed=config.seed)
        reference = {**reference_region, "mean_out": list(mean_out), "std_out": list(std_out)}
    augment = parse_augment(config.augment, kind=loaded.kind, crop=preprocess.crop, square=height == width,
                            invariance=config.invariance, lighting=reference is not None)
    value_range = None
    if kind_training(loaded.kind).bounded:
        value_range = ([tuple(config.range)] * len(dataset.names) if config.range is not None
                       else [default_range(column) for column in dataset.targets[train].T])
    transform = OutputTransform.from_targets(loaded.kind, dataset.targets[train], value_range=value_range)
    name = config.model if config.model not in (None, "auto") else default_model(loaded.kind)
    return PlanBasis(loaded, fitted_split, seen, preprocess, augment, transform, reference,
                     dict(config.model_kwargs), config.loss, name)


def make_plan(loaded: LoadedData, config: TrainConfig, split, *, model_name: str | None = None,
              reference_region: dict | None = None, seen_frac: float | None = None) -> FitPlan:
    """:func:`plan_basis` and the model of one fit.

    Args:
        model_name: the model (default ``config.model``, else the kind's default).
        reference_region, seen_frac: see :func:`plan_basis`.
    """
    return plan_basis(loaded, config, split, reference_region=reference_region, seen_frac=seen_frac).plan(model_name)


def new_regressor(plan: FitPlan, seed: int):
    """A freshly initialized Regressor (deterministic for ``seed``); a model that starts from the
    data (``needs_data_init``: the hybrid's readout) is fitted on the plan's train rows first."""
    torch.manual_seed(seed)
    regressor = build_regressor(run_record_model_part(plan))
    if getattr(regressor.model, "needs_data_init", False):
        from edgereg.training.blocks.fitting import initialize_from_data

        initialize_from_data(regressor, plan, seed=seed)
    return regressor


def run_record_model_part(plan: FitPlan) -> dict:
    """The part of run.json that rebuilds the model: kind, output transform, architecture, reference."""
    return {
        "kind": plan.loaded.kind,
        "output_transform": json_safe(plan.transform.to_dict()),
        "model": {"name": plan.model_name, "kwargs": json_safe(plan.model_kwargs),
                  "in_channels": plan.preprocess.n_channels, "input_size": list(plan.preprocess.input_size)},
        "preprocess": json_safe(asdict(plan.preprocess)),
        "reference": plan.reference,
    }
