"""The trainer: dataset -> split -> epochs of augmented mini-batches -> checkpoints -> report.

Flow of one run (``edgereg train DATA --out RUN`` calls :func:`train`):

1. :func:`load_data` decodes, crops and resizes every image once into one ``(N, H, W, 3) uint8``
   array (disk-cached by the data module), with per-kind defaults for size, channels and crop.
2. The split (random, whole groups held out, or K folds) is made once and stored in run.json; the
   normalization statistics and the target standardization come from the train split only.
3. Each epoch shuffles the train rows with a generator seeded by ``(seed, epoch)``, so a resumed run
   replays exactly; each batch goes uint8 -> float -> :func:`~edgereg.training.augment.augment_batch`
   -> :func:`~edgereg.training.augment.to_model_input` -> ``Regressor.forward_raw`` -> loss on the
   encoded targets. AdamW with a one-cycle (or cosine) schedule per step.
4. Validation after every epoch preprocesses with :func:`edgereg.preprocess.preprocess_batch` itself
   and compares ``Regressor.forward`` in physical units, so training and deployment never differ;
   early stopping and the best weights follow the validation RMSE (never the test split).
5. A checkpoint is written atomically after every epoch; ``resume=True`` continues from it.
6. The best weights are scored on validation, test and (group splits) unseen photos of training
   groups, against baselines; metrics.json, report.png and a printed summary follow.

``folds=K`` trains K runs (``RUN/fold0`` ...) whose test parts partition the data and reports their
test metrics as mean ± std. The final model in ``RUN/`` is the fold with the best *validation* RMSE
(copied there; no refit): picking by validation keeps the test parts untouched by selection, and a
refit would be a model no held-out number describes.
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

import edgereg
from edgereg.errors import DatasetError, EdgeregError
from edgereg.preprocess import PreprocessConfig, preprocess_batch, read_image
from edgereg.preprocess.reference import GRAY_WEIGHTS_BGR, circle_mask
from edgereg.training import ddp
from edgereg.training.augment import AugmentConfig, augment_batch, parse_augment, to_float_batch, to_model_input
from edgereg.training.data import LABELS_FILE, default_range, load_dataset
from edgereg.training.losses import default_loss, make_loss
from edgereg.training.lr_find import LRFindConfig, LRFindResult, lr_range_test, plot_lr_find
from edgereg.training.metrics import compute_metrics, uv_to_source_pixels
from edgereg.training.models import default_model, model_entry
from edgereg.training.regressor import OutputTransform
from edgereg.training.report import (SplitEvaluation, baseline_predictions, build_metrics, evaluate_split,
                                     format_summary, plot_report, thumbnail_features)
from edgereg.training.run import (BEST_FILE, CHECKPOINT_FILE, METRICS_FILE, REPORT_FILE, RUN_FILE, RUN_FORMAT,
                                  atomic_write_bytes, build_regressor, json_ready, load_checkpoint, read_json,
                                  save_checkpoint, write_json)
from edgereg.training.splits import kfold, make_split
from edgereg.tta import parse_tta

SCHEDULES = ("onecycle", "cosine", "constant")
SPLITS = ("auto", "random", "group")
SMALL_IMAGE = 64  # sources no larger than this (and all one size) are used at their native size
AUTO_STEPS = 1500  # optimizer steps a default run aims for: small datasets need many epochs
AUTO_EPOCHS = (30, 200)  # bounds of the default epoch count
ONECYCLE_WARMUP = 0.3  # share of the one-cycle schedule spent raising the learning rate
DEFAULT_UNITS = {"coords": "px", "angle": "deg"}


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run. ``None`` means "pick the sensible default for the data"."""

    targets: tuple[str, ...] | None = None  # columns to learn; None: all but path and group
    kind: str | None = None  # target kind; None: inferred from the columns (printed with the reason)
    range: tuple[float, float] | None = None  # bounded scalar (lo, hi); None: train data widened 5%
    units: tuple[str, ...] = ()  # one unit per target for the report and card ("" when unitless)
    strict: bool = False  # a bad row stops the run instead of being skipped and counted
    model: str | None = None  # registry name; None: default_model(kind)
    model_kwargs: dict = field(default_factory=dict)  # the model's own options (see `edgereg models`)
    loss: str | None = None  # None: the kind's default (soft-label CE for distributions, else MSE)
    lr: float | str = 3e-3  # peak learning rate, or "auto" to run the LR range test first
    epochs: int | None = None  # upper bound; None: ~1500 optimizer steps (30..200 epochs); may stop sooner
    time_budget_min: float | None = None  # minutes of epochs; planned to fit after timing the first
    batch_size: int = 64  # per process; BN statistics need more than a handful
    schedule: str = "onecycle"  # per-step LR schedule: warm-up then anneal converges fast on small data
    weight_decay: float = 1e-4  # AdamW's decoupled decay: mild, small models underfit before they overfit
    grad_clip: float = 5.0  # max gradient norm: one outlier batch cannot wreck the weights
    augment: str = "auto"  # preset[,key=value...] (see augment.parse_augment); auto respects the kind
    split: str = "auto"  # random | group; auto: group when the data has a group column (seed 002)
    folds: int | None = None  # K-fold cross-validation instead of one split
    val_frac: float = 0.15  # validation share: early stopping and model selection
    test_frac: float = 0.15  # test share: reported only, never used to choose anything
    test_groups: tuple[str, ...] | None = None  # hold out exactly these groups as the test split
    seen_frac: float = 0.1  # group splits: share of train rows held back to measure memorisation
    seed: int = 0  # the split, the initialization, the shuffling and the augmentation all follow it
    input_size: tuple[int, int] | None = None  # (H, W); None: native if small, else 64x64
    channels: str | None = None  # rgb | gray; None: gray when every probed image is gray
    crop: str | None = None  # none | center | circle; None: per kind (circle for round samples)
    roi: tuple[float, float, float] | None = None  # fixed (cx, cy, r) of a sample that never moves
    tta: str = "none"  # the card's default test-time augmentation
    patience: int = 10  # epochs without validation improvement (after the one-cycle warm-up) before stopping
    sanity: bool = False  # overfit one batch first and fail loudly if the loss does not fall (seed 003)
    threads: int | None = None  # torch CPU threads; None: the cores divided among local processes
    device: str = "auto"  # auto | cpu | cuda
    deterministic: bool = True  # bit-identical reruns and resumes (deterministic oneDNN/cuDNN kernels, ~1.0-1.3x)
    eval_batch: int = 256  # images per forward pass when evaluating

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise EdgeregError(f"--schedule {self.schedule!r} is unknown; expected one of {', '.join(SCHEDULES)}")
        if self.split not in SPLITS:
            raise EdgeregError(f"--split {self.split!r} is unknown; expected one of {', '.join(SPLITS)}")
        if not (isinstance(self.lr, str) and self.lr == "auto") and not (
                isinstance(self.lr, (int, float)) and 0 < self.lr < 10):
            raise EdgeregError(f"--lr must be a positive number below 10 or 'auto', got {self.lr!r}")
        for name in ("epochs", "batch_size", "patience", "eval_batch"):
            if name == "epochs" and self.epochs is None:
                continue
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                option = name.replace("_", "-")
                raise EdgeregError(f"--{option} must be a positive integer, got {getattr(self, name)!r}")
        if self.batch_size < 2:
            raise EdgeregError("--batch-size must be at least 2 (BatchNorm needs two samples per batch)")
        if self.folds is not None and self.folds < 2:
            raise EdgeregError(f"--folds must be at least 2, got {self.folds}")
        if self.time_budget_min is not None and self.time_budget_min <= 0:
            raise EdgeregError(f"--time-budget must be positive minutes, got {self.time_budget_min}")
        if self.range is not None and not self.range[0] < self.range[1]:
            raise EdgeregError(f"--range needs LO < HI, got {self.range[0]},{self.range[1]}")
        parse_tta(self.tta)

    def to_dict(self) -> dict:
        """JSON-ready (tuples become lists)."""
        return json_ready(asdict(self))

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        """Inverse of :meth:`to_dict` (lists back to tuples)."""
        known = {f.name for f in fields(cls)}
        values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items() if k in known}
        return cls(**values)


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


def probe_sources(root: str | Path, *, count: int = 16) -> SourceProbe:
    """Read labels.csv's header and decode its first ``count`` images (unreadable ones are skipped
    here; the loader reports them with their line)."""
    root = Path(root)
    csv_path = root if root.suffix == ".csv" else root / LABELS_FILE
    sizes, gray = [], True
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = tuple(next(reader, ()))
            for _, row in zip(range(count), reader):
                try:
                    image = read_image(csv_path.parent / row[0])
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
    return PreprocessConfig(input_size=(int(size[0]), int(size[1])), channels=channels, crop=crop,
                            roi=None if config.roi is None else tuple(config.roi), mean=(0.5,) * n, std=(0.25,) * n)


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


def load_data(root: str | Path, config: TrainConfig, *, log: Callable[[str], None] = print) -> LoadedData:
    """Load a dataset for training with per-kind preprocessing defaults, and say what was decided.

    Raises:
        DatasetError: unreadable dataset, no usable rows, unknown target columns.
    """
    root = Path(root)
    geometry = loading_geometry(probe_sources(root), config)
    dataset = load_dataset(root, config=geometry, targets=config.targets, kind=config.kind, strict=config.strict)
    for line, path, why in dataset.skipped[:10]:
        log(f"skipped line {line} ({path}): {why}")
    if len(dataset.skipped) > 10:
        log(f"... and {len(dataset.skipped) - 10} more bad rows skipped")
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


# ----------------------------------------------------------------------------------------------------
# Batches, the loss of a batch, and prediction.


class RawOutputs(nn.Module):
    """``Regressor.forward_raw`` as ``forward``, so DistributedDataParallel sees (and syncs) it."""

    def __init__(self, regressor: nn.Module):
        super().__init__()
        self.regressor = regressor

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.regressor.forward_raw(images)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The CPU generator of one epoch: shuffling and augmentation depend only on (seed, epoch)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def epoch_batches(rows: np.ndarray, batch_size: int, generator: torch.Generator,
                  ctx: ddp.DistContext) -> list[np.ndarray]:
    """Shuffle ``rows``, take this rank's shard and cut it into batches of nearly equal size.

    Equal sizes (``np.array_split``) avoid a 1-image last batch, which BatchNorm cannot train on.
    """
    order = rows[torch.randperm(len(rows), generator=generator).numpy()]
    mine = ddp.shard(order, ctx)
    return np.array_split(mine, max(1, round(len(mine) / batch_size)))


@dataclass(frozen=True)
class BatchLoss:
    """Computes the training loss of a batch of row indices (augmented unless told otherwise)."""

    plan: FitPlan
    loss_fn: Callable
    device: str

    def __call__(self, net: nn.Module, regressor, rows: np.ndarray, generator: torch.Generator | None
                 ) -> torch.Tensor:
        dataset = self.plan.loaded.dataset
        images = to_float_batch(dataset.images[rows], self.device)  # (B,3,H,W) float32 0..255 BGR
        targets = torch.from_numpy(dataset.targets[rows]).to(self.device)  # (B,T) dataset units
        if generator is not None:
            images, targets = augment_batch(images, targets, kind=self.plan.loaded.kind,
                                            config=self.plan.augment, generator=generator)
        raw = net(to_model_input(images, self.plan.preprocess))  # (B, n_outputs)
        return self.loss_fn(raw, regressor.encode_targets(targets))


@torch.no_grad()
def predict(regressor, images: np.ndarray, preprocess: PreprocessConfig, *, device: str = "cpu",
            batch_size: int = 256) -> np.ndarray:
    """Model outputs for images, preprocessed by the runtime's own kernel.

    Args:
        regressor: the model (put in eval mode here).
        images: (N, H, W, 3) uint8 BGR, cropped and resized to the model input.
        preprocess: the run's preprocessing.

    Returns:
        (N, T) float64 in model-output units (physical; coords in [0, 1] of the input).
    """
    regressor.eval()
    outputs = []
    for start in range(0, len(images), batch_size):
        x = preprocess_batch(images[start:start + batch_size], preprocess)  # (b, C, H, W) float32
        outputs.append(regressor(torch.from_numpy(x).to(device)).double().cpu().numpy())
    return np.concatenate(outputs) if outputs else np.zeros((0, 0))


def to_user_units(loaded: LoadedData, values: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """(N, T) model/dataset units -> the user's units: coords to source pixels, others unchanged."""
    if loaded.kind != "coords":
        return np.asarray(values, dtype=np.float64)
    return uv_to_source_pixels(values, loaded.dataset.crop_boxes[rows])


def validation_rmse(plan: FitPlan, regressor, rows: np.ndarray, *, device: str, batch_size: int) -> float | None:
    """Overall RMSE in user units on ``rows`` (None when there are none)."""
    if not len(rows):
        return None
    loaded = plan.loaded
    pred = to_user_units(loaded, predict(regressor, loaded.dataset.images[rows], plan.preprocess,
                                         device=device, batch_size=batch_size), rows)
    true = to_user_units(loaded, loaded.dataset.targets[rows], rows)
    return compute_metrics(loaded.kind, true, pred, loaded.dataset.names)["rmse"]


# ----------------------------------------------------------------------------------------------------
# LR range test and the one-batch sanity check.


def make_optimizer(regressor, config: TrainConfig, lr: float) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters."""
    return torch.optim.AdamW([p for p in regressor.parameters() if p.requires_grad], lr=lr,
                             weight_decay=config.weight_decay)


def find_lr(plan: FitPlan, config: TrainConfig, *, device: str = "cpu",
            lr_config: LRFindConfig = LRFindConfig()) -> LRFindResult:
    """Run the LR range test on the train split (augmented batches) with a fresh model."""
    regressor = new_regressor(plan, config.seed).to(device)
    net = RawOutputs(regressor)
    optimizer = make_optimizer(regressor, config, lr_config.start)
    batch_loss = BatchLoss(plan, make_loss(plan.loss_name, plan.loaded.kind), device)
    generator = epoch_generator(config.seed, -1)
    train = np.asarray(plan.split.train)
    batches: list[np.ndarray] = []

    def loss_of_step(step: int) -> torch.Tensor:
        if not batches:
            batches.extend(epoch_batches(train, config.batch_size, generator, ddp.DistContext()))
        return batch_loss(net, regressor, batches.pop(0), generator)

    return lr_range_test(net, optimizer, loss_of_step, lr_config)


@dataclass(frozen=True)
class SanityResult:
    """The one-batch overfit check (seed 003: "overfit one example first")."""

    passed: bool
    steps: int  # optimizer steps taken
    batch: int  # images in the batch
    first_loss: float
    last_loss: float
    rmse: float  # RMSE on the batch after fitting, user units
    mean_rmse: float  # RMSE of answering the batch's mean, user units

    def describe(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        return (f"sanity check {verdict}: one batch of {self.batch} fitted for {self.steps} steps: loss "
                f"{self.first_loss:.4g} -> {self.last_loss:.4g}, RMSE {self.rmse:.4g} vs {self.mean_rmse:.4g} "
                "for the batch mean")


def sanity_check(plan: FitPlan, config: TrainConfig, *, device: str = "cpu", max_steps: int = 200,
                 batch: int = 16, target_ratio: float = 0.3) -> SanityResult:
    """Overfit one un-augmented batch with a fresh model; it passes when the batch RMSE falls below
    ``target_ratio`` x the RMSE of predicting the batch mean (the loss itself may have a floor, e.g.
    the entropy of soft labels)."""
    regressor = new_regressor(plan, config.seed).to(device)
    net = RawOutputs(regressor)
    lr = 1e-3 if config.lr == "auto" else min(float(config.lr), 3e-3)
    optimizer = make_optimizer(regressor, replace(config, weight_decay=0.0), lr)
    batch_loss = BatchLoss(plan, make_loss(plan.loss_name, plan.loaded.kind), device)
    rows = np.asarray(plan.split.train)[:batch]
    loaded = plan.loaded
    true = to_user_units(loaded, loaded.dataset.targets[rows], rows)
    mean_pred = np.tile(true.mean(axis=0), (len(rows), 1))
    mean_rmse = compute_metrics(loaded.kind, true, mean_pred, loaded.dataset.names)["rmse"]
    x = torch.from_numpy(preprocess_batch(loaded.dataset.images[rows], plan.preprocess)).to(device)
    losses, rmse, step = [], math.inf, 0
    for step in range(1, max_steps + 1):
        regressor.train()
        optimizer.zero_grad(set_to_none=True)
        loss = batch_loss(net, regressor, rows, None)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        if step % 10 == 0 or step == max_steps:
            with torch.no_grad():  # train-mode BatchNorm: the batch's own statistics, as fitted
                pred = to_user_units(loaded, regressor(x).double().cpu().numpy(), rows)
            rmse = compute_metrics(loaded.kind, true, pred, loaded.dataset.names)["rmse"]
            if rmse < target_ratio * mean_rmse:
                break
    passed = bool(mean_rmse == 0 or rmse < target_ratio * mean_rmse)
    return SanityResult(passed, step, len(rows), losses[0], losses[-1], float(rmse), float(mean_rmse))


# ----------------------------------------------------------------------------------------------------
# The fit: epochs, checkpoints, early stopping, time budget.


@dataclass(frozen=True)
class FitOutcome:
    """What a finished fit hands to the report."""

    regressor: Any  # best validation weights, eval mode
    history: list  # per-epoch dicts: epoch, train_loss, val_rmse, lr, steps, seconds
    best_epoch: int  # 1-based; 0 when there was no validation split (last weights kept)
    planned_epochs: int
    stopped: str  # why the loop ended
    lr: float  # the peak learning rate used
    seconds: float  # fitting time, across resumes


def auto_epochs(steps_per_epoch: int) -> int:
    """Default epoch count: about AUTO_STEPS optimizer steps, within AUTO_EPOCHS."""
    low, high = AUTO_EPOCHS
    return int(min(high, max(low, math.ceil(AUTO_STEPS / max(1, steps_per_epoch)))))


def make_scheduler(optimizer, config: TrainConfig, lr: float, total_steps: int):
    """The per-step LR schedule over ``total_steps``."""
    if config.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=max(2, total_steps),
                                                   pct_start=ONECYCLE_WARMUP)
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total_steps))
    return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)


class Fitter:
    """Runs the epochs of one fit, checkpointing into ``run_dir`` (rank 0 writes)."""

    def __init__(self, plan: FitPlan, config: TrainConfig, run_dir: Path, ctx: ddp.DistContext, *,
                 lr: float, progress: bool, log: Callable[[str], None]):
        self.plan, self.config, self.run_dir, self.ctx = plan, config, run_dir, ctx
        self.lr, self.progress, self.log = lr, progress, log
        self.regressor = new_regressor(plan, config.seed).to(ctx.device)
        self.net = ddp.wrap(RawOutputs(self.regressor), ctx)
        self.optimizer = make_optimizer(self.regressor, config, lr)
        self.batch_loss = BatchLoss(plan, make_loss(plan.loss_name, plan.loaded.kind), ctx.device)
        self.train_rows = np.asarray(plan.split.train)
        self.val_rows = np.asarray(plan.split.val)
        self.steps_per_epoch = len(epoch_batches(self.train_rows, config.batch_size, torch.Generator(), ctx))
        self.planned = config.epochs or auto_epochs(self.steps_per_epoch)
        self.scheduler = make_scheduler(self.optimizer, config, lr, self.planned * self.steps_per_epoch)
        self.epoch, self.history, self.bad_epochs, self.seconds = 0, [], 0, 0.0
        self.best_rmse, self.best_epoch = math.inf, 0
        self.best_state = self._state_copy()

    def _state_copy(self) -> dict:
        return {k: v.detach().clone() for k, v in self.regressor.state_dict().items()}

    def restore(self, checkpoint: dict) -> None:
        """Continue from a checkpoint written by :meth:`save`."""
        self.planned = int(checkpoint["planned_epochs"])
        self.regressor.load_state_dict(checkpoint["model"])
        # A new scheduler resets the optimizer's lr and momentum: build it first, then restore both.
        self.scheduler = make_scheduler(self.optimizer, self.config, self.lr, self.planned * self.steps_per_epoch)
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        self.epoch, self.history = int(checkpoint["epoch"]), list(checkpoint["history"])
        self.bad_epochs, self.seconds = int(checkpoint["bad_epochs"]), float(checkpoint["seconds"])
        self.best_rmse, self.best_epoch = float(checkpoint["best_rmse"]), int(checkpoint["best_epoch"])
        self.best_state = checkpoint["best_model"]

    def save(self) -> None:
        """Atomically write checkpoint.pt (everything to resume) then best.pt (rank 0 only)."""
        if not self.ctx.is_main:
            return
        save_checkpoint(self.run_dir / CHECKPOINT_FILE, {
            "format": RUN_FORMAT, "epoch": self.epoch, "planned_epochs": self.planned,
            "model": self.regressor.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "history": self.history,
            "bad_epochs": self.bad_epochs, "seconds": self.seconds, "best_rmse": self.best_rmse,
            "best_epoch": self.best_epoch, "best_model": self.best_state,
        })
        save_checkpoint(self.run_dir / BEST_FILE, self.best_state)

    def _replan(self, epoch_seconds: float) -> None:
        """Fit the remaining epochs into the time budget after the first epoch's timing."""
        budget = self.config.time_budget_min * 60.0
        epoch_seconds = ddp.broadcast_float(epoch_seconds, self.ctx)
        fit = max(1, int((budget - 0.05 * budget) // max(epoch_seconds, 1e-6)))
        if fit >= self.planned:
            return
        self.planned = fit
        done = self.scheduler.last_epoch
        self.scheduler = make_scheduler(self.optimizer, self.config, self.lr, self.planned * self.steps_per_epoch)
        for _ in range(done):  # fast-forward the new schedule to the current step
            self.scheduler.step()
        self.log(f"time budget {self.config.time_budget_min:g} min: ~{epoch_seconds:.1f} s/epoch, "
                 f"planning {self.planned} epochs")

    def train_epoch(self) -> tuple[float, int]:
        """One pass over this rank's shard.

        Returns:
            (mean training loss over all ranks, optimizer steps taken by this rank).
        """
        torch.manual_seed(self.config.seed * 1_000_003 + self.epoch)  # dropout etc.
        generator = epoch_generator(self.config.seed, self.epoch)
        batches = epoch_batches(self.train_rows, self.config.batch_size, generator, self.ctx)
        self.net.train()
        total, count = 0.0, 0
        shown = self.progress and self.ctx.is_main and sys.stderr.isatty()
        bar = tqdm(batches, desc=f"epoch {self.epoch + 1}/{self.planned}", leave=False, unit="batch",
                   disable=not shown, dynamic_ncols=True)
        last_val = self.history[-1]["val_rmse"] if self.history else None
        for rows in bar:
            self.optimizer.zero_grad(set_to_none=True)
            loss = self.batch_loss(self.net, self.regressor, rows, generator)
            loss.backward()
            if self.config.grad_clip:
                nn.utils.clip_grad_norm_(self.regressor.parameters(), self.config.grad_clip)
            self.optimizer.step()
            if self.scheduler.last_epoch < self.scheduler_total():
                self.scheduler.step()
            value = float(loss.detach())
            if not math.isfinite(value):
                raise EdgeregError(f"the training loss became {value} at epoch {self.epoch + 1}: the learning rate "
                                   f"{self.lr:g} is too high; run `edgereg lr-find` or pass a lower --lr")
            total, count = total + value * len(rows), count + len(rows)
            bar.set_postfix(loss=f"{value:.4g}", val_rmse="-" if last_val is None else f"{last_val:.4g}")
        bar.close()
        return ddp.mean_over_ranks(total / max(count, 1), self.ctx), len(batches)

    def warmup_epochs(self) -> int:
        """Epochs of rising learning rate, when validation may worsen: early stopping waits them out."""
        return math.ceil(ONECYCLE_WARMUP * self.planned) if self.config.schedule == "onecycle" else 0

    def scheduler_total(self) -> int:
        return max(2, self.planned * self.steps_per_epoch) - 1

    def run(self) -> FitOutcome:
        """Train until the planned epochs, early stopping or the time budget; return the best weights."""
        stopped = "finished the planned epochs"
        while self.epoch < self.planned:
            started = time.perf_counter()
            train_loss, steps = self.train_epoch()
            val_rmse = validation_rmse(self.plan, self.regressor, self.val_rows, device=self.ctx.device,
                                       batch_size=self.config.eval_batch)
            self.epoch += 1
            seconds = time.perf_counter() - started
            self.seconds += seconds
            improved = val_rmse is None or val_rmse < self.best_rmse * (1 - 1e-4)
            if improved:
                self.best_rmse = math.inf if val_rmse is None else val_rmse
                self.best_epoch = 0 if val_rmse is None else self.epoch
                self.best_state = self._state_copy()
                self.bad_epochs = 0
            elif self.epoch > self.warmup_epochs():
                self.bad_epochs += 1
            lr_now = self.optimizer.param_groups[0]["lr"]
            self.history.append({"epoch": self.epoch, "train_loss": train_loss, "val_rmse": val_rmse,
                                 "lr": lr_now, "steps": steps, "seconds": seconds})
            val_text = "-" if val_rmse is None else f"{val_rmse:.4g}" + (" *" if improved else "")
            self.log(f"epoch {self.epoch:>3}/{self.planned}  loss {train_loss:.4g}  val RMSE {val_text}  "
                     f"lr {lr_now:.2g}  {seconds:.1f}s")
            if self.epoch == 1 and self.config.time_budget_min:
                self._replan(seconds)
            self.save()
            if ddp.any_rank(self.bad_epochs >= self.config.patience, self.ctx):
                stopped = f"early stopping: no validation improvement for {self.config.patience} epochs"
                break
            budget = self.config.time_budget_min
            if budget and ddp.any_rank(self.seconds + seconds > budget * 60.0, self.ctx):
                stopped = f"time budget of {budget:g} min reached"
                break
        self.regressor.load_state_dict(self.best_state)
        self.regressor.eval()
        return FitOutcome(self.regressor, self.history, self.best_epoch, self.planned, stopped, self.lr, self.seconds)


# ----------------------------------------------------------------------------------------------------
# The report of a fit, and the run record.


def evaluate_fit(plan: FitPlan, regressor, *, device: str = "cpu", batch_size: int = 256) -> dict[str, SplitEvaluation]:
    """Score the best weights on val, test and seen-group rows, with baselines fitted on train."""
    loaded = plan.loaded
    dataset = loaded.dataset
    train = np.asarray(plan.split.train)
    train_groups = None if dataset.groups is None else np.asarray(dataset.groups)[train]
    train_features = None if train_groups is None else thumbnail_features(dataset.images[train])
    parts = {"val": plan.split.val, "test": plan.split.test, "seen": plan.seen}
    evaluations = {}
    for name, rows in parts.items():
        rows = np.asarray(rows, dtype=np.int64)
        if not len(rows):
            continue
        raw_pred = predict(regressor, dataset.images[rows], plan.preprocess, device=device, batch_size=batch_size)
        raw_true = dataset.targets[rows]
        baselines = baseline_predictions(loaded.kind, dataset.targets[train], len(rows), train_groups=train_groups,
                                         train_features=train_features, eval_features=thumbnail_features(
                                             dataset.images[rows]) if train_groups is not None else None)
        groups = None if dataset.groups is None else np.asarray(dataset.groups)[rows]
        evaluations[name] = evaluate_split(
            name, loaded.kind, dataset.names, to_user_units(loaded, raw_true, rows),
            to_user_units(loaded, raw_pred, rows),
            {key: to_user_units(loaded, pred, rows) for key, pred in baselines.items()}, groups=groups)
    return evaluations


def report_fit(plan: FitPlan, outcome: FitOutcome, evaluations: dict[str, SplitEvaluation], run_dir: Path, *,
               sanity: SanityResult | None = None) -> tuple[dict, list[str], str]:
    """Write metrics.json and report.png for one fit.

    Returns:
        (metrics dict, warnings, summary text).
    """
    loaded = plan.loaded
    facts = {
        "split": {"mode": plan.split.mode, "train": len(plan.split.train), "val": len(plan.split.val),
                  "test": len(plan.split.test), "seen": len(plan.seen)},
        "training": {"epochs": len(outcome.history), "planned_epochs": outcome.planned_epochs,
                     "best_epoch": outcome.best_epoch, "stopped": outcome.stopped, "lr": outcome.lr,
                     "seconds": outcome.seconds, "history": outcome.history},
        "sanity": None if sanity is None else asdict(sanity),
        "augment": plan.augment.describe(),
        "model": {"name": plan.model_name, "parameters": int(sum(p.numel() for p in outcome.regressor.parameters()))},
    }
    metrics, warnings = build_metrics(loaded.kind, loaded.dataset.names, loaded.units, evaluations, facts=facts)
    metrics = json_ready(metrics)
    write_json(run_dir / METRICS_FILE, metrics)
    shown = evaluations.get("test") or evaluations.get("val")
    look_at = run_dir / METRICS_FILE
    if shown is not None:
        look_at = plot_report(run_dir / REPORT_FILE, kind=loaded.kind, names=loaded.dataset.names,
                              units=loaded.units, history=outcome.history, evaluation=shown)
    trained = (f"trained {len(outcome.history)} epochs (best {outcome.best_epoch or 'last'}; {outcome.stopped}) "
               f"in {outcome.seconds:.0f} s, model {plan.model_name}, lr {outcome.lr:.2g}")
    summary = format_summary(loaded.dataset.names, loaded.units, evaluations, warnings, trained=trained,
                             look_at=look_at)
    return metrics, warnings, summary


def run_record(plan: FitPlan, config: TrainConfig, *, status: str, metrics: dict | None = None,
               lr: float | None = None, fold: int | None = None) -> dict:
    """The run.json contents (see :mod:`edgereg.training.run`)."""
    dataset = plan.loaded.dataset
    transform = plan.transform
    ranges = list(zip(transform.lo, transform.hi)) if plan.loaded.kind == "scalar" else None
    summary = None
    if metrics is not None:
        summary = {name: {"rmse": metrics[name]["rmse"], "mae": metrics[name]["mae"], "n": metrics[name]["n"]}
                   for name in ("val", "test") if name in metrics}
        if "cv" in metrics:
            summary["cv"] = metrics["cv"]
    return json_ready({
        "format": RUN_FORMAT, "status": status, "fold": fold,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "dataset": {"root": str(plan.loaded.root.resolve()), "fingerprint": dataset.fingerprint,
                    "n": len(dataset), "skipped": len(dataset.skipped), "strict": config.strict,
                    "targets": config.targets, "kind": config.kind, "loaded_with": asdict(plan.loaded.geometry)},
        "targets": list(dataset.names), "units": list(plan.loaded.units),
        "range": None if ranges is None else [list(r) for r in ranges],
        **run_record_model_part(plan),
        "preprocess": asdict(plan.preprocess), "tta": config.tta, "augment": asdict(plan.augment),
        "split": {**plan.split.to_dict(), "seen": plan.seen},
        "seed": config.seed, "lr": lr, "config": config.to_dict(),
        "versions": {"edgereg": edgereg.__version__, "torch": torch.__version__, "numpy": np.__version__},
        "metrics": summary,
    })


# ----------------------------------------------------------------------------------------------------
# Entry points.


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` returns (the files are in ``run_dir``)."""

    run_dir: Path
    metrics: dict  # the contents of metrics.json
    warnings: tuple[str, ...]  # collapse / memorisation warnings, also in metrics.json
    summary: str  # the printed summary


def fit_one(loaded: LoadedData, config: TrainConfig, split, run_dir: Path, ctx: ddp.DistContext, *,
            resume: bool, progress: bool, log: Callable[[str], None], fold: int | None = None) -> TrainResult:
    """Plan, fit (or resume), evaluate and report one split into ``run_dir``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    existing = read_json(run_dir / RUN_FILE) if (run_dir / RUN_FILE).exists() else None
    if resume and existing is not None and existing.get("status") == "done":
        log(f"{run_dir} has finished training; nothing to resume (see {run_dir / METRICS_FILE})")
        metrics = read_json(run_dir / METRICS_FILE)
        return TrainResult(run_dir, metrics, tuple(metrics.get("warnings", ())), "")
    plan = make_plan(loaded, config, split)
    make_loss(plan.loss_name, loaded.kind)  # a bad --loss fails here, before any work
    checkpoint = None
    if resume and (run_dir / CHECKPOINT_FILE).exists():
        checkpoint = load_checkpoint(run_dir / CHECKPOINT_FILE, map_location=ctx.device)
    sanity = None
    if config.sanity and checkpoint is None:
        sanity = sanity_check(plan, config, device=ctx.device)
        log(sanity.describe())
        if not sanity.passed:
            raise EdgeregError(f"{sanity.describe()}: the model cannot fit even one batch; check that the labels "
                               "match the images, the crop keeps the signal (--crop/--size/--channels), "
                               "and the learning rate (`edgereg lr-find`)")
    if existing is not None and resume and existing.get("lr") is not None:
        lr = float(existing["lr"])
    elif config.lr == "auto":
        lr = auto_lr(plan, config, run_dir, ctx, log=log)
    else:
        lr = float(config.lr)
    fitter = Fitter(plan, config, run_dir, ctx, lr=lr, progress=progress, log=log)  # validates model and loss
    if ctx.is_main and (existing is None or not resume):
        write_json(run_dir / RUN_FILE, run_record(plan, config, status="training", lr=lr, fold=fold))
    ddp.barrier(ctx)
    parameters = sum(p.numel() for p in fitter.regressor.parameters())
    loss = plan.loss_name or default_loss(plan.loaded.kind)
    log(f"model {plan.model_name} ({parameters:,} parameters), loss {loss}, "
        f"{fitter.planned} epochs x {fitter.steps_per_epoch} steps of {config.batch_size}, lr {lr:.2g} "
        f"{config.schedule}; augment {plan.augment.describe()}")
    if checkpoint is not None:
        fitter.restore(checkpoint)
        log(f"resuming {run_dir} after epoch {fitter.epoch}/{fitter.planned}")
    outcome = fitter.run()
    if not ctx.is_main:
        return TrainResult(run_dir, {}, (), "")
    evaluations = evaluate_fit(plan, outcome.regressor, device=ctx.device, batch_size=config.eval_batch)
    metrics, warnings, summary = report_fit(plan, outcome, evaluations, run_dir, sanity=sanity)
    write_json(run_dir / RUN_FILE, run_record(plan, config, status="done", metrics=metrics, lr=lr, fold=fold))
    return TrainResult(run_dir, metrics, tuple(warnings), summary)


def auto_lr(plan: FitPlan, config: TrainConfig, run_dir: Path, ctx: ddp.DistContext, *,
            log: Callable[[str], None]) -> float:
    """``--lr auto``: rank 0 runs the range test (plot in RUN/lr_find.png); every rank gets its answer."""
    lr = math.nan
    if ctx.is_main:
        result = find_lr(plan, config, device=ctx.device)
        plot_lr_find(result, run_dir / "lr_find.png")
        write_json(run_dir / "lr_find.json", json_ready(result.to_dict()))
        lr = result.suggestion
        log(f"lr auto: {lr:.3g} (steepest descent of the LR range test; plot {run_dir / 'lr_find.png'})")
    return ddp.broadcast_float(lr, ctx)


def aggregate_folds(results: list[TrainResult], names) -> dict:
    """Mean ± std over folds of the test metrics (overall and per target)."""
    tests = [r.metrics["test"] for r in results if "test" in r.metrics]

    def stats(values):
        values = np.asarray([v for v in values if v is not None], dtype=np.float64)
        return {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0}

    if not tests:
        return {}
    return {
        "folds": len(tests),
        "rmse": stats([t["rmse"] for t in tests]), "mae": stats([t["mae"] for t in tests]),
        "targets": {n: {key: stats([t["targets"][n][key] for t in tests]) for key in ("rmse", "mae", "r2")}
                    for n in names},
    }


def train_folds(loaded: LoadedData, config: TrainConfig, run_dir: Path, ctx: ddp.DistContext, *,
                resume: bool, progress: bool, log: Callable[[str], None]) -> TrainResult:
    """K-fold cross-validation; the final model is the fold with the best validation RMSE."""
    dataset = loaded.dataset
    groups = dataset.groups if config.split in ("auto", "group") else None
    results = []
    for k, split in enumerate(kfold(len(dataset.targets), config.folds, groups=groups, seed=config.seed,
                                    val_frac=config.val_frac)):
        log(f"== fold {k + 1}/{config.folds}")
        results.append(fit_one(loaded, config, split, run_dir / f"fold{k}", ctx, resume=resume,
                               progress=progress, log=log, fold=k))
    if not ctx.is_main:
        return results[0]
    chosen = int(np.argmin([r.metrics.get("val", {}).get("rmse", math.inf) for r in results]))
    source = results[chosen].run_dir
    cv = aggregate_folds(results, dataset.names)
    metrics = {**results[chosen].metrics, "cv": cv, "chosen_fold": chosen,
               "fold_metrics": [{"fold": k, "val_rmse": r.metrics.get("val", {}).get("rmse"),
                                 "test_rmse": r.metrics.get("test", {}).get("rmse")} for k, r in enumerate(results)]}
    record = read_json(source / RUN_FILE)
    record["folds"] = {"k": config.folds, "chosen": chosen, "dirs": [f"fold{k}" for k in range(len(results))]}
    record["metrics"] = {**(record.get("metrics") or {}), "cv": cv}
    for name in (BEST_FILE, REPORT_FILE):
        if (source / name).exists():
            atomic_write_bytes(run_dir / name, (source / name).read_bytes())
    write_json(run_dir / METRICS_FILE, json_ready(metrics))
    write_json(run_dir / RUN_FILE, record)
    summary = (f"{results[chosen].summary}\n"
               f"cross-validation over {len(results)} folds (test parts): RMSE {cv['rmse']['mean']:.4g} "
               f"± {cv['rmse']['std']:.4g}, MAE {cv['mae']['mean']:.4g} ± {cv['mae']['std']:.4g}; "
               f"final model = fold {chosen} (best validation RMSE), copied to {run_dir}")
    return TrainResult(run_dir, json_ready(metrics), results[chosen].warnings, summary)


def train(dataset_root: str | Path, run_dir: str | Path, config: TrainConfig = TrainConfig(), *,
          resume: bool = False, progress: bool = True, log: Callable[[str], None] = print) -> TrainResult:
    """Train a regressor on a dataset directory into ``run_dir``.

    Args:
        dataset_root: a directory with labels.csv (DESIGN.md dataset format).
        run_dir: the run directory (created); must not hold another run unless ``resume``.
        config: the training configuration. With ``resume`` the stored configuration is used
            (only ``threads`` and ``device`` are taken from this one).
        resume: continue the run in ``run_dir`` from its last checkpoint (or start it when it has
            none: a run killed before its first checkpoint).
        progress: show a progress bar (rank 0, and only on a terminal).
        log: where progress lines go (rank 0 only).

    Under ``torchrun`` every process calls this; they share the work through DDP and only rank 0
    writes files and returns the metrics (the others return an empty TrainResult).

    Returns:
        The metrics, warnings and printed summary; files in ``run_dir``.

    Raises:
        EdgeregError: bad configuration, unusable data, a run directory already in use, a failed
            sanity check, or a diverging loss.
    """
    run_dir = Path(run_dir)
    # A K-fold run writes RUN/run.json last; until then its first fold's record holds the settings.
    records = [path for path in (run_dir / RUN_FILE, run_dir / "fold0" / RUN_FILE) if path.exists()]
    if records and not resume:
        raise EdgeregError(f"'{run_dir}' already holds a run; continue it with --resume or choose another --out")
    if records:
        stored = read_json(records[0])
        dataset_root = stored["dataset"]["root"]
        config = replace(TrainConfig.from_dict(stored["config"]), threads=config.threads, device=config.device)
    ctx = ddp.setup(config.device)
    say = log if ctx.is_main else (lambda message: None)
    try:
        with kernel_flags(deterministic=config.deterministic):
            torch.set_num_threads(ddp.threads_per_process(ctx, config.threads))
            run_dir.mkdir(parents=True, exist_ok=True)
            loaded = load_data(dataset_root, config, log=say)
            if ctx.distributed:
                say(f"distributed: {ctx.world_size} processes ({ctx.device}), batch {config.batch_size} per process")
            if config.folds:
                return train_folds(loaded, config, run_dir, ctx, resume=resume, progress=progress, log=say)
            split = make_run_split(loaded, config)
            say(f"split {split.mode}: train {len(split.train)}, val {len(split.val)}, test {len(split.test)}")
            return fit_one(loaded, config, split, run_dir, ctx, resume=resume, progress=progress, log=say)
    finally:
        ddp.teardown(ctx)


@contextlib.contextmanager
def kernel_flags(*, deterministic: bool):
    """Within the block, pick deterministic convolution kernels when asked.

    oneDNN's CPU convolutions (and cuDNN's autotuned ones) may sum in a different order from call to
    call, so two identical runs differ in the last bits and then drift apart: a rerun or a resumed
    run would not repeat the uninterrupted one. Their deterministic modes cost ~1.0-1.3x on the CPU
    convolutions measured here. The previous settings are restored on exit.
    """
    if not deterministic:
        yield
        return
    backends = torch.backends
    saved = (backends.mkldnn.deterministic, backends.cudnn.deterministic, backends.cudnn.benchmark)
    backends.mkldnn.deterministic, backends.cudnn.deterministic, backends.cudnn.benchmark = True, True, False
    try:
        yield
    finally:
        backends.mkldnn.deterministic, backends.cudnn.deterministic, backends.cudnn.benchmark = saved
