"""The output row of a reading: its columns and their order, in one place.

Every engine writes the same row for an image (folder scoring, the Ray engine, the Python API's
``Predictions.rows``; ``edgereg serve`` sends the same numbers grouped by field,
:func:`reading_by_field`):

``path``, then for each target ``name`` (followed by ``name_lo`` and ``name_hi`` with intervals),
then ``name_spread`` for each target (with TTA), then ``flags``, then the audit columns
(``edgereg.lab.audit.AUDIT_COLUMNS``, with ``--audit``).

Values are Python floats in physical units (``None`` in a withheld row); ``flags`` is a tuple of
flag names. How rows become bytes (CSV or JSONL) is ``edgereg.batch.encoding``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def prediction_columns(names: Sequence[str], *, with_spread: bool, with_interval: bool = False,
                       audit: Sequence[str] = ()) -> tuple[str, ...]:
    """The output columns for target ``names``: ``path``, each target (followed by ``name_lo``,
    ``name_hi`` with intervals), each ``name_spread`` (with TTA), ``flags``, then the ``audit``
    columns (``edgereg.lab.audit.AUDIT_COLUMNS`` with --audit)."""
    return ("path", *value_columns(names, with_spread=with_spread, with_interval=with_interval), "flags", *audit)


def value_columns(names: Sequence[str], *, with_spread: bool, with_interval: bool = False) -> tuple[str, ...]:
    """The number columns of a row (between ``path`` and ``flags``), in order."""
    targets = tuple(c for name in names for c in ((name, f"{name}_lo", f"{name}_hi") if with_interval else (name,)))
    spread = tuple(f"{name}_spread" for name in names) if with_spread else ()
    return (*targets, *spread)


def reading_values(names: Sequence[str], values: np.ndarray, spread: np.ndarray | None = None,
                   lo: np.ndarray | None = None, hi: np.ndarray | None = None) -> dict[str, float]:
    """The number columns of one reading: ``{name: value, name_lo: lo, name_hi: hi, ...,
    name_spread: spread, ...}`` (bounds only when ``lo`` and ``hi`` are given, spreads only with
    ``spread``), in the column order of :func:`value_columns`.

    Args:
        names: the T target names.
        values: (T,) float reading in physical units.
        spread: (T,) float TTA spread, or None without TTA.
        lo, hi: (T,) float interval bounds, or None without intervals.
    """
    row: dict[str, float] = {}
    for j, name in enumerate(names):
        row[name] = float(values[j])
        if lo is not None and hi is not None:
            row[f"{name}_lo"] = float(lo[j])
            row[f"{name}_hi"] = float(hi[j])
    if spread is not None:
        row.update((f"{name}_spread", float(s)) for name, s in zip(names, spread))
    return row


def reading_by_field(names: Sequence[str], values: np.ndarray, spread: np.ndarray | None = None,
                     lo: np.ndarray | None = None, hi: np.ndarray | None = None) -> dict[str, dict[str, float] | None]:
    """The numbers of one reading grouped by field, as ``edgereg serve`` sends them (``/api/predict``):
    ``{"value": {name: value}, "spread": {name: spread} or None, "lo": {...} or None, "hi": {...} or
    None}``; the same numbers as :func:`reading_values` (arguments as there)."""
    def by_name(array: np.ndarray | None) -> dict[str, float] | None:
        return None if array is None else {name: float(array[j]) for j, name in enumerate(names)}

    return {"value": by_name(values), "spread": by_name(spread), "lo": by_name(lo), "hi": by_name(hi)}


def prediction_row(key: str, numbers: Mapping[str, float | None], flags: Sequence[str],
                   audit: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One output row: ``path`` = ``key``, the ``numbers`` (from :func:`reading_values` or
    :func:`withheld_values`), ``flags`` as a tuple, then the ``audit`` fields when given."""
    row: dict[str, Any] = {"path": key, **numbers, "flags": tuple(flags)}
    if audit is not None:
        row.update(audit)
    return row


def withheld_values(names: Sequence[str], *, with_spread: bool, with_interval: bool = False) -> dict[str, None]:
    """The number columns of a withheld reading (the quality gate kept it back): all None."""
    return dict.fromkeys(value_columns(names, with_spread=with_spread, with_interval=with_interval))


__all__ = ["prediction_columns", "prediction_row", "reading_by_field", "reading_values", "value_columns",
           "withheld_values"]
