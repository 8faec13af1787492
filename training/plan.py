"""Preparing a fit: load the dataset once, choose the per-kind preprocessing, split, and fix the plan.

:func:`load_data` decodes, crops and resizes every image once (with per-kind defaults for size,
channels and crop); :func:`make_run_split` makes the run's single split; :func:`make_plan` measures
the normalization and the target standardization on the train split only and picks the model, loss
and augmentation. Everything in a :class:`FitPlan` is fixed before the first step and stored in run.json.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from edgereg.core.kinds import target_kind
from edgereg.data.dataset import (
    LABELS_FILE,
    check_targets_vary,
    confine,
    default_range,
    kind_by_names,
    load_dataset,
    read_labels,
    skip_summary,
    target_columns,
)
from edgereg.errors import DatasetError, EdgeregError
from edgereg.preprocess import PreprocessConfig, read_image
from edgereg.preprocess.reference import GRAY_WEIGHTS_BGR, circle_mask
from edgereg.training.augment import AugmentConfig, parse_augment
from edgereg.training.config import DEFAULT_UNITS, SMALL_IMAGE, TrainConfig
from edgereg.training.kind_training import kind_training
from edgereg.training.models import default_model
from edgereg.training.regressor import OutputTransform
from edgereg.training.run import build_regressor, json_ready
from edgereg.training.splits import Split, kfold, make_split

# ----------------------------------------------------------------------------------------------------
# Data: load once, decide per-kind defaults, split.


@dataclass(frozen=True)
class SourceProbe:
    """A peek at a dataset before loading it: enough to choose the preprocessing."""

    header: tuple[str, ...]  # labels.csv columns
    sizes: tuple[tuple[int, int], ...]  # (H, W) of the probed readable images
    gray: bool  # every probed image has B == G == R
    rows: int = 0  # data rows in labels.csv (an upper bound on the images)
    thumbs: tuple = ()  # (64, 64) float32 gray centre squares of the probed images, for the crop test

    @property
    def small_native(self) -> bool:
        """All probed images share one size no larger than SMALL_IMAGE: use them whole, as they are."""
        return bool(self.sizes) and len(set(self.sizes)) == 1 and max(self.sizes[0]) <= SMALL_IMAGE


def probe_sources(root: str | Path, *, count: int = 16, allow_outside: bool = False) -> SourceProbe:
    """Read labels.csv's header and decode ``count`` images spread over its rows (unreadable ones,
    and paths outside the dataset folder unless ``allow_outside``, are skipped here; the loader
    reports them with their line)."""
    root = Path(root)
    csv_path = root if root.suffix == ".csv" else root / LABELS_FILE
    sizes, gray, thumbs = [], True, []
    if not csv_path.is_file():  # missing, a folder or a FIFO (which would block): the loader says so
        return SourceProbe((), (), False)
    try:  # the loader's own reading of labels.csv, so both see the same header
        header_cells, lines = read_labels(csv_path, csv_path.read_bytes())
    except (OSError, DatasetError):
        return SourceProbe((), (), False)  # the loader raises the proper DatasetError
    header = tuple(header_cells)
    rows = [cells for _, cells in lines if cells]
    spread = np.linspace(0, len(rows) - 1, min(count, len(rows))).round().astype(int).tolist() if rows else []
    picks = sorted(set(spread))
    for index in picks:
        try:
            path, outside = confine(csv_path.parent, rows[index][0].strip(), allow_outside=allow_outside)
            if outside is not None:
                continue  # never opened: the loader reports the row
            image = read_image(path)
        except (EdgeregError, IndexError):
            continue
        sizes.append(image.shape[:2])
        gray = gray and bool((image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all())
        side = min(image.shape[:2])
        top, left = (image.shape[0] - side) // 2, (image.shape[1] - side) // 2
        square = cv2.cvtColor(image[top:top + side, left:left + side], cv2.COLOR_BGR2GRAY)
        thumbs.append(cv2.resize(square, (64, 64), interpolation=cv2.INTER_AREA).astype(np.float32))
    return SourceProbe(header, tuple(sizes), gray and bool(sizes), len(rows), tuple(thumbs))


def coords_by_name(header: tuple[str, ...]) -> bool:
    """Whether labels.csv's target columns are (x, y) pairs, by the loader's own rule
    (``edgereg.data.dataset.kind_by_names``), so the planner and the loader agree on coords."""
    return kind_by_names(target_columns(header)) == "coords"


ROUND_SAMPLE_RATIO = 0.5  # corners this much calmer than the inscribed disk: a round sample on a plain ground


def corners_are_background(thumbs) -> tuple[bool, str]:
    """Whether the corners outside the inscribed circle look like plain background.

    A circle mask (and with it arbitrary-angle rotation augmentation) is only honest when the
    corners carry no signal: a well on a plate, a tray on a bench. Texture photos and patches keep
    their corners. The test: the median over the probed images of (std of the corner pixels) /
    (std of the pixels inside the circle) must be below 0.5.

    Args:
        thumbs: (64, 64) float32 gray centre squares of some images.

    Returns:
        (verdict, one line saying why).
    """
    if not thumbs:
        return False, "no image could be probed"
    inside = circle_mask(64, 64)
    ratios = [float(t[~inside].std() / max(t[inside].std(), 1e-6)) for t in thumbs]
    ratio = float(np.median(ratios))
    verdict = ratio < ROUND_SAMPLE_RATIO
    return verdict, (f"corner/centre contrast {ratio:.2f} {'<' if verdict else '>='} {ROUND_SAMPLE_RATIO}: the "
                     f"corners {'look like plain background' if verdict else 'carry image content'}")


def native_size(probe: SourceProbe, crop: str) -> tuple[int, int]:
    """(H, W) of the smallest probed image after the crop (the resolution every image has)."""
    if not probe.sizes:
        return (SMALL_IMAGE, SMALL_IMAGE)
    if crop == "none":
        return (min(h for h, _ in probe.sizes), min(w for _, w in probe.sizes))
    side = min(min(h, w) for h, w in probe.sizes)
    return (side, side)


def capped_size(native: tuple[int, int], cap: int) -> tuple[int, int]:
    """``native`` scaled down (aspect kept) so its longer side is at most ``cap``."""
    longest = max(native)
    if longest <= cap:
        return native
    scale = cap / longest
    return (max(8, int(round(native[0] * scale))), max(8, int(round(native[1] * scale))))


MIN_FIT_EPOCHS = 15  # the budget must leave the fit this many epochs ...
MIN_FIT_STEPS = 1500  # ... and at least this many steps (a one-cycle fit from scratch needs them) ...
MAX_FIT_STEPS = 3000  # ... but never more than this many, else the input shrinks
SIZE_STEP = 0.8  # each shrink multiplies the side by this
MIN_AUTO_SIDE = 32  # the budget never shrinks the input below this side ...
MAX_SHRINK = 0.5  # ... nor below this fraction of the native side: detail is what a small input loses


def seconds_per_step(model_name: str, kind: str, size: tuple[int, int], channels: int, batch: int,
                     n_outputs: int = 2, precision: str = "auto") -> float:
    """Seconds of one optimizer step of ``model_name`` at ``size`` on random data, this machine, in the
    step format the fit will use (:func:`edgereg.training.step.choose_step`: fp32 or bf16 autocast,
    NCHW or channels-last, whichever measured fastest; the least disturbed of a few steps).
    ``n_outputs`` is not used: the width of the head does not change the time of a step."""
    from edgereg.training.step import choose_step

    return choose_step(model_name, kind, size, channels, batch, precision=precision).seconds_per_step


def choose_input_size(probe: SourceProbe, config: TrainConfig, *, crop: str, kind: str, model_name: str,
                      fit_seconds: float | None, log: Callable[[str], None]) -> tuple[tuple[int, int], str]:
    """The model input size and why: native after the crop, capped at ``config.max_size``, and
    smaller only when the time budget could not otherwise give the fit MIN_FIT_EPOCHS epochs and
    MIN_FIT_STEPS steps (at most MAX_FIT_STEPS steps are asked for).

    Args:
        fit_seconds: seconds the final fit is expected to get (None: no budget, no shrinking).
    """
    if config.input_size is not None:
        return tuple(config.input_size), "asked for with --size"
    native = native_size(probe, crop)
    size = capped_size(native, config.max_size)
    where = "whole frame" if crop == "none" else "centre square"
    reason = (f"native {native[0]}x{native[1]} ({where})" if size == native
              else f"native {native[0]}x{native[1]} ({where}) capped at --max-size {config.max_size}")
    if fit_seconds is None or not probe.rows:
        return size, reason
    channels = 1 if probe.gray and config.channels != "rgb" else 3
    steps_per_epoch = max(1, round(probe.rows * (1 - config.val_frac - config.test_frac) / config.batch_size))
    wanted = min(max(MIN_FIT_EPOCHS * steps_per_epoch, MIN_FIT_STEPS), MAX_FIT_STEPS)
    step = seconds_per_step(model_name, kind, size, channels, config.batch_size, precision=config.precision)
    affordable = fit_seconds / max(step, 1e-6)
    original = size
    # coords are read in source pixels: shrinking the input scales their error with it (64 px coins at
    # 33 px with 1,600 steps: 3.98 px on an unseen quadrant; at 64 px with 608 steps: 3.42 px)
    floor_side = min(size) if target_kind(kind).xy_points else max(MIN_AUTO_SIDE, MAX_SHRINK * min(native))
    while affordable < wanted and min(size) * SIZE_STEP >= floor_side:
        shrunk = (max(8, int(round(size[0] * SIZE_STEP))), max(8, int(round(size[1] * SIZE_STEP))))
        affordable *= (size[0] * size[1]) / (shrunk[0] * shrunk[1])  # step time ~ pixels
        size = shrunk
    if size != original:
        reason += (f", shrunk to {size[0]}x{size[1]}: at {original[0]}x{original[1]} a step takes "
                   f"{step * 1000:.0f} ms and only ~{fit_seconds / step:.0f} of the {wanted} steps wanted fit the budget")
    else:
        reason += f"; ~{affordable:.0f} steps fit the budget ({wanted} wanted)"
    return size, reason


def loading_geometry(probe: SourceProbe, config: TrainConfig, *, fit_seconds: float | None = None,
                     model_name: str = "cnn_small", log: Callable[[str], None] = print
                     ) -> tuple[PreprocessConfig, str]:
    """How images are cropped and resized once, at load time (normalization comes later), and why.

    Coords keep the whole frame so every position stays visible; other kinds take the centred
    square (the whole image when it is square). The size is :func:`choose_input_size`'s. The
    user's --size/--crop/--channels/--roi win.
    """
    wants_coords = (target_kind(config.kind).xy_points if config.kind is not None
                    else coords_by_name(probe.header))
    if config.crop is not None:
        crop = "center" if config.crop == "circle" else config.crop  # the circle is a mask, applied later
    else:
        crop = "none" if wants_coords or probe.small_native else "center"
    kind = "coords" if wants_coords else (config.kind or "scalar")
    if config.model and config.model != "auto":
        model_name = config.model
    elif wants_coords:
        model_name = "heatmap_small"
    size, reason = choose_input_size(probe, config, crop=crop, kind=kind, model_name=model_name,
                                     fit_seconds=fit_seconds, log=log)
    channels = config.channels or ("gray" if probe.gray else "rgb")
    n = 1 if channels == "gray" else 3
    # decode="reduced": big JPEGs are decoded at 1/2..1/8 size, as the runtime will (preprocess.frames)
    geometry = PreprocessConfig(input_size=(int(size[0]), int(size[1])), channels=channels, crop=crop,
                                roi=None if config.roi is None else tuple(config.roi), mean=(0.5,) * n,
                                std=(0.25,) * n, decode="reduced")
    return geometry, reason


def model_crop(kind: str, geometry: PreprocessConfig, config: TrainConfig, probe: SourceProbe | None = None
               ) -> tuple[str, str]:
    """The crop the model is trained and deployed with, and why.

    A circle mask (with arbitrary rotation as an honest augmentation) only for round samples: the
    kind's targets must not depend on orientation (scalar, distribution, angle), the input must be
    square, and :func:`corners_are_background` must find plain corners. Everything else keeps the
    whole loaded square or frame.
    """
    if config.crop is not None:
        return config.crop, "asked for with --crop"
    height, width = geometry.input_size
    if kind_training(kind).round_crop and height == width and config.invariance != "none":
        round_sample, why = corners_are_background(probe.thumbs if probe is not None else ())
        if round_sample:
            return "circle", why
        return geometry.crop, why
    return geometry.crop, f"kind {kind} keeps the {'whole frame' if geometry.crop == 'none' else 'centre square'}"


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
    dataset = load_dataset(root, config=loaded.geometry, targets=list(loaded.dataset.names)
                           if not target_kind(loaded.kind).xy_points else config.targets, kind=loaded.kind, strict=config.strict)
    if tuple(dataset.names) != tuple(loaded.dataset.names):
        raise DatasetError(f"--test '{root}' has targets {', '.join(dataset.names)}, the training data "
                           f"{', '.join(loaded.dataset.names)}; give both folders the same target columns")
    log(f"external test: {len(dataset)} images from '{root}' ({len(dataset.skipped)} bad rows skipped)")
    return dataset


FEW_GROUPS = 10  # fewer groups than this: grouped k-fold out-of-fold scores, then a refit on all rows
MIN_HELD_GROUPS = 3  # a held-out part (validation or test) has at least this many whole groups
MIN_GROUP_VAL_FRAC = 0.2  # ... and at least this share of the rows
MAX_FOLDS = 3  # few groups: 3 folds keep >= 3 groups and >= 20 % of the rows in each held-out part


@dataclass(frozen=True)
class ValidationPlan:
    """How a run validates (chosen from the data, printed with its reason).

    * ``holdout``: one split (random rows, or whole groups: >= 3 groups and >= 20 % of the rows
      for validation, >= 3 groups for an internal test);
    * ``kfold``: few groups: grouped k-fold, each fold's held-out groups are its validation part;
      the out-of-fold predictions score the configuration, then a refit on every row gives the model.
    """

    mode: str  # "holdout" | "kfold"
    split: Any  # the holdout split, or fold 0 (what the race validates on)
    folds: tuple = ()  # kfold: every fold's Split (held-out groups in .val)
    refit: bool = False  # train the final model on train + val with the chosen settings
    reason: str = ""


def plan_validation(loaded: LoadedData, config: TrainConfig, *, external_test: bool = False) -> ValidationPlan:
    """Choose the validation scheme from the groups in the data (see :class:`ValidationPlan`)."""
    groups = loaded.dataset.groups
    n = len(loaded.dataset.targets)
    mode = config.split
    if mode == "auto":
        mode = "group" if groups is not None else "random"
    if mode == "group" and groups is None:
        raise DatasetError("--split group needs a 'group' column in labels.csv; add one or use --split random")
    test_frac = 0.0 if external_test else config.test_frac
    if mode == "group":
        n_groups = len(np.unique(np.asarray(groups).astype(str)))
        if config.test_groups:
            split = make_split(n, mode="group", groups=groups, val_frac=max(config.val_frac, MIN_GROUP_VAL_FRAC),
                               test_frac=0.0, seed=config.seed, test_groups=list(config.test_groups),
                               min_groups=MIN_HELD_GROUPS)
            return ValidationPlan("holdout", split, refit=bool(config.refit),
                                  reason=f"test groups {', '.join(config.test_groups)} as asked; validation "
                                         f"holds out whole groups")
        if n_groups >= FEW_GROUPS:
            val_frac = max(config.val_frac, MIN_GROUP_VAL_FRAC)
            try:
                split = make_split(n, mode="group", groups=groups, val_frac=val_frac, test_frac=test_frac,
                                   seed=config.seed, min_groups=MIN_HELD_GROUPS)
                why = "" if test_frac == 0 else f"; test {test_frac:.0%} of the rows in >= {MIN_HELD_GROUPS} groups"
            except DatasetError:
                split = make_split(n, mode="group", groups=groups, val_frac=val_frac, test_frac=0.0,
                                   seed=config.seed, min_groups=MIN_HELD_GROUPS)
                why = f"; no internal test: too few groups for {MIN_HELD_GROUPS} more"
            return ValidationPlan("holdout", split, refit=bool(config.refit),
                                  reason=f"{n_groups} groups: validation holds out >= {MIN_HELD_GROUPS} whole "
                                         f"groups and >= {val_frac:.0%} of the rows{why}")
        if n_groups >= 2:
            k = min(n_groups, MAX_FOLDS)
            folds = tuple(Split(train=s.train, val=s.test, test=np.zeros(0, dtype=np.int64), mode="group",
                                seed=s.seed, fold=s.fold)
                          for s in kfold(n, k, groups=groups, seed=config.seed))
            return ValidationPlan("kfold", folds[0], folds, refit=True if config.refit is None else config.refit,
                                  reason=f"only {n_groups} groups (< {FEW_GROUPS}): grouped {k}-fold, scored out of "
                                         f"fold, then the model is refitted on every row")
        mode = "random"
        note = "a single group: rows are split at random (scores say nothing about new groups); "
    else:
        note = ""
    split = make_split(n, mode="random", val_frac=config.val_frac, test_frac=test_frac, seed=config.seed)
    return ValidationPlan("holdout", split, refit=bool(config.refit),
                          reason=f"{note}random rows: validation {config.val_frac:.0%}"
                                 + ("" if test_frac == 0 else f", test {test_frac:.0%}"))


def make_run_split(loaded: LoadedData, config: TrainConfig):
    """The run's validation split (fold 0 under k-fold); see :func:`plan_validation`."""
    return plan_validation(loaded, config).split


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
    reference: dict | None = None  # reference normalisation: region, mean_out, std_out (run.json "reference")


def resolve_reference(loaded: LoadedData, config: TrainConfig, train_rows: np.ndarray, *, seed: int = 0):
    """The reference region to use (or None) and why: ``--reference`` when given, else the data's
    answer (:func:`edgereg.training.reference.choose_reference`) for RGB scalar/vector/distribution."""
    from edgereg.training.reference import ReferenceChoice, choose_reference

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


def make_plan(loaded: LoadedData, config: TrainConfig, split, *, model_name: str | None = None,
              reference_region: dict | None = None, seen_frac: float | None = None) -> FitPlan:
    """Fit normalization and target transforms on the train split and pick model, loss, augmentation.

    Args:
        model_name: the model (default ``config.model``, else the kind's default).
        reference_region: divide colours by this region's mean (a ``ReferenceChoice.region``; see
            edgereg.training.reference).
        seen_frac: share of train rows held back to measure memorisation (default config.seen_frac).
    """
    from edgereg.training.reference import ratio_statistics

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
    name = model_name or (config.model if config.model not in (None, "auto") else default_model(loaded.kind))
    return FitPlan(loaded, fitted_split, seen, preprocess, augment, transform, name, dict(config.model_kwargs),
                   config.loss, reference)


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
        "output_transform": json_ready(plan.transform.to_dict()),
        "model": {"name": plan.model_name, "kwargs": json_ready(plan.model_kwargs),
                  "in_channels": plan.preprocess.n_channels, "input_size": list(plan.preprocess.input_size)},
        "preprocess": json_ready(asdict(plan.preprocess)),
        "reference": plan.reference,
    }
