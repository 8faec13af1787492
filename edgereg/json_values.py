"""Numbers for strict JSON: NaN and infinities become ``null``, numpy values become Python ones.

JSON has no NaN or infinity; every JSON edgereg writes (run records, validation and calibration
reports, JSONL rows, ``edgereg serve``'s ``/api/predict``, ``/events`` and ``/api/history``, the
``--jsonl`` readout) goes through these helpers, so a non-finite reading is ``null`` everywhere.

Numbers are never rounded here: a reading has the same value, to the last bit of its float64, on
``/events`` (and ``--jsonl``) as on ``/api/predict`` (``repr`` of the float, the shortest text that
reads back to the same number). A display rounds for itself (the page, the overlay).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np


def finite_or_none(value: float | None) -> float | None:
    """``value`` as a Python float, or None when it is None, NaN or infinite."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def finite_values(mapping: Mapping[str, float] | None) -> dict[str, float | None] | None:
    """``{target: value}`` with each value through :func:`finite_or_none`; None stays None."""
    if mapping is None:
        return None
    return {name: finite_or_none(value) for name, value in mapping.items()}


def json_safe(value: Any) -> Any:
    """``value`` ready for ``json.dumps(..., allow_nan=False)``, recursively: dict keys as str,
    tuples as lists, numpy arrays as lists and numpy scalars as Python numbers, NaN and infinities
    as None. Anything else is returned as it is."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


__all__ = ["finite_or_none", "finite_values", "json_safe"]
