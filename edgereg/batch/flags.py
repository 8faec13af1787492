"""The flags of a reading (the ``flags`` column of an output row), judged from the card and the numbers.

What :func:`reading_flags` gives, in this order:

* ``out_of_range``: a target with a range in the card (scalar/vector) reads within
  ``OUT_OF_RANGE_MARGIN`` of the span from a limit, or beyond it. A bounded head saturates at its
  limits, so such a reading means "at or past the trained range", not the number shown.
* ``tta_disagreement``: with TTA, a target's spread (std across views) exceeds
  ``TTA_DISAGREEMENT_FRACTION`` of the target's span: its range (scalar/vector with a range), 1
  (distribution bins), 360 degrees (angle), or the side of the crop in source pixels (coords).
* ``not_finite``: the model returned NaN or infinity.

Then the predictor's own lab flags (``below_lod``, ``interval_wide``, ``unfamiliar``, ...) follow
(:func:`prediction_flags`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from edgereg.core.card import ModelCard
from edgereg.preprocess import CropBox

if TYPE_CHECKING:
    from edgereg.core.predictor import Predictions

OUT_OF_RANGE_MARGIN = 0.005  # fraction of the range span from a limit that counts as "at the limit"
TTA_DISAGREEMENT_FRACTION = 0.05  # spread above this fraction of the target's span is disagreement


def target_spans(card: ModelCard, boxes: list[CropBox]) -> np.ndarray:
    """(B, T) float64: the scale each target's spread is compared with (NaN: none known)."""
    return card.target_kind.spans(len(card.targets), card.range, boxes)


def prediction_flags(card: ModelCard, result: Predictions, boxes: list[CropBox]) -> list[tuple[str, ...]]:
    """The flags of each reading of ``result``: :func:`reading_flags` judged on the network's own
    readings (before a calibration to standards: ``out_of_range`` is about the network's head),
    then the lab flags the predictor attached (``below_lod``, ...)."""
    network = result.values if result.raw is None else result.raw
    flags = reading_flags(card, network, result.spread, target_spans(card, boxes))
    if not result.flags:
        return flags
    return [(*own, *lab) for own, lab in zip(flags, result.flags)]


def reading_flags(card: ModelCard, values: np.ndarray, spread: np.ndarray | None,
                  spans: np.ndarray) -> list[tuple[str, ...]]:
    """The flags of each reading (see the module docstring).

    Args:
        card: the model card (kind and ranges).
        values: (B, T) float64 readings in physical units.
        spread: (B, T) float64 TTA spread, or None without TTA.
        spans: (B, T) float64 from :func:`target_spans`.

    Returns:
        B tuples of flag names, in a fixed order.
    """
    not_finite = ~np.isfinite(values).all(axis=1)
    out_of_range = np.zeros(len(values), dtype=bool)
    if card.range is not None and card.target_kind.range_flagged:
        bounds = np.asarray(card.range, dtype=np.float64)  # (T, 2)
        margin = OUT_OF_RANGE_MARGIN * (bounds[:, 1] - bounds[:, 0])
        out_of_range = np.asarray(((values <= bounds[:, 0] + margin) | (values >= bounds[:, 1] - margin)).any(axis=1))
    disagreement = np.zeros(len(values), dtype=bool)
    if spread is not None:
        with np.errstate(invalid="ignore"):
            disagreement = np.asarray((spread > TTA_DISAGREEMENT_FRACTION * spans).any(axis=1))
    flags = []
    for i in range(len(values)):
        flags.append(tuple(name for name, on in (("out_of_range", out_of_range[i]),
                                                  ("tta_disagreement", disagreement[i]),
                                                  ("not_finite", not_finite[i])) if on))
    return flags


__all__ = ["OUT_OF_RANGE_MARGIN", "TTA_DISAGREEMENT_FRACTION", "prediction_flags", "reading_flags", "target_spans"]
