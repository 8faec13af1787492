"""The preprocessing configuration: the card's preprocessing facts as one frozen value."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgereg.core.card import ModelCard, PreprocessingFacts, check_preprocessing


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
        check_preprocessing(self)  # the card's rules (edgereg.core.card), one definition for both

    @classmethod
    def from_card(cls, card: ModelCard) -> PreprocessConfig:
        return cls(input_size=tuple(card.input_size), channels=card.channels, crop=card.crop,
                   roi=card.roi, mean=tuple(card.mean), std=tuple(card.std), fill=float(card.fill),
                   decode=card.decode)

    def affine(self) -> tuple[np.ndarray, np.ndarray]:
        """(scale, offset), each (C,) float32, so that ``normalized = pixel * scale + offset``."""
        std = np.asarray(self.std, dtype=np.float64)
        mean = np.asarray(self.mean, dtype=np.float64)
        return (1.0 / (255.0 * std)).astype(np.float32), (-mean / std).astype(np.float32)
