"""Each exported model's readings of the held-out images, made once per export and shared.

The int8 gate scores fp32 (and int8) on the validation and test images; the conformal intervals
need readings of the same images. :class:`ReadingCache` reads a (model file, images, TTA) once, as
deployed (``edgereg.Predictor``, CPU, no calibration, no intervals), and hands the same arrays to
the gate's metrics (:meth:`ReadingCache.metrics`) and to :func:`edgereg.export.uncertainty.conformal.add_intervals`
(:meth:`ReadingCache.part_readings`).

A cached reading is keyed by the model file's path, the TTA and a fingerprint of the images
(frames, targets, crop boxes and split name), so two ``EvalSet`` objects of the same rows share it.
A model file must not change while the cache is in use (the export writes each model once).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from edgereg.core.card import ModelCard
from edgereg.export.uncertainty.conformal import (
    ConformalParts,
    HeldOutReadings,
    PartReadings,
    read_held_out,
    reading_modes,
)


def images_key(evalset) -> str:
    """A fingerprint of an ``EvalSet``'s frames, targets, crop boxes and split name (hex)."""
    digest = hashlib.blake2b(digest_size=16)
    for array in (evalset.frames, evalset.targets, evalset.crop_boxes):
        if array is None:
            digest.update(b"none")
            continue
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.tobytes())
    digest.update(str(evalset.split).encode())
    return digest.hexdigest()


def readings_from_values(values: np.ndarray, evalset, card: ModelCard) -> HeldOutReadings:
    """No-TTA readings ``(N, T)`` of ``evalset`` made elsewhere (the gate) as :class:`HeldOutReadings`,
    exactly as :func:`edgereg.export.uncertainty.conformal.read_held_out` builds them."""
    scale = None
    if evalset.crop_boxes is not None:
        sides = np.asarray(evalset.crop_boxes, dtype=np.float64)[:, 2:4]  # (N, 2) w, h
        scale = card.target_kind.reading_scale(sides, len(card.targets))
    return HeldOutReadings(values=values, spread=None, truth=np.asarray(evalset.targets, np.float64), scale=scale,
                           split=evalset.split)


class ReadingCache:
    """Readings of held-out images by exported models, each made once (see the module docstring)."""

    def __init__(self) -> None:
        self._readings: dict[tuple[str, str, str], HeldOutReadings] = {}
        self.reads = 0  # how many times a model was actually run (the rest were cache hits)

    @staticmethod
    def _key(model_path: str | Path, evalset, tta: str) -> tuple[str, str, str]:
        return str(Path(model_path).resolve()), images_key(evalset), tta

    def read(self, model_path: str | Path, evalset, *, card: ModelCard, tta: str = "none") -> HeldOutReadings:
        """The model's readings of ``evalset`` with ``tta`` (read on the first request only)."""
        key = self._key(model_path, evalset, tta)
        if key not in self._readings:
            self._readings[key] = read_held_out(model_path, evalset, card=card, tta=tta)
            self.reads += 1
        return self._readings[key]

    def store(self, model_path: str | Path, evalset, values: np.ndarray, *, card: ModelCard) -> None:
        """Keep no-TTA readings ``(N, T)`` of ``evalset`` made elsewhere (the gate's int8 test readings)."""
        self._readings.setdefault(self._key(model_path, evalset, "none"), readings_from_values(values, evalset, card))

    def metrics(self, model_path: str | Path, evalset, *, card: ModelCard) -> dict:
        """``edgereg.export.int8.gate.evaluate``'s dict (metrics plus ``"split"``) from the cached no-TTA readings."""
        from edgereg.export.int8.gate import score

        values = self.read(model_path, evalset, card=card).values
        return {"split": evalset.split, **score(values, evalset, card)}

    def part_readings(self, model_path: str | Path, parts: ConformalParts, *, card: ModelCard,
                      fp32_path: str | Path | None = None) -> dict[str, PartReadings]:
        """{tta: :class:`PartReadings`} of the model on a conformal part's images, for every TTA
        :func:`edgereg.export.uncertainty.conformal.reading_modes` asks for (empty when the model gets no
        intervals). ``fp32_path``: the fp32 model, whose readings a refitted non-fp32 model's
        intervals also need."""
        if parts.none_reason is not None:
            return {}
        other = fp32_path is not None and Path(fp32_path) != Path(model_path)
        out = {}
        for tta in reading_modes(card, parts):
            fit = None if parts.fit is None else self.read(model_path, parts.fit, card=card, tta=tta)
            cal = self.read(model_path, parts.cal, card=card, tta=tta)
            fp32_fit = fp32_cal = None  # only where out-of-fold readings replace the model's own
            if other and fit is not None and parts.oof_fit is not None:
                fp32_fit = self.read(fp32_path, parts.fit, card=card, tta=tta)
            if other and parts.oof_cal is not None:
                fp32_cal = self.read(fp32_path, parts.cal, card=card, tta=tta)
            out[tta] = PartReadings(fit, cal, fp32_fit, fp32_cal)
        return out
