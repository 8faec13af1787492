"""Loading a dataset for training once, with preprocessing chosen from the data, and saying what was decided."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgereg.core.kinds import target_kind
from edgereg.data.dataset import check_targets_vary, load_dataset, skip_summary
from edgereg.errors import DatasetError, EdgeregError
from edgereg.preprocess import PreprocessConfig
from edgereg.training.config import DEFAULT_UNITS, TrainConfig
from edgereg.training.planning.geometry import loading_geometry, model_crop
from edgereg.training.planning.probe import probe_sources


@dataclass(frozen=True)
class LoadedData:
    """The dataset in memory plus what was decided about it before training."""

    dataset: Any  # edgereg.data.dataset.Dataset: images (N,H,W,3) uint8 BGR, targets (N,T) float64, ...
    kind: str  # the target kind
    geometry: PreprocessConfig  # exactly what the images were loaded with (the cache key)
    crop: str  # the model's crop (circle = the loaded square plus a mask)
    units: tuple[str, ...]  # one per target
    root: Path  # the dataset directory
    decisions: tuple = ()  # (what, choice, why) lines printed and stored in metrics.json


def load_data(root: str | Path, config: TrainConfig, *, log: Callable[[str], None] = print,
              fit_seconds: float | None = None, notice: Callable[[str], None] | None = None) -> LoadedData:
    """Load a dataset for training with preprocessing chosen from the data, and say what was decided.

    Args:
        fit_seconds: seconds the final fit is expected to get under the time budget (None: no
            budget); the input shrinks below native only when that is too short.
        log: progress lines (silenced by --quiet).
        notice: what is always said, --quiet or not: the skipped rows (count and first reasons).
            Default: ``log``.

    Raises:
        DatasetError: unreadable dataset, no usable rows, unknown target columns, constant targets.
    """
    root = Path(root)
    probe = probe_sources(root, allow_outside=config.allow_outside)
    geometry, size_reason = loading_geometry(probe, config, fit_seconds=fit_seconds, log=log)
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
    crop, crop_reason = model_crop(kind, geometry, config, probe)
    reason = "asked for with --kind" if config.kind else dataset.kind_reason
    channels_reason = ("asked for with --channels" if config.channels else
                       "every probed image is gray" if geometry.channels == "gray" else "the images have colour")
    log(f"data: {len(dataset)} images from '{root}' ({len(dataset.skipped)} bad rows skipped"
        f"{', from the cache' if dataset.from_cache else ''}); targets {', '.join(dataset.names)}")
    decisions = (("kind", kind, reason),
                 ("input size", f"{geometry.input_size[0]}x{geometry.input_size[1]}", size_reason),
                 ("channels", geometry.channels, channels_reason),
                 ("crop", crop, crop_reason))
    for what, choice, why in decisions:
        log(f"{what}: {choice} ({why})")
    return LoadedData(dataset, kind, geometry, crop, units, root, decisions)


def load_external_test(root: str | Path, loaded: LoadedData, config: TrainConfig, *,
                       log: Callable[[str], None] = print):
    """``--test DIR``: a labelled folder loaded exactly like the training data (same geometry,
    targets and kind), for a test score no training decision has seen.

    Raises:
        DatasetError: unreadable folder, or targets that differ from the training data's.
    """
    targets = list(loaded.dataset.names) if not target_kind(loaded.kind).xy_points else config.targets
    dataset = load_dataset(root, config=loaded.geometry, targets=targets, kind=loaded.kind, strict=config.strict)
    if tuple(dataset.names) != tuple(loaded.dataset.names):
        raise DatasetError(f"--test '{root}' has targets {', '.join(dataset.names)}, the training data "
                           f"{', '.join(loaded.dataset.names)}; give both folders the same target columns")
    log(f"external test: {len(dataset)} images from '{root}' ({len(dataset.skipped)} bad rows skipped)")
    return dataset

