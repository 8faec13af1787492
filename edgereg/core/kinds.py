"""Target kinds: what a model reads, as one object per kind, in one place.

A card's ``kind`` names one of the objects below (``target_kind(card.kind)``, or ``card.target_kind``).
Everything the runtime and the exporter do differently per kind is a method or an attribute here,
so the rest of the code asks the kind instead of comparing its name:

============  ===================  =============================  ==================  ==========
kind          user's units         TTA reduction over views       live ``stable`` tol  intervals
============  ===================  =============================  ==================  ==========
scalar        physical             mean, std                      1% of range          as is
vector        physical, per target mean, std                      1% of range          as is
distribution  probability per bin  mean renormalized to 1, std    0.01                 clipped [0, 1]
coords        source pixels        un-transform (u, v), mean, std 1 pixel              as is
angle         degrees [0, 360)     un-rotate/un-flip, circular    1 degree             wrapped
count         expected count >= 0  mean, std                      1% of range          as is
============  ===================  =============================  ==================  ==========

The network's own output units differ from the user's only for coords: ``[0, 1]`` of the model
input, mapped to source pixels through each image's crop (``edgereg.preprocess.geometry``).

The kinds are frozen: comparing and hashing them is by value, and nothing here holds state.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from edgereg.core.angles import circular_difference, circular_mean, circular_reduce, to_full_turn, wrap_degrees
from edgereg.core.reduce import unmap_angles, unmap_coords
from edgereg.core.tta import TTASpec
from edgereg.errors import CardError, EdgeregError, TTAError, did_you_mean

if TYPE_CHECKING:
    from edgereg.preprocess.geometry import CropBox


@dataclass(frozen=True)
class TargetKind:
    """A kind of target; this base class is the plain-number behaviour of ``scalar`` and ``vector``.

    Attributes:
        name: the card's ``kind`` string.
        units: what a reading is measured in, for people ("physical units", "degrees", ...).
        stable_tolerance: the live ``stable`` indicator's tolerance (max - min over the window) in
            the reading's units, or None for 1% of the card's range (of the reading when unbounded).
        circular: readings are angles in degrees, compared on the circle.
        calibrated: readings can be calibrated to reference standards and certified (``edgereg.lab.calibration``).
        range_flagged: a card ``range`` bounds the readings; near its ends they get ``out_of_range``.
        xy_points: targets are (x, y) pairs; the network reads ``[0, 1]`` of the model input and the
            user gets source pixels, so converting needs each image's crop box.
        value_difficulty: the conformal difficulty may grow with the reading itself
            (``edgereg.export.uncertainty.conformal``); not for positions and directions.
        lab_code: the kind's code in the lab post-processing kernels, Python and C
            (0 none, 1 wrap intervals on the circle, 2 clip intervals to probabilities).
        min_raw_outputs: the narrowest raw network output a model of this kind has (one value,
            two bins, one (x, y) point, one (sin, cos) pair).
    """

    name: str
    units: str = "physical units"
    stable_tolerance: float | None = None
    circular: bool = False
    calibrated: bool = True
    range_flagged: bool = True
    xy_points: bool = False
    value_difficulty: bool = True
    lab_code: int = 0
    min_raw_outputs: int = 1

    def __str__(self) -> str:
        return self.name

    # --- what a card may declare --------------------------------------------------------------
    def targets_problem(self, targets: Sequence[str]) -> str | None:
        """What the target names must be for this kind, when ``targets`` break it; None when fine."""
        return None

    # --- TTA ------------------------------------------------------------------------------------
    def reduce_views(self, views: np.ndarray, spec: TTASpec) -> tuple[np.ndarray, np.ndarray]:
        """Reduce ``views: (B, V, T) float64`` (V = ``spec.n``) to ``(values (B, T), spread (B, T))``.

        Raises:
            TTAError: V is not the number of views ``spec`` makes.
        """
        if views.shape[1] != spec.n:
            raise TTAError(f"expected {spec.n} views per image for TTA {spec}, got {views.shape[1]}")
        return self._reduce(views, spec)

    def _reduce(self, views: np.ndarray, spec: TTASpec) -> tuple[np.ndarray, np.ndarray]:
        return views.mean(axis=1), views.std(axis=1)

    # --- comparing readings ---------------------------------------------------------------------
    def residual(self, truth: np.ndarray, reading: np.ndarray) -> np.ndarray:
        """``truth - reading`` as float64, in the reading's units (the short way round for angles)."""
        return np.asarray(truth, dtype=np.float64) - np.asarray(reading, dtype=np.float64)

    def agreement_scale(self, expected: np.ndarray) -> np.ndarray:
        """(T,) the scale an exported model's difference from ``expected (N, T)`` is relative to."""
        return np.maximum(np.abs(expected).max(axis=0), np.finfo(np.float32).tiny)

    def spans(self, n_targets: int, target_range, boxes: Sequence[CropBox]) -> np.ndarray:
        """(B, T) float64: the scale each target's TTA spread is compared with (NaN: none known).

        Args:
            n_targets: T.
            target_range: the card's ``range``, ((lo, hi) per target) or None.
            boxes: each image's crop box in source pixels (only coords read them; others may be None).
        """
        spans = np.full((len(boxes), n_targets), np.nan)
        if target_range is not None:
            spans[:] = [hi - lo for lo, hi in target_range]
        return spans

    # --- units ----------------------------------------------------------------------------------
    def to_user_units(self, values: np.ndarray, crop_boxes: np.ndarray | None) -> np.ndarray:
        """Network-output units -> the user's units, ``(N, T) -> (N, T) float64``.

        ``crop_boxes``: (N, 4) float64 (x0, y0, w, h) of each image's crop; only coords need them.
        """
        return np.asarray(values, dtype=np.float64)

    def to_source(self, values: np.ndarray, spread: np.ndarray | None, boxes: Sequence[CropBox] | None,
                  input_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """Reduced network readings -> the user's units: ``(values, spread, scale)``.

        Args:
            values, spread: (B, T) float64 (spread None without TTA).
            boxes: each image's crop box in source pixels; None or empty: the model input itself.
            input_size: (H, W) of the model input.

        Returns:
            values and spread in the user's units, and ``scale`` (B, T), the per-reading scale the
            conformal intervals are relative to (None: 1).
        """
        return values, spread, None

    def reading_scale(self, sides: np.ndarray, n_targets: int) -> np.ndarray | None:
        """(N, T) per-reading interval scale from crop ``sides (N, 2)`` (w, h); None: 1."""
        return None

    # --- prediction intervals -------------------------------------------------------------------
    def interval_bounds(self, lo: np.ndarray, hi: np.ndarray, width: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(lo, hi) of conformal intervals, kept in the reading's domain."""
        return lo, hi

    def interval_width(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """(N, T) width of the intervals [lo, hi] in the reading's units."""
        return hi - lo

    def covered(self, truth: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """(N, T) bool: truth inside [lo, hi]."""
        truth = np.asarray(truth, dtype=np.float64)
        return (truth >= lo) & (truth <= hi)

    # --- smoothing over frames ------------------------------------------------------------------
    def median(self, history: np.ndarray) -> np.ndarray:
        """The per-target median of ``history: (n, T)`` readings -> ``(T,)``."""
        return np.median(history, axis=0)

    def ema_state(self, values: np.ndarray) -> np.ndarray:
        """A reading ``(T,)`` as the state an exponential moving average averages."""
        return values

    def ema_reading(self, state: np.ndarray) -> np.ndarray:
        """The reading ``(T,)`` an averaged state stands for (a copy)."""
        return state.copy()


@dataclass(frozen=True)
class Distribution(TargetKind):
    """Probabilities per bin, summing to 1."""

    def targets_problem(self, targets: Sequence[str]) -> str | None:
        return "at least 2 bins for kind 'distribution'" if len(targets) < 2 else None

    def _reduce(self, views: np.ndarray, spec: TTASpec) -> tuple[np.ndarray, np.ndarray]:
        mean = views.mean(axis=1)
        mean = mean / np.maximum(mean.sum(axis=1, keepdims=True), 1e-12)
        return mean, views.std(axis=1)

    def spans(self, n_targets: int, target_range, boxes: Sequence[CropBox]) -> np.ndarray:
        return np.full((len(boxes), n_targets), 1.0)

    def interval_bounds(self, lo, hi, width):
        return np.clip(lo, 0.0, 1.0), np.clip(hi, 0.0, 1.0)

    def median(self, history: np.ndarray) -> np.ndarray:
        median = np.median(history, axis=0)
        return median / max(float(median.sum()), 1e-12)


@dataclass(frozen=True)
class Coords(TargetKind):
    """(x, y) points: the network reads [0, 1] of the model input, the user gets source pixels."""

    def targets_problem(self, targets: Sequence[str]) -> str | None:
        return "x,y pairs for kind 'coords'" if len(targets) % 2 else None

    def _reduce(self, views: np.ndarray, spec: TTASpec) -> tuple[np.ndarray, np.ndarray]:
        unmapped = unmap_coords(views, spec)
        return unmapped.mean(axis=1), unmapped.std(axis=1)

    def spans(self, n_targets: int, target_range, boxes: Sequence[CropBox]) -> np.ndarray:
        sides = np.array([[box.w, box.h] for box in boxes], dtype=np.float64).reshape(len(boxes), 2)  # (B, 2)
        return self.reading_scale(sides, n_targets)

    def to_user_units(self, values: np.ndarray, crop_boxes: np.ndarray | None) -> np.ndarray:
        from edgereg.preprocess.geometry import uv_to_source_pixels  # OpenCV: only when coords are read

        if crop_boxes is None:
            raise EdgeregError("coords need each image's crop box to be reported in source pixels; got none")
        return uv_to_source_pixels(values, crop_boxes)

    def to_source(self, values, spread, boxes, input_size):
        from edgereg.preprocess.geometry import uv_to_source_pixels  # OpenCV: only when coords are read

        height, width = input_size
        rows = [box.as_array() for box in boxes] if boxes else [[0.0, 0.0, float(width), float(height)]] * len(values)
        crop_boxes = np.array(rows, dtype=np.float64).reshape(len(rows), 4)  # (B, 4) x0, y0, w, h
        sides = crop_boxes[:, 2:4]  # (B, 2) w, h
        mapped = uv_to_source_pixels(values, crop_boxes)
        if spread is not None:
            spread = (spread.reshape(len(spread), -1, 2) * sides[:, None, :]).reshape(spread.shape)  # px
        return mapped, spread, self.reading_scale(sides, values.shape[1])

    def reading_scale(self, sides: np.ndarray, n_targets: int) -> np.ndarray:
        return np.tile(sides, n_targets // 2)  # (N, 2) -> (N, T): crop side of x, y, x, y, ...


@dataclass(frozen=True)
class Angle(TargetKind):
    """One direction in degrees, counter-clockwise from +x, in [0, 360)."""

    def targets_problem(self, targets: Sequence[str]) -> str | None:
        return "one name for kind 'angle'" if len(targets) != 1 else None

    def _reduce(self, views: np.ndarray, spec: TTASpec) -> tuple[np.ndarray, np.ndarray]:
        return circular_reduce(unmap_angles(views, spec))

    def residual(self, truth: np.ndarray, reading: np.ndarray) -> np.ndarray:
        return circular_difference(truth, reading)

    def agreement_scale(self, expected: np.ndarray) -> np.ndarray:
        return np.full(expected.shape[1], 360.0)

    def spans(self, n_targets: int, target_range, boxes: Sequence[CropBox]) -> np.ndarray:
        return np.full((len(boxes), n_targets), 360.0)

    def interval_bounds(self, lo, hi, width):
        whole = ~(width < 360.0)
        return np.where(whole, 0.0, np.mod(lo, 360.0)), np.where(whole, 360.0, np.mod(hi, 360.0))

    def interval_width(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """hi - lo, going through 0 where lo > hi."""
        width = hi - lo
        return np.where(lo <= hi, width, width + 360.0)

    def covered(self, truth: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """Inside [lo, hi] on the circle: lo > hi wraps through 0; (0, 360) is the whole circle."""
        t = np.mod(np.asarray(truth, dtype=np.float64), 360.0)
        whole = (lo == 0.0) & (hi == 360.0)
        inside = np.where(lo <= hi, (t >= lo) & (t <= hi), (t >= lo) | (t <= hi))
        return inside | whole

    def median(self, history: np.ndarray) -> np.ndarray:
        """The median of the differences to the circular mean, added back to it, in [0, 360)."""
        centre = circular_mean(history)
        return to_full_turn(centre + np.median(wrap_degrees(history - centre), axis=0))

    def ema_state(self, values: np.ndarray) -> np.ndarray:
        radians = np.deg2rad(values)
        return np.stack([np.cos(radians), np.sin(radians)], axis=-1)  # (T,) -> (T, 2) unit vectors

    def ema_reading(self, state: np.ndarray) -> np.ndarray:
        return to_full_turn(np.rad2deg(np.arctan2(state[..., 1], state[..., 0])))


SCALAR = TargetKind("scalar")
VECTOR = TargetKind("vector")
# Counts (particles in a photo) read as plain numbers: the network's exp output is the expected count,
# a real number >= 0 (the mean over TTA views is one too), not rounded, so averaging, smoothing and
# intervals keep their meaning. Intervals are not clipped at 0 (the C lab kernel does not either).
COUNT = TargetKind("count", units="count")
DISTRIBUTION = Distribution("distribution", units="probability", stable_tolerance=0.01, calibrated=False,
                            range_flagged=False, lab_code=2, min_raw_outputs=2)
COORDS = Coords("coords", units="source pixels", stable_tolerance=1.0, calibrated=False, range_flagged=False,
                xy_points=True, value_difficulty=False, min_raw_outputs=2)
ANGLE = Angle("angle", units="degrees", stable_tolerance=1.0, circular=True, calibrated=False, range_flagged=False,
              value_difficulty=False, lab_code=1, min_raw_outputs=2)

KIND_BY_NAME: dict[str, TargetKind] = {k.name: k for k in (SCALAR, VECTOR, DISTRIBUTION, COORDS, ANGLE, COUNT)}
KIND_NAMES: tuple[str, ...] = tuple(KIND_BY_NAME)


def target_kind(kind: str | TargetKind) -> TargetKind:
    """The kind object for a card's ``kind`` string (a kind object is returned as it is).

    Raises:
        CardError: an unknown name, with the closest known one.
    """
    if isinstance(kind, TargetKind):
        return kind
    found = KIND_BY_NAME.get(kind) if isinstance(kind, str) else None
    if found is None:
        raise CardError(f"unknown target kind {kind!r}{did_you_mean(str(kind), KIND_NAMES)}; "
                        f"expected one of {', '.join(KIND_NAMES)}")
    return found


class KindSide:
    """Base of a per-kind object kept outside the runtime (``KindTraining``, ``KindData``): it prints
    as its kind's name and leads back to the runtime kind of that name."""

    name: str

    def __str__(self) -> str:
        return self.name

    @property
    def target(self) -> TargetKind:
        """The runtime kind of the same name."""
        return target_kind(self.name)


K = TypeVar("K", bound=KindSide)


class KindTable(dict[str, K]):
    """One object per target kind for one side of the project, keyed by the kind's name.

    The runtime's kinds (:data:`KIND_BY_NAME`) are the reference: training (``KindTraining``) and
    the dataset and metrics code (``KindData``) each keep a table of their own objects, registered
    once per runtime kind and looked up by name.

    Args:
        purpose: what the table is for, in messages ("training", "datasets and metrics").
        owner: the class of the table's objects (an instance passed to :meth:`lookup` is returned).
    """

    def __init__(self, purpose: str, owner: type) -> None:
        super().__init__()
        self.purpose = purpose
        self.owner = owner

    def register(self, kind: K) -> K:
        """Add ``kind`` (its ``name`` must be a runtime kind) and return it.

        Raises:
            CardError: not a runtime kind. EdgeregError: a second object for the same kind.
        """
        name = kind.name
        target_kind(name)
        if name in self:
            raise EdgeregError(f"kind {name!r} is registered twice for {self.purpose}")
        self[name] = kind
        return kind

    def lookup(self, kind: Any) -> K:
        """The table's object for a kind name or any kind object (looked up by its ``name``).

        Raises:
            EdgeregError: a kind the table does not hold, with the closest known one.
        """
        if isinstance(kind, self.owner):
            return kind  # type: ignore[return-value]  # an object of the table's own class
        name = kind if isinstance(kind, str) else getattr(kind, "name", None)
        found = self.get(name) if isinstance(name, str) else None
        if found is None:
            raise EdgeregError(f"unknown kind {kind!r}{did_you_mean(str(name), tuple(self))}; "
                               f"expected one of {', '.join(self)}")
        return found


__all__ = ["ANGLE", "COORDS", "COUNT", "DISTRIBUTION", "KIND_BY_NAME", "KIND_NAMES", "SCALAR", "VECTOR", "Angle",
           "Coords", "Distribution", "KindSide", "KindTable", "TargetKind", "target_kind"]
