"""What the dataset loader and the metrics do per target kind, as one frozen object per kind (numpy only).

The runtime's kinds (:mod:`edgereg.core.kinds`) say how readings are reduced, compared and shown;
training's (``edgereg.training.targets.kind_training``) how a network learns them. This module holds the
torch-free part both the runtime and training need, keyed on the same name (``kind_data(name)``):

=============  ==============================  ===============================  =================
kind           dataset checks                  training units                   errors
=============  ==============================  ===============================  =================
scalar         one column                      as in the csv                    pred - true
vector         -                               as in the csv                    pred - true
distribution   rows >= 0 summing to 1          as in the csv                    pred - true
coords         x, y or P_x, P_y pairs          [0, 1] of the crop, x then y     per point (pixels)
angle          one column                      degrees in [0, 360)              on the circle
count          whole numbers >= 0              as in the csv                    pred - true
=============  ==============================  ===============================  =================

The dataset loader (:mod:`edgereg.data.dataset`) checks and converts targets with it; the metrics
(:mod:`edgereg.data.metrics`) take errors and column statistics from it.

To add a kind: its runtime object in ``edgereg/core/kinds.py``, its object here (a subclass of
:class:`KindData` overriding what differs, added to ``KIND_DATA``) and its training object in
``training/targets/kind_training.py``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edgereg.core import angles
from edgereg.core.angles import circular_difference
from edgereg.core.kinds import KindSide, KindTable, TargetKind
from edgereg.errors import DatasetError

SUM_TOLERANCE = 1e-3  # how far from 1 a row of a distribution may sum (rounding in the csv)


@dataclass(frozen=True)
class KindData(KindSide):
    """The dataset's and the metrics' behaviour of a kind; this base class is the plain-number one.

    Attributes:
        name: the kind's name (the card's ``kind``).
        single_target: the kind reads exactly one column.
        r2: R² is a meaningful per-target metric (not on the circle).
        bins: targets are the bins of one distribution (reports show per-bin errors, not groups).
    """

    name: str
    single_target: bool = False
    r2: bool = True
    bins: bool = False

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
class Distribution(KindData):
    """Probabilities per bin: non-negative rows summing to 1."""

    def check_targets(self, names, targets, csv_name, lines):
        super().check_targets(names, targets, csv_name, lines)
        sums = targets.sum(axis=1)
        worst = int(np.argmax(np.abs(sums - 1.0)))
        if targets.min() < 0 or abs(sums[worst] - 1.0) > SUM_TOLERANCE:
            raise DatasetError(f"kind 'distribution' needs non-negative rows that sum to 1; {csv_name} "
                               f"line {lines[worst]} sums to {sums[worst]:.6g}; fix the row or use "
                               f"--kind vector")


@dataclass(frozen=True)
class Coords(KindData):
    """(x, y) points: source pixels in the csv, [0, 1] of the model input for training."""

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

    def per_sample(self, squared):
        return squared.reshape(len(squared), -1, 2).sum(axis=2).mean(axis=1)  # (N, 2K) -> (N, K, 2)


@dataclass(frozen=True)
class Angle(KindData):
    """One direction in degrees, compared on the circle."""

    def to_training_units(self, names, targets, boxes):
        return names, np.mod(targets, 360.0)

    def errors(self, y_true, y_pred):
        return circular_difference(y_pred, y_true)

    def column_mean(self, values):
        """Circular mean in degrees per column, in [0, 360)."""
        return np.mod(angles.circular_mean(np.asarray(values, dtype=np.float64)), 360.0)

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
class Count(KindData):
    """Non-negative whole numbers (particles in a photo)."""

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


KIND_DATA: KindTable[KindData] = KindTable("datasets and metrics", KindData)
register_kind_data = KIND_DATA.register

for _kind in (
    KindData("scalar", single_target=True),
    KindData("vector"),
    Distribution("distribution", bins=True),
    Coords("coords"),
    Angle("angle", single_target=True, r2=False),
    Count("count"),
):
    register_kind_data(_kind)


def kind_data(kind: str | KindData | TargetKind) -> KindData:
    """The dataset and metrics object for a kind name (a kind object, runtime or training, is looked up
    by its name).

    Raises:
        EdgeregError: a kind this module does not know, with the closest known one.
    """
    return KIND_DATA.lookup(kind)


__all__ = ["KIND_DATA", "SUM_TOLERANCE", "Angle", "Coords", "Count", "Distribution", "KindData",
           "coord_pairs", "kind_data", "register_kind_data"]
