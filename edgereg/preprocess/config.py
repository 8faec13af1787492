"""The preprocessing configuration: the card's preprocessing facts as one frozen value, and their rules.

The rules of the preprocessing fields (:func:`check_preprocessing`) and what follows from them
(:class:`PreprocessingFacts`) live here, for a :class:`PreprocessConfig` and the model card
(``edgereg.core.card.ModelCard``) alike: the card imports them from this module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgereg.errors import CardError, did_you_mean

CROPS = ("none", "center", "circle")
CHANNELS = ("rgb", "gray")
DECODES = ("full", "reduced")  # image files: every pixel, or JPEG DCT-domain downscaling (preprocess.frames)


class PreprocessingFacts:
    """What follows from the preprocessing fields, for ModelCard and PreprocessConfig alike.

    Both declare these fields (the card as dataclass fields, with its own defaults); the annotations
    here only say what the rules and :meth:`PreprocessConfig.from_card` read.
    """

    input_size: tuple[int, int]
    channels: str
    crop: str
    roi: tuple[float, float, float] | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    fill: float
    decode: str

    @property
    def n_channels(self) -> int:
        return 3 if self.channels == "rgb" else 1

    @property
    def circle(self) -> bool:
        return self.crop == "circle"


def is_finite_number(x: Any) -> bool:
    """A finite int or float (not a bool); an int too large for a float is not a number here."""
    if not isinstance(x, (int, float)) or isinstance(x, bool):
        return False
    try:
        return math.isfinite(x)
    except OverflowError:  # an integer beyond float range (JSON allows 1e400 written out)
        return False


def field_error(name: str, expected: str, got: Any) -> CardError:
    """The error of a card or config field that breaks its rule: ``field 'std' must be ..., got ...``."""
    return CardError(f"field {name!r} must be {expected}, got {got!r}")


def check_preprocessing(fields: PreprocessingFacts) -> None:
    """The rules of the preprocessing fields, for a ``edgereg.core.card.ModelCard`` and a
    :class:`PreprocessConfig` alike (both have these attributes): channels, crop, roi, mean, std,
    fill and decode. ``input_size`` limits belong to the card (8..4096 pixels).

    Raises:
        CardError: the first field that breaks its rule, with what it must be.
    """
    if fields.channels not in CHANNELS:
        raise CardError(f"field 'channels' is {fields.channels!r}{did_you_mean(str(fields.channels), CHANNELS)}; "
                        "expected 'rgb' or 'gray'")
    if fields.crop not in CROPS:
        raise CardError(f"field 'crop' is {fields.crop!r}{did_you_mean(str(fields.crop), CROPS)}; "
                        f"expected one of {', '.join(CROPS)}")
    roi = fields.roi
    if roi is not None and (len(roi) != 3 or not all(is_finite_number(v) for v in roi) or roi[2] <= 0):
        raise field_error("roi", "[cx, cy, r] with r > 0, or null", roi)
    n = fields.n_channels
    if len(fields.mean) != n or not all(is_finite_number(v) for v in fields.mean):
        raise field_error("mean", f"{n} numbers for channels {fields.channels!r}", fields.mean)
    if len(fields.std) != n or not all(is_finite_number(v) and v > 0 for v in fields.std):
        raise field_error("std", f"{n} positive numbers for channels {fields.channels!r}", fields.std)
    if not is_finite_number(fields.fill):
        raise field_error("fill", "a finite number", fields.fill)
    if fields.decode not in DECODES:
        raise CardError(f"field 'decode' is {fields.decode!r}{did_you_mean(str(fields.decode), DECODES)}; "
                        f"expected one of {', '.join(DECODES)}")


@dataclass(frozen=True)
class PreprocessConfig(PreprocessingFacts):
    """How a decoded frame becomes the model's input tensor.

    Attributes:
        input_size: (H, W) of the model input in pixels.
        channels: "rgb" (3 channels, RGB order) or "gray" (1 channel, OpenCV's luma weights).
        crop: "none" (resize the whole frame), "center" (largest centred square) or "circle"
            (centre square plus a circular mask).
        roi: fixed (cx, cy, r) in source pixels for an analyzer whose sample never moves, or None.
        mean: per-channel mean of pixel values scaled to [0, 1].
        std: per-channel standard deviation, > 0.
        fill: normalized value written outside the circle.
        decode: how image files are decoded: "full" (every pixel, then crop and resize) or
            "reduced" (JPEGs whose crop is at least twice the input are decoded at 1/2, 1/4 or 1/8
            resolution in the DCT domain, then cropped and resized: see ``edgereg.preprocess.frames``).
    """

    input_size: tuple[int, int] = (64, 64)  # model input (H, W)
    channels: str = "rgb"  # the model's colour space; gray saves 3x input bandwidth
    crop: str = "center"  # what part of the frame the model sees
    roi: tuple[float, float, float] | None = None  # fixed sample position, overrides centring
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)  # normalization, from the training set
    std: tuple[float, ...] = (0.25, 0.25, 0.25)  # normalization, from the training set
    fill: float = 0.0  # outside-circle value: 0 = the mean colour after normalization
    decode: str = "full"  # "full" or "reduced": the decode policy the model was trained with

    def __post_init__(self) -> None:
        check_preprocessing(self)  # the card's rules too (edgereg.core.card): one definition for both

    @classmethod
    def from_card(cls, card: PreprocessingFacts) -> PreprocessConfig:
        """The preprocessing of a model card (``edgereg.core.card.ModelCard``)."""
        height, width = card.input_size
        return cls(input_size=(height, width), channels=card.channels, crop=card.crop,
                   roi=card.roi, mean=tuple(card.mean), std=tuple(card.std), fill=float(card.fill),
                   decode=card.decode)

    def affine(self) -> tuple[np.ndarray, np.ndarray]:
        """(scale, offset), each (C,) float32, so that ``normalized = pixel * scale + offset``."""
        std = np.asarray(self.std, dtype=np.float64)
        mean = np.asarray(self.mean, dtype=np.float64)
        return (1.0 / (255.0 * std)).astype(np.float32), (-mean / std).astype(np.float32)
