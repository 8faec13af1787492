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
fitted fields, the target encoding and the output link (:mod:`edgereg.training.targets.regressor` calls
them) and how targets move with the geometric augmentation. The dataset's target checks and units
and the per-element errors the metrics use are torch-free and shared with the runtime: they are
:mod:`edgereg.data.kinds` (``kind_data(name)``).

The module loads without torch (``edgereg synth`` uses it on machines without it); the methods
that compute on tensors import torch themselves.

To add a kind: its runtime object in ``edgereg/core/kinds.py``, its dataset and metrics object in
``edgereg/data/kinds.py`` and its training object here (a subclass of :class:`KindTraining`
overriding what differs, added to ``KIND_TRAINING``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from edgereg.core.kinds import KindSide, KindTable, TargetKind
from edgereg.errors import DatasetError, EdgeregError, ShapeError

if TYPE_CHECKING:
    import torch
    from torch import nn


class FittedTransform(Protocol):
    """The fitted fields of an output transform (``edgereg.training.targets.regressor.OutputTransform``) the
    kinds read: per-target tuples in physical units, empty where the kind fits none."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    lo: tuple[float, ...]
    hi: tuple[float, ...]


@dataclass(frozen=True)
class KindTraining(KindSide):
    """Training behaviour of a kind; this base class is the plain-number behaviour (``vector``).

    Attributes:
        name: the kind's name (the card's ``kind``).
        head: the default head style (``edgereg.training.targets.heads.HEAD_STYLES``).
        loss: the default loss (``edgereg.training.targets.losses.LOSSES``).
        losses: every loss that fits the kind's encoded targets.
        unit_space: encoded targets lie in [0, 1] (Huber's default delta is 0.1 there, else 1).
        outputs_per_target: raw outputs per physical target (2 for an angle's (sin, cos)).
        invariant: rotations and flips of the image leave the targets unchanged (rotation-invariant
            models and invariance augmentation apply).
        transform_fields: the ``OutputTransform`` fields fitted on the training split.
        bounded: targets lie in a range (``--range``) the output is squashed into.
        round_crop: round samples on plain corners get a circle crop (the mask hides what rotations
            invent at the corners); kinds whose targets may depend on every pixel keep the frame.
        colour_reading: the kind reads a colour, so reference normalisation is tried (``--reference auto``).
        small_input_models: extra race candidates for small whole-frame inputs (``edgereg.training.selection.race``).
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
    transform_fields: tuple[str, ...] = ()
    bounded: bool = False
    round_crop: bool = False
    colour_reading: bool = False
    small_input_models: tuple[str, ...] = ()
    translate_ok: bool = True

    @property
    def paired_outputs(self) -> bool:
        """Raw outputs come in pairs ((x, y) points, (sin, cos) of an angle)."""
        return self.target.xy_points or self.outputs_per_target == 2

    # --- output transform ---------------------------------------------------------------------
    def fit(self, targets: np.ndarray, value_range) -> dict[str, tuple[float, ...]]:
        """The transform's fitted fields from training targets ``(N, T) float64`` in physical units."""
        return {}

    def encode(self, y: torch.Tensor, transform: FittedTransform) -> torch.Tensor:
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

    def output_constants(self, transform: FittedTransform) -> dict[str, np.ndarray]:
        """Constants of the output layer, ``name -> (T,)``; they become buffers of shape (1, T)."""
        return {}

    def output(self, layer: nn.Module, raw: torch.Tensor) -> torch.Tensor:
        """Raw ``(B, n_outputs)`` -> physical ``(B, T)``; ``layer`` holds :meth:`output_constants`."""
        return raw

    def init_bias(self, layer: nn.Module) -> None:
        """Start a linear output layer's bias at the centre of the kind's range (0 already is)."""

    # --- augmentation -------------------------------------------------------------------------
    def move_targets(self, targets: torch.Tensor, angles: torch.Tensor, flips: torch.Tensor,
                     shifts: torch.Tensor, size: torch.Size) -> torch.Tensor:
        """Targets ``(B, T)`` of images rotated by ``angles (B,)`` degrees, mirrored where ``flips
        (B,)`` and shifted by ``shifts (B, 2)`` pixels, images of ``size`` (H, W)."""
        return targets

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

@dataclass(frozen=True)
class Coords(KindTraining):
    """(x, y) points in [0, 1] of the model input; they move with the image."""

    def output(self, layer, raw):
        return raw.clamp(0.0, 1.0)

    def init_bias(self, layer):
        import torch

        if getattr(layer, "bias", None) is not None:
            torch.nn.init.constant_(layer.bias, 0.5)  # the image centre instead of the corner

    def move_targets(self, targets, angles, flips, shifts, size):
        from edgereg.training.fitting.warp import move_points  # torch: only when coords move

        return move_points(targets, angles, flips, shifts, size)

@dataclass(frozen=True)
class Angle(KindTraining):
    """One direction in degrees, learnt as a (sin, cos) pair."""

    def encode(self, y, transform):
        import torch

        radians = torch.deg2rad(y)
        pairs = torch.stack([torch.sin(radians), torch.cos(radians)], dim=2)  # (N,T) -> (N,T,2)
        return pairs.flatten(1)  # (N,T,2) -> (N,2T)

    def output(self, layer, raw):
        from edgereg.training.targets.angle_link import degrees_from_sin_cos

        pairs = raw.reshape(-1, layer.n_targets, 2)  # (B,2T) -> (B,T,2): (sin, cos) per target
        return degrees_from_sin_cos(pairs[:, :, 0], pairs[:, :, 1])

    def move_targets(self, targets, angles, flips, shifts, size):
        import torch

        flipped = torch.where(flips.to(targets.device).unsqueeze(1), 180.0 - targets, targets)  # (B,) -> (B,1)
        return torch.remainder(flipped + angles.to(targets.device).unsqueeze(1), 360.0)  # (B,) -> (B,1)

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


KIND_TRAINING: KindTable[KindTraining] = KindTable("training", KindTraining)
register_kind_training = KIND_TRAINING.register

for _kind in (
    Scalar("scalar", unit_space=True, losses=("mse", "huber", "mse_logmse"),
           transform_fields=("lo", "hi"), bounded=True, round_crop=True, colour_reading=True,
           small_input_models=("base_seed004",)),
    Vector("vector", transform_fields=("mean", "std"), colour_reading=True, small_input_models=("base_seed004",)),
    Distribution("distribution", head="location", loss="soft_ce", unit_space=True,
                 losses=("mse", "huber", "mse_logmse", "soft_ce", "kl"), round_crop=True, colour_reading=True),
    Coords("coords", head="soft_argmax", unit_space=True, invariant=False, losses=("mse", "huber", "mse_logmse")),
    Angle("angle", outputs_per_target=2, invariant=False, round_crop=True),
    Count("count", loss="poisson", losses=("poisson", "mse", "huber"), transform_fields=("mean",),
          round_crop=True, translate_ok=False),
):
    register_kind_training(_kind)


def kind_training(kind: str | KindTraining | TargetKind) -> KindTraining:
    """The training object for a kind name (a kind object is looked up by its name).

    Raises:
        EdgeregError: a kind training does not know, with the closest known one.
    """
    return KIND_TRAINING.lookup(kind)


__all__ = ["KIND_TRAINING", "Angle", "Coords", "Count", "Distribution", "FittedTransform", "KindTraining", "Scalar",
           "Vector", "kind_training", "register_kind_training"]
