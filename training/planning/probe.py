"""Probing a dataset before loading it: labels.csv's header and a few decoded images.

:func:`probe_sources` reads the header and decodes a handful of images spread over the rows: their
sizes, whether they are gray, and small gray thumbnails for the crop test
(:func:`edgereg.training.planning.geometry.corners_are_background`). What is chosen from the probe
(input size, crop, channels) is decided in :mod:`edgereg.training.planning.input_size` and
:mod:`edgereg.training.planning.geometry`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edgereg.data.dataset import LABELS_FILE, confine, kind_by_names, read_labels, target_columns
from edgereg.errors import DatasetError, EdgeregError
from edgereg.preprocess import read_image
from edgereg.training.config import SMALL_IMAGE


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

