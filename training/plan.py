"""Preparing a fit: load the dataset once, choose the per-kind preprocessing, split, and fix the plan.

:func:`load_data` decodes, crops and resizes every image once (with per-kind defaults for size,
channels and crop); :func:`make_run_split` makes the run's single split; :func:`make_plan` measures
the normalization and the target standardization on the train split only and picks the model, loss
and augmentation. Everything in a :class:`FitPlan` is fixed before the first step and stored in run.json.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgereg.errors import DatasetError, EdgeregError
from edgereg.preprocess import PreprocessConfig, read_image
from edgereg.preprocess.reference import GRAY_WEIGHTS_BGR, circle_mask
from edgereg.training.augment import AugmentConfig, parse_augment
from edgereg.training.config import DEFAULT_UNITS, SMALL_IMAGE, TrainConfig
from edgereg.training.data import (LABELS_FILE, check_targets_vary, confine, default_range, load_dataset,
                                   skip_summary)
from edgereg.training.models import default_model, model_entry
from edgereg.training.regressor import OutputTransform
from edgereg.training.run import build_regressor, json_ready
from edgereg.training.splits import make_split


# ----------------------------------------------------------------------------------------------------
# Data: load once, decide per-kind defaults, split.


@dataclass(frozen=True)
class SourceProbe:
    """A peek at a dataset before loading it: enough to choose the preprocessing."""

    header: tuple[str, ...]  # labels.csv columns
    sizes: tuple[tuple[int, int], ...]  # (H, W) of the first few readable images
    gray: bool  # every probed image has B == G == R

    @property
    def small_native(self) -> bool:
        """All probed images share one size no larger than SMALL_IMAGE: use them whole, as they are."""
        return len(set(self.sizes)) == 1 and max(self.sizes[0]) <= SMALL_IMAGE


def probe_sources(root: str | Path, *, count: int = 16, allow_outside: bool = False) -> SourceProbe:
    """Read labels.csv's header and decode its first ``count`` images (unreadable ones, and paths
    outside the dataset folder unless ``allow_outside``, are skipped here; the loader reports them
    with their line)."""
    root = Path(root)
    csv_path = root if root.suffix == ".csv" else root / LABELS_FILE
    sizes, gray = [], True
    if not csv_path.is_file():  # missing, a folder or a FIFO (which would block): the loader says so
        return SourceProbe((), (), False)
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = tuple(next(reader, ()))
            for _, row in zip(range(count), reader):
                try:
                    path, outside = confine(csv_path.parent, row[0].strip(), allow_outside=allow_outside)
                    if outside is not None:
                        continue  # never opened: the loader reports the row
                    image = read_image(path)
                except (EdgeregError, IndexError):
                    continue
                sizes.append(image.shape[:2])
                gray = gray and bool((image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all())
    except (OSError, UnicodeDecodeError):
        header = ()  # the loader raises the proper DatasetError
    return SourceProbe(header, tuple(sizes), gray and bool(sizes))


def coords_by_name(header: tuple[str, ...]) -> bool:
    """Whether labels.csv names (x, y) columns (the loader infers kind coords from them)."""
    names = {name.strip().lower() for name in header}
    return {"x", "y"} <= names or any(n.endswith("_x") and n[:-2] + "_y" in names for n in names)


def loading_geometry(probe: SourceProbe, config: TrainConfig) -> PreprocessConfig:
    """How images are cropped and resized once, at load time (normalization comes later).

    Small sources that share one size (e.g. 28x28 patches) are used whole; larger ones are cropped
    to their centred square (coords keep the whole frame so every position stays visible) and
    resized to the model's registered input size (64x64 for the defaults). The user's
    --size/--crop/--channels/--roi win.
    """
    wants_coords = config.kind == "coords" or (config.kind is None and coords_by_name(probe.header))
    if config.input_size is not None:
        size = tuple(config.input_size)
    elif probe.small_native:
        size = probe.sizes[0]
    else:  # the chosen model's own input size (the registry records it), else 64x64
        size = model_entry(config.model).input_size if config.model else (SMALL_IMAGE, SMALL_IMAGE)
    if config.crop is not None:
        crop = "center" if config.crop == "circle" else config.crop  # the circle is a mask, applied later
    else:
        crop = "none" if wants_coords or probe.small_native else "center"
    channels = config.channels or ("gray" if probe.gray else "rgb")
    n = 1 if channels == "gray" else 3
    # decode="reduced": big JPEGs are decoded at 1/2..1/8 size, as the runtime will (preprocess.frames)
    return PreprocessConfig(input_size=(int(size[0]), int(size[1])), channels=channels, crop=crop,
                            roi=None if config.roi is None else tuple(config.roi), mean=(0.5,) * n, std=(0.25,) * n,
                            decode="reduced")


def model_crop(kind: str, geometry: PreprocessConfig, config: TrainConfig) -> str:
    """The crop the model is trained and deployed with.

    Round samples (scalar readings, distributions, angles: the wells and trays of seeds 000/002) on
    a square input get a circle mask, so that arbitrary rotation is an honest augmentation; whole
    frames of vectors and coords stay whole.
    """
    if config.crop is not None:
        return config.crop
    height, width = geometry.input_size
    if kind in ("scalar", "distribution", "angle") and height == width:
        return "circle"
    return geometry.crop


@dataclass(frozen=True)
class LoadedData:
    """The dataset in memory plus what was decided about it before training."""

    dataset: Any  # edgereg.training.data.Dataset: images (N,H,W,3) uint8 BGR, targets (N,T) float64, ...
    kind: str  # the target kind
    geometry: PreprocessConfig  # exactly what the images were loaded with (the cache key)
    crop: str  # the model's crop (circle = the loaded square plus a mask)
    units: tuple[str, ...]  # one per target
    root: Path  # the dataset directory


def load_data(root: str | Path, config: TrainConfig, *, log: Callable[[str], None] = print,
              notice: Callable[[str], None] | None = None) -> LoadedData:
    """Load a dataset for training with per-kind preprocessing defaults, and say what was decided.

    Args:
        log: progress lines (silenced by --quiet).
        notice: what is always said, --quiet or not: the skipped rows (count and first reasons).
            Default: ``log``.

    Raises:
        DatasetError: unreadable dataset, no usable rows, unknown target columns, constant targets.
    """
    root = Path(root)
    geometry = loading_geometry(probe_sources(root, allow_outside=config.allow_outside), config)
    dataset = load_dataset(root, config=geometry, targets=config.targets, kind=config.kind, strict=config.strict,
                           allow_outside=config.allow_outside)
    skipped = skip_summary(dataset.skipped)
    if skipped:
        (notice or log)(skipped)
    check_targets_vary(dataset)
    kind = dataset.kind
    units = tuple(config.units) or (DEFAULT_UNITS.get(kind, ""),) * len(dataset.names)
    if len(units) != len(dataset.names):
        raise EdgeregError(f"--units needs {len(dataset.names)} comma-separated values (one per target: "
                           f"{', '.join(dataset.names)}), got {len(units)}")
    crop = model_crop(kind, geometry, config)
    reason = "asked for with --kind" if config.kind else dataset.kind_reason
    log(f"data: {len(dataset)} images from '{root}' ({len(dataset.skipped)} bad rows skipped"
        f"{', from the cache' if dataset.from_cache else ''}); targets {', '.join(dataset.names)}")
    log(f"kind {kind} ({reason})")
    log(f"input {geometry.input_size[0]}x{geometry.input_size[1]} {geometry.channels}, crop {crop}")
    return LoadedData(dataset, kind, geometry, crop, units, root)


def make_run_split(loaded: LoadedData, config: TrainConfig):
    """The single split of a run (folds use :func:`edgereg.training.splits.kfold`)."""
    groups = loaded.dataset.groups
    mode = config.split
    if mode == "auto":
        mode = "group" if groups is not None else "random"
    if mode == "group" and groups is None:
        raise DatasetError("--split group needs a 'group' column in labels.csv; add one or use --split random")
    return make_split(len(loaded.dataset.targets), mode=mode, groups=groups if mode == "group" else None,
                      val_frac=config.val_frac, test_frac=config.test_frac, seed=config.seed,
                      test_groups=None if config.test_groups is None else list(config.test_groups))


def seen_group_rows(split, groups: np.ndarray | None, *, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Hold back unseen photos of *training* groups, to compare with the held-out groups' error.

    Only rows of groups that keep at least one other training row are eligible, so every training
    group is still trained on.

    Returns:
        (train rows to fit, seen-group check rows), both sorted int64.
    """
    train = np.asarray(split.train, dtype=np.int64)
    if split.mode != "group" or groups is None or fraction <= 0 or len(train) < 20:
        return train, np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng(seed + 7919)
    labels = np.asarray(groups).astype(str)[train]
    order = rng.permutation(len(train))
    remaining = {g: c for g, c in zip(*np.unique(labels, return_counts=True))}
    chosen = []
    for i in order:
        if len(chosen) >= int(round(fraction * len(train))):
            break
        if remaining[labels[i]] > 1:
            remaining[labels[i]] -= 1
            chosen.append(i)
    seen = np.sort(train[chosen])
    return np.setdiff1d(train, seen), seen


def normalization_stats(images: np.ndarray, geometry: PreprocessConfig, *, limit: int = 512,
                        seed: int = 0) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of pixel values in [0, 1] over (a sample of) the train images.

    Args:
        images: (N, H, W, 3) uint8 BGR, the train split.
        geometry: channels (rgb/gray) and crop (circle: only pixels inside the mask count).

    Returns:
        (mean, std) tuples with one value per model channel (RGB order, or one for gray).
    """
    rng = np.random.default_rng(seed)
    sample = images if len(images) <= limit else images[rng.choice(len(images), limit, replace=False)]
    pixels = sample.astype(np.float64) / 255.0  # (S, H, W, 3) BGR
    if geometry.circle:
        pixels = pixels[:, circle_mask(*pixels.shape[1:3])]  # (S, H, W, 3) -> (S, P, 3)
    pixels = pixels.reshape(-1, 3)  # (..., 3) -> (S*P, 3)
    planes = pixels @ GRAY_WEIGHTS_BGR[:, None] if geometry.channels == "gray" else pixels[:, ::-1]  # RGB
    std = np.maximum(planes.std(axis=0), 1e-3)  # a constant channel must not divide by zero
    return tuple(float(v) for v in planes.mean(axis=0)), tuple(float(v) for v in std)


# ----------------------------------------------------------------------------------------------------
# The plan of one fit: everything fixed before the first step (stored in run.json).


@dataclass(frozen=True)
class FitPlan:
    """One fit's data, preprocessing, augmentation and model, fixed before the first step."""

    loaded: LoadedData
    split: Any  # Split with train = rows actually fitted
    seen: np.ndarray  # (S,) rows of training groups held back (group splits), else empty
    preprocess: PreprocessConfig  # with mean/std measured on the train split
    augment: AugmentConfig
    transform: Any  # edgereg.training.regressor.OutputTransform fitted on the train split
    model_name: str
    model_kwargs: dict
    loss_name: str | None


def make_plan(loaded: LoadedData, config: TrainConfig, split) -> FitPlan:
    """Fit normalization and target transforms on the train split and pick model, loss, augmentation."""
    dataset = loaded.dataset
    train, seen = seen_group_rows(split, dataset.groups, fraction=config.seen_frac, seed=config.seed)
    if len(train) < 2:
        raise DatasetError(f"the train split has {len(train)} rows; training needs at least 2: add images "
                           "or lower --val-frac/--test-frac")
    fitted_split = replace(split, train=train)
    masked = replace(loaded.geometry, crop=loaded.crop)
    mean, std = normalization_stats(dataset.images[train], masked, seed=config.seed)
    preprocess = replace(masked, mean=mean, std=std)
    height, width = preprocess.input_size
    augment = parse_augment(config.augment, kind=loaded.kind, crop=preprocess.crop, square=height == width)
    value_range = None
    if loaded.kind == "scalar":
        value_range = ([tuple(config.range)] * len(dataset.names) if config.range is not None
                       else [default_range(column) for column in dataset.targets[train].T])
    transform = OutputTransform.from_targets(loaded.kind, dataset.targets[train], value_range=value_range)
    return FitPlan(loaded, fitted_split, seen, preprocess, augment, transform,
                   config.model or default_model(loaded.kind), dict(config.model_kwargs), config.loss)


def new_regressor(plan: FitPlan, seed: int):
    """A freshly initialized Regressor (deterministic for ``seed``)."""
    torch.manual_seed(seed)
    return build_regressor(run_record_model_part(plan))


def run_record_model_part(plan: FitPlan) -> dict:
    """The part of run.json that rebuilds the model: kind, output transform, architecture."""
    return {
        "kind": plan.loaded.kind,
        "output_transform": json_ready(plan.transform.to_dict()),
        "model": {"name": plan.model_name, "kwargs": json_ready(plan.model_kwargs),
                  "in_channels": plan.preprocess.n_channels, "input_size": list(plan.preprocess.input_size)},
    }

