"""What training does differently per target kind, as one frozen object per kind, in one place.

The runtime's kinds (:mod:`edgereg.core.kinds`) say how readings are reduced, compared and shown; this
module adds what training needs on top, keyed on the same name (``kind_training(name)``):

=============  ===========  ===========  ==========================  ===========================  =========
kind           head         loss         raw output -> ``forward``    encoded target (loss space)  rotations
=============  ===========  ===========  ==========================  ===========================  =========
scalar         pool         mse          ``lo + (hi-lo) sigmoid``     ``(y-lo)/(hi-lo)`` in [0, 1]  unchanged
vector         pool         mse          ``mean + std * raw``         ``(y-mean)/std``              unchanged
distribution   location     soft_ce      ``softmax``                  ``y / sum(y)``                unchanged
coords         soft_argmax  mse          ``clip(raw, 0, 1)``          ``y`` in [0, 1] of the input  move
angle          pool         mse          degrees from (sin, cos)      ``(sin y, cos y)``            move
count          pool         poisson      ``mean * exp(raw)``          ``y / mean``                  unchanged
=============  ===========  ===========  ==========================  ===========================  =========

Each object answers: the default head style and loss, which losses fit, the output transform's
fitted fields, the target encoding and the output link (:mod:`edgereg.training.regressor` calls
them), the dataset's target checks and units, how targets move with the geometric augmentation,
and the per-element errors the metrics use.

The module loads without torch (the dataset loader and ``edgereg synth`` use it on machines without
it); the methods that compute on tensors import torch themselves.

To add a kind: its runtime object in ``edgereg/core/kinds.py`` and its training object here (a subclass
of :class:`KindTraining` overriding what differs, added to ``KIND_TRAINING``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from edgereg.core.angles import circular_difference
from edgereg.core.kinds import TargetKind, target_kind
from edgereg.errors import DatasetError, EdgeregError, ShapeError, did_you_mean

if TYPE_CHECKING:
    import torch
    from torch import nn

    from edgereg.training.regressor import OutputTransform

SUM_TOLERANCE = 1e-3  # how far from 1 a row of a distribution may sum (rounding in the csv)


@dataclass(frozen=True)
class KindTraining:
    """Training behaviour of a kind; this base class is the plain-number behaviour (``vector``).

    Attributes:
        name: the kind's name (the card's ``kind``).
        head: the default head style (``edgereg.training.heads.HEAD_STYLES``).
        loss: the default loss (``edgereg.training.losses.LOSSES``).
        losses: every loss that fits the kind's encoded targets.
        unit_space: encoded targets lie in [0, 1] (Huber's default delta is 0.1 there, else 1).
        outputs_per_target: raw outputs per physical target (2 for an angle's (sin, cos)).
        invariant: rotations and flips of the image leave the targets unchanged (rotation-invariant
            models and invariance augmentation apply).
        single_target: the kind reads exactly one column.
        transform_fields: the :class:`OutputTransform` fields fitted on the training split.
        r2: R² is a meaningful per-target metric (not on the circle).
        bounded: targets lie in a range (``--range``) the output is squashed into.
        round_crop: round samples on plain corners get a circle crop (the mask hides what rotations
            invent at the corners); kinds whose targets may depend on every pixel keep the frame.
        colour_reading: the kind reads a colour, so reference normalisation is tried (``--reference auto``).
        small_input_models: extra race candidates for small whole-frame inputs (``edgereg.training.race``).
        bins: targets are the bins of one distribution (reports show per-bin errors, not groups).
        translate_ok: shifting the image leaves the targets unchanged or moves them exactly (a shift
            may push counted particles out of the frame).
    """

    name: str
    head: str = "pool"
    loss: str = "mse"
    losses: tuple[str, ...] = ("mse", "huber")
    unit_space: bool = False
    outputs_per_target: int = 1
    invariant: bool = True
    single_target: bool = False
    transform_fields: tuple[str, ...] = ()
    r2: bool = True
    bounded: bool = False
    round_crop: bool = False
    colour_reading: bool = False
    small_input_models: tuple[str, ...] = ()
    bins: bool = False
    translate_ok: bool = True

    def __str__(self) -> str:
        return self.name

    @property
    def target(self) -> TargetKind:
        """The runtime kind of the same name."""
        return target_kind(self.name)

    @property
    def paired_outputs(self) -> bool:
        """Raw outputs come in pairs ((x, y) points, (sin, cos) of an angle)."""
        return self.target.xy_points or self.outputs_per_target == 2

    # --- output transform ---------------------------------------------------------------------
    def fit(self, targets: np.ndarray, value_range) -> dict[str, tuple[float, ...]]:
        """The transform's fitted fields from training targets ``(N, T) float64`` in physical units."""
        return {}

    def encode(self, y: torch.Tensor, transform: OutputTransform) -> torch.Tensor:
        """Physical targets ``(N, T) float32`` -> loss targets ``(N, n_outputs) float32``."""
        return y

    def to_target_space(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw output ``(B, n_outputs)`` mapped into the encoded target's space (the loss applies it)."""
        return raw

    def from_target_space(self, z: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`to_target_space`: encoded targets ``(B, n_outputs)`` -> raw outputs.

        A closed-form readout (``edgereg.training.blocks``) predicts in the encoded space; this makes
        its prediction a raw output like a network's, clamped where the link is undefined."""
        return z

    def output_constants(self, transform: OutputTransform) -> dict[str, np.ndarray]:
        """Constants of the output layer, ``name -> (T,)``; they become buffers of shape (1, T)."""
        return {}

    def output(self, layer: nn.Module, raw: torch.Tensor) -> torch.Tensor:
        """Raw ``(B, n_outputs)`` -> physical ``(B, T)``; ``layer`` holds :meth:`output_constants`."""
        return raw

    def init_bias(self, layer: nn.Module) -> None:
        """Start a linear output layer's bias at the centre of the kind's range (0 already is)."""

    # --- dataset ------------------------------------------------------------------------------
    def check_targets(self, names: Sequence[str], targets: np.ndarray, csv_name: str, lines: Sequence[int]) -> None:
        """Raise DatasetError when a given ``--kind`` does not fit the columns ``targets (N, T)``."""
        if self.single_target and len(names) != 1:
            raise DatasetError(f"kind {self.name!r} needs exactly one target column, got {len(names)}: "
                               f"{', '.join(names)}; pick one with --targets")

    def to_training_units(self, names: list[str], targets: np.ndarray,
                          boxes: np.ndarray) -> tuple[list[str], np.ndarray]:
        """The csv's columns and ``targets (N, T)`` -> the order and units training uses."""
        return names, targets

    # --- augmentation -------------------------------------------------------------------------
    def move_targets(self, targets: torch.Tensor, angles: torch.Tensor, flips: torch.Tensor,
                     shifts: torch.Tensor, size: torch.Size) -> torch.Tensor:
        """Targets ``(B, T)`` of images rotated by ``angles (B,)`` degrees, mirrored where ``flips
        (B,)`` and shifted by ``shifts (B, 2)`` pixels, images of ``size`` (H, W)."""
        return targets

    # --- metrics ------------------------------------------------------------------------------
    def errors(self, y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
        """(N, T) float64 signed errors ``pred - true`` in the kind's units."""
        return np.asarray(y_pred, dtype=np.float64) - np.asarray(y_true, dtype=np.float64)

    def per_sample(self, squared: np.ndarray) -> np.ndarray:
        """(N, T) squared errors -> (N,) the squared error of each sample."""
        return squared.mean(axis=1)

    def column_std(self, values: np.ndarray) -> np.ndarray:
        """(N, T) -> (T,) the spread of each column in its units."""
        return values.std(axis=0)

    def column_mean(self, values: np.ndarray) -> np.ndarray:
        """(N, T) -> (T,) the mean of each column in its units."""
        return values.mean(axis=0)

    def column_median(self, values: np.ndarray) -> np.ndarray:
        """(N, T) -> (T,) the median of each column in its units."""
        return np.median(values, axis=0)


@dataclass(frozen=True)
class Scalar(KindTraining):
    """A bounded number: sigmoid onto the card's range."""

    def fit(self, targets, value_range):
        t = targets.shape[1]
        if value_range is None:
            raise EdgeregError("a scalar output transform needs value_range=(lo, hi); pass the --range")
        bounds = np.asarray(value_range, dtype=np.float64)
        bounds = np.broadcast_to(bounds, (t, 2)) if bounds.shape == (2,) else bounds
        if bounds.shape != (t, 2):
            raise ShapeError(f"value_range must be (lo, hi) or {t} such pairs, got {value_range!r}")
        return {"lo": tuple(bounds[:, 0]), "hi": tuple(bounds[:, 1])}

    def encode(self, y, transform):
        import torch

        lo, hi = (torch.tensor(v, dtype=torch.float32, device=y.device) for v in (transform.lo, transform.hi))
        return ((y - lo) / (hi - lo)).clamp(0.0, 1.0)

    def to_target_space(self, raw):
        import torch

        return torch.sigmoid(raw)

    def from_target_space(self, z):
        import torch

        z = z.clamp(1e-6, 1.0 - 1e-6)
        return torch.log(z / (1.0 - z))

    def output_constants(self, transform):
        lo, hi = np.asarray(transform.lo), np.asarray(transform.hi)
        return {"offset": lo, "scale": hi - lo}

    def output(self, layer, raw):
        import torch

        return layer.offset + layer.scale * torch.sigmoid(raw)


@dataclass(frozen=True)
class Vector(KindTraining):
    """Independent numbers, standardized with the training split's mean and std."""

    def fit(self, targets, value_range):
        return {"mean": tuple(targets.mean(axis=0)), "std": tuple(targets.std(axis=0))}

    def encode(self, y, transform):
        import torch

        mean, std = (torch.tensor(v, dtype=torch.float32, device=y.device) for v in (transform.mean, transform.std))
        return (y - mean) / std

    def output_constants(self, transform):
        return {"offset": np.asarray(transform.mean), "scale": np.asarray(transform.std)}

    def output(self, layer, raw):
        return layer.offset + layer.scale * raw


@dataclass(frozen=True)
class Distribution(KindTraining):
    """Probabilities per bin: softmax of one logit per bin."""

    def encode(self, y, transform):
        y = y.clamp_min(0.0)
        total = y.sum(dim=1, keepdim=True)
        if not bool((total > 0).all()):
            raise DatasetError("a distribution target row sums to 0; every row needs a positive total")
        return y / total

    def to_target_space(self, raw):
        import torch

        return torch.softmax(raw, dim=1)

    def from_target_space(self, z):
        import torch

        return torch.log(z.clamp_min(1e-6))

    def output(self, layer, raw):
        import torch

        return torch.softmax(raw, dim=1)

    def check_targets(self, names, targets, csv_name, lines):
        super().check_targets(names, targets, csv_name, lines)
        sums = targets.sum(axis=1)
        worst = int(np.argmax(np.abs(sums - 1.0)))
        if targets.min() < 0 or abs(sums[worst] - 1.0) > SUM_TOLERANCE:
            raise DatasetError(f"kind 'distribution' needs non-negative rows that sum to 1; {csv_name} "
                               f"line {lines[worst]} sums to {sums[worst]:.6g}; fix the row or use "
                               f"--kind vector")


@dataclass(frozen=True)
class Coords(KindTraining):
    """(x, y) points in [0, 1] of the model input; they move with the image."""

    def output(self, layer, raw):
        return raw.clamp(0.0, 1.0)

    def init_bias(self, layer):
        import torch

        if getattr(layer, "bias", None) is not None:
            torch.nn.init.constant_(layer.bias, 0.5)  # the image centre instead of the corner

    def check_targets(self, names, targets, csv_name, lines):
        if coord_pairs(names) is None:
            raise DatasetError(f"kind 'coords' needs columns x, y or pairs P_x, P_y; got {', '.join(names)}")

    def to_training_units(self, names, targets, boxes):
        order = [i for pair in coord_pairs(names) for i in pair]  # x then y per point
        names = [names[i] for i in order]
        targets = targets[:, order].copy()
        x0, y0, w, h = (boxes[:, i:i + 1] for i in range(4))  # 4 x (N, 1)
        targets[:, 0::2] = (targets[:, 0::2] - x0 + 0.5) / w
        targets[:, 1::2] = (targets[:, 1::2] - y0 + 0.5) / h
        return names, targets

    def move_targets(self, targets, angles, flips, shifts, size):
        from edgereg.training.augment import move_points  # the augmentation owns the image geometry

        return move_points(targets, angles, flips, shifts, size)

    def per_sample(self, squared):
        return squared.reshape(len(squared), -1, 2).sum(axis=2).mean(axis=1)  # (N, 2K) -> (N, K, 2)


@dataclass(frozen=True)
class Angle(KindTraining):
    """One direction in degrees, learnt as a (sin, cos) pair."""

    def encode(self, y, transform):
        import torch

        radians = torch.deg2rad(y)
        pairs = torch.stack([torch.sin(radians), torch.cos(radians)], dim=2)  # (N,T) -> (N,T,2)
        return pairs.flatten(1)  # (N,T,2) -> (N,2T)

    def output(self, layer, raw):
        from edgereg.training.regressor import degrees_from_sin_cos

        pairs = raw.reshape(-1, layer.n_targets, 2)  # (B,2T) -> (B,T,2): (sin, cos) per target
        return degrees_from_sin_cos(pairs[:, :, 0], pairs[:, :, 1])

    def to_training_units(self, names, targets, boxes):
        return names, np.mod(targets, 360.0)

    def move_targets(self, targets, angles, flips, shifts, size):
        import torch

        flipped = torch.where(flips.to(targets.device).unsqueeze(1), 180.0 - targets, targets)  # (B,) -> (B,1)
        return torch.remainder(flipped + angles.to(targets.device).unsqueeze(1), 360.0)  # (B,) -> (B,1)

    def errors(self, y_true, y_pred):
        return circular_difference(y_pred, y_true)

    def column_mean(self, values):
        """Circular mean in degrees per column, in [0, 360)."""
        from edgereg.training.metrics import circular_mean

        return circular_mean(values, axis=0)

    def column_median(self, values):
        """The median of the differences to the circular mean, added back to it, in [0, 360)."""
        mean = self.column_mean(values)
        return np.mod(mean + np.median(circular_difference(values, mean), axis=0), 360.0)

    def column_std(self, values):
        """Circular standard deviation in degrees per column."""
        radians = np.deg2rad(values)
        length = np.hypot(np.sin(radians).mean(axis=0), np.cos(radians).mean(axis=0))
        return np.rad2deg(np.sqrt(-2.0 * np.log(np.clip(length, 1e-12, 1.0))))


@dataclass(frozen=True)
class Count(KindTraining):
    """Non-negative whole numbers (particles in a photo): a log-rate, learnt with the Poisson likelihood.

    The raw output is the log of the expected count relative to the training split's mean count per
    target, so a raw 0 is the mean and the first steps start there; ``forward`` is ``mean * exp(raw)``
    (the ONNX ``value``: the expected count). The encoded target is ``y / mean``; the Poisson loss
    ``exp(raw) - (y / mean) raw`` is the Poisson negative log-likelihood of ``y`` divided by the
    constant ``mean`` (plus a constant): the same minimum, gradients on the scale of the vector kind's.
    """

    def fit(self, targets, value_range):
        mean = targets.mean(axis=0)
        if not (mean > 0).all():
            raise DatasetError("a count column is 0 in every training row; a model cannot learn it: "
                               "label images with particles or drop the column")
        return {"mean": tuple(mean)}

    def encode(self, y, transform):
        import torch

        if bool((y < 0).any()):
            raise DatasetError("count targets must be >= 0; fix the rows or use --kind vector")
        return y / torch.tensor(transform.mean, dtype=torch.float32, device=y.device)

    def to_target_space(self, raw):
        import torch

        return torch.exp(raw)

    def from_target_space(self, z):
        import torch

        return torch.log(z.clamp_min(1e-6))

    def output_constants(self, transform):
        return {"scale": np.asarray(transform.mean)}

    def output(self, layer, raw):
        import torch

        return layer.scale * torch.exp(raw)

    def check_targets(self, names, targets, csv_name, lines):
        bad = np.flatnonzero(((targets < 0) | (targets != np.round(targets))).any(axis=1))
        if len(bad):
            row = int(bad[0])
            raise DatasetError(f"kind 'count' needs whole numbers >= 0; {csv_name} line {lines[row]} has "
                               f"{', '.join(f'{v:g}' for v in targets[row])}; fix the row or use --kind vector")


def coord_pairs(names: Sequence[str]) -> list[tuple[int, int]] | None:
    """Index pairs (ix, iy) when every name is half of an ``x, y`` or ``P_x, P_y`` pair, else None."""
    if not names:
        return None
    positions = {name: i for i, name in enumerate(names)}
    pairs = []
    for i, name in enumerate(names):
        match = re.fullmatch(r"(.*_)?([xX])", name)
        if match is None:
            continue
        partner = (match.group(1) or "") + ("y" if match.group(2) == "x" else "Y")
        if partner in positions:
            pairs.append((i, positions[partner]))
    if 2 * len(pairs) != len(names):
        return None
    return pairs


KIND_TRAINING: dict[str, KindTraining] = {}


def register_kind_training(kind: KindTraining) -> KindTraining:
    """Add ``kind`` to :data:`KIND_TRAINING`; its runtime kind (``edgereg.core.kinds``) must exist."""
    target_kind(kind.name)
    if kind.name in KIND_TRAINING:
        raise EdgeregError(f"kind {kind.name!r} is registered twice for training")
    KIND_TRAINING[kind.name] = kind
    return kind


for _kind in (
    Scalar("scalar", single_target=True, unit_space=True, losses=("mse", "huber", "mse_logmse"),
           transform_fields=("lo", "hi"), bounded=True, round_crop=True, colour_reading=True,
           small_input_models=("base_seed004",)),
    Vector("vector", transform_fields=("mean", "std"), colour_reading=True, small_input_models=("base_seed004",)),
    Distribution("distribution", head="location", loss="soft_ce", unit_space=True,
                 losses=("mse", "huber", "mse_logmse", "soft_ce", "kl"), round_crop=True, colour_reading=True,
                 bins=True),
    Coords("coords", head="soft_argmax", unit_space=True, invariant=False, losses=("mse", "huber", "mse_logmse")),
    Angle("angle", single_target=True, outputs_per_target=2, invariant=False, r2=False, round_crop=True),
    Count("count", loss="poisson", losses=("poisson", "mse", "huber"), transform_fields=("mean",),
          round_crop=True, translate_ok=False),
):
    register_kind_training(_kind)


def kind_training(kind: str | KindTraining | TargetKind) -> KindTraining:
    """The training object for a kind name (a kind object is looked up by its name).

    Raises:
        EdgeregError: a kind training does not know, with the closest known one.
    """
    if isinstance(kind, KindTraining):
        return kind
    name = kind.name if isinstance(kind, TargetKind) else kind
    found = KIND_TRAINING.get(name) if isinstance(name, str) else None
    if found is None:
        raise EdgeregError(f"unknown kind {kind!r}{did_you_mean(str(name), tuple(KIND_TRAINING))}; "
                           f"expected one of {', '.join(KIND_TRAINING)}")
    return found


__all__ = ["KIND_TRAINING", "SUM_TOLERANCE", "Angle", "Coords", "Count", "Distribution", "KindTraining", "Scalar",
           "Vector",
           "coord_pairs", "kind_training", "register_kind_training"]
