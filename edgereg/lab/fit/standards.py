"""Photos of reference standards read by a model: the input of ``edgereg calibrate`` and ``validate``.

A standards folder is an ordinary dataset folder: ``labels.csv`` with ``path``, one column per
target the standards certify (a subset of the model's targets; blanks have the value 0), and an
optional ``group`` (the physical standard, when several photos are replicates of one). Replicates
are photos of the same standard (same reference value). Bad rows are skipped and listed, as
everywhere in edgereg (``--strict`` makes them fatal).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgereg.errors import DatasetError
from edgereg.lab.audit import files_digest


@dataclass(frozen=True)
class StandardReadings:
    """A model's readings of standards, beside their reference values.

    Attributes:
        names: the K targets the standards certify (in the model's order).
        reference: (N, K) float64 reference values.
        readings: (N, K) float64 the model's readings of the same targets.
        paths: N image paths as listed in labels.csv.
        groups: (N,) str standard ids, or None.
        root: the standards folder.
        digest: SHA-256 over labels.csv and every image (``edgereg.lab.audit.files_digest``).
        skipped: ``(line, path, reason)`` of rows left out.
        lo, hi: (N, K) float64 interval bounds of the readings, or None without intervals.
    """

    names: tuple[str, ...]
    reference: np.ndarray
    readings: np.ndarray
    paths: tuple[str, ...]
    groups: np.ndarray | None
    root: Path
    digest: str
    skipped: tuple[tuple[int, str, str], ...]
    lo: np.ndarray | None = None
    hi: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.reference)

    def column(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(readings (N,), reference (N,)) of one target."""
        j = self.names.index(name)
        return self.readings[:, j], self.reference[:, j]

    def provenance(self) -> dict:
        """What the card records about the standards."""
        levels = {name: int(len(np.unique(self.reference[:, j]))) for j, name in enumerate(self.names)}
        return {"path": str(self.root), "sha256": self.digest, "n": len(self), "levels": levels,
                "skipped": len(self.skipped)}


def read_standards(predictor, folder: str | os.PathLike, *, strict: bool = False) -> StandardReadings:
    """Read every standard photo with ``predictor`` (an ``edgereg.Predictor``; its calibration
    setting decides whether the readings are the network's or calibrated).

    Raises:
        DatasetError: no labels.csv, no column for any of the model's targets, or no usable row.
    """
    from edgereg.data.dataset import load_dataset
    from edgereg.preprocess import CropBox

    csv_path = _labels_csv(folder)
    header = _header(csv_path)
    names = tuple(n for n in predictor.names if n in header)
    if not names:
        raise DatasetError(f"'{csv_path}' has no column for any of the model's targets {list(predictor.names)} "
                           f"(columns: {', '.join(header)}); name the reference column like the target")
    if not predictor.card.target_kind.calibrated:
        raise DatasetError(f"standards certify scalar or vector readings; this model reads {predictor.card.kind!r}")
    dataset = load_dataset(csv_path, config=predictor.config, targets=list(names), strict=strict, cache=False)
    boxes = [CropBox(*map(float, box)) for box in dataset.crop_boxes]
    result = predictor.predict_prepared(dataset.images, boxes)
    columns = [predictor.names.index(n) for n in dataset.names]
    root = csv_path.parent
    digest = files_digest(root, [csv_path.name, *dataset.paths])
    return StandardReadings(names=tuple(dataset.names), reference=np.asarray(dataset.targets, dtype=np.float64),
                            readings=result.values[:, columns], paths=tuple(map(str, dataset.paths)),
                            groups=dataset.groups, root=root, digest=digest, skipped=tuple(dataset.skipped),
                            lo=None if result.lo is None else result.lo[:, columns],
                            hi=None if result.hi is None else result.hi[:, columns])


def _labels_csv(folder: str | os.PathLike) -> Path:
    """The labels.csv of a standards folder (or the csv itself)."""
    path = Path(folder)
    csv_path = path if path.suffix.lower() == ".csv" else path / "labels.csv"
    if not csv_path.is_file():
        raise DatasetError(f"no labels.csv in '{path}': a standards folder holds labels.csv (path, one column per "
                           "target with the reference value, optional group) and the photos")
    return csv_path


def _header(csv_path: Path) -> list[str]:
    import csv

    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as handle:
            return [cell.strip() for cell in next(csv.reader(handle), [])]
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read '{csv_path}': {exc}") from None


__all__ = ["StandardReadings", "read_standards"]
