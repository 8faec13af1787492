"""The audit trail of a reading (``--audit``): which model, card, calibration and software made it, when,
from what, and how good the frame was.

Columns (CSV) / keys (JSONL, live), in this order:

* ``model_sha256``: SHA-256 of the model file's bytes (card included), read once when the run starts.
* ``card_version``: the card's format version.
* ``calibration_id``, ``calibration_date``: the card's calibration to standards (empty when none, or
  when ``--no-calibration`` switched it off).
* ``validation_id``: the validation whose limits were applied (empty when none).
* ``edgereg_version``: the runtime's version.
* ``confidence``: the level of the ``_lo``/``_hi`` bounds (empty without intervals).
* ``timestamp``: UTC time of the reading, ISO 8601 with milliseconds (``2026-11-30T10:12:03.123Z``).
* ``source``: the absolute path of the image (``video.mp4#frame=N`` for video frames) or, live,
  ``<camera>#frame=N``.
* ``quality_brightness`` (mean gray, 0..255), ``quality_clipped`` (fraction of pixels >= 250),
  ``quality_sharpness`` (variance of the Laplacian): measured on the crop the model reads, at the
  model's input size, so that the same numbers mean the same thing in folder scoring and live.

A reading traces back to its model by hashing the file (``sha256sum model.onnx``) and to its
calibration through ``edgereg info model.onnx`` (the card's calibration id, date and the standards'
SHA-256).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np

from edgereg import __version__
from edgereg.core.card import ModelCard
from edgereg.files import sha256_file

AUDIT_COLUMNS = ("model_sha256", "card_version", "calibration_id", "calibration_date", "validation_id",
                 "edgereg_version", "confidence", "timestamp", "source", "quality_brightness", "quality_clipped",
                 "quality_sharpness")
CLIPPED_LEVEL = 250  # the quality gate's level of a saturated pixel


def files_digest(root: str | os.PathLike, paths: Iterable[str | os.PathLike]) -> str:
    """One SHA-256 over files: their paths relative to ``root`` and their contents' SHA-256, sorted.

    The same set of files gives the same digest wherever the folder lives; renaming, adding,
    removing or changing a file changes it.
    """
    root = Path(root)
    lines = []
    for path in paths:
        path = Path(path)
        name = path.relative_to(root).as_posix() if path.is_absolute() and path.is_relative_to(root) else str(path)
        lines.append(f"{sha256_file(root / path if not path.is_absolute() else path)}  {name}\n")
    return hashlib.sha256("".join(sorted(lines)).encode()).hexdigest()


def utc_timestamp(seconds: float | None = None) -> str:
    """ISO 8601 UTC with milliseconds and ``Z``: ``2026-11-30T10:12:03.123Z``."""
    moment = _dt.datetime.now(_dt.timezone.utc) if seconds is None else \
        _dt.datetime.fromtimestamp(seconds, _dt.timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def frame_quality(frame: np.ndarray) -> tuple[float, float, float]:
    """(brightness 0..255, clipped fraction 0..1, sharpness) of a (h, w, 3) uint8 BGR crop."""
    gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY) if frame.ndim == 3 else frame
    clipped = float(np.count_nonzero(gray >= CLIPPED_LEVEL)) / max(gray.size, 1)
    return float(gray.mean()), clipped, float(cv2.Laplacian(gray, cv2.CV_64F).var())


class AuditTrail:
    """The per-run part of the audit columns (hashing the model once), and the per-reading rest.

    Args:
        model_path: the model file the predictor loaded.
        card: the card in use.
        calibration_id, calibration_date, validation_id: what the runtime applied (None: nothing).
        confidence: the interval level in use, or None.
    """

    def __init__(self, model_path: str | os.PathLike, card: ModelCard, *, calibration_id: str | None,
                 calibration_date: str | None, validation_id: str | None, confidence: float | None) -> None:
        self.fixed = {
            "model_sha256": sha256_file(model_path),
            "card_version": card.format_version,
            "calibration_id": calibration_id or "",
            "calibration_date": calibration_date or "",
            "validation_id": validation_id or "",
            "edgereg_version": __version__,
            "confidence": "" if confidence is None else confidence,
        }

    @classmethod
    def for_predictor(cls, predictor) -> AuditTrail:
        """The trail of an ``edgereg.Predictor`` (what its LabReadout applies)."""
        lab = predictor.lab
        calibration = lab.calibration
        return cls(predictor.path, predictor.card,
                   calibration_id=calibration.id if calibration else None,
                   calibration_date=calibration.date if calibration else None,
                   validation_id=lab.validation.id if lab.validation is not None else None,
                   confidence=lab.level if lab.has_intervals else None)

    def fields(self, source: str, frame: np.ndarray, *, timestamp: float | None = None) -> dict:
        """The audit columns of one reading of ``frame`` ((h, w, 3) uint8 BGR, the model's crop)."""
        brightness, clipped, sharpness = frame_quality(frame)
        return {**self.fixed, "timestamp": utc_timestamp(timestamp), "source": source,
                "quality_brightness": round(brightness, 3), "quality_clipped": round(clipped, 5),
                "quality_sharpness": round(sharpness, 3)}


def source_of(key: str) -> str:
    """The absolute form of a scoring key (a path, or ``path#frame=N`` for a video frame)."""
    path, sep, frame = key.partition("#frame=")
    absolute = os.path.abspath(path) if path else path
    return absolute + (sep + frame if sep else "")


__all__ = ["AUDIT_COLUMNS", "AuditTrail", "files_digest", "frame_quality", "sha256_file", "source_of",
           "utc_timestamp"]
