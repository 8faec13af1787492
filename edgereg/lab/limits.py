"""Validation limits in the card (``card.validation``, written by ``edgereg validate``), parsed.

numpy-free and cheap to import: reading a card parses this section (``edgereg.core.card``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from edgereg.lab._section import Bad, read_section


@dataclass(frozen=True)
class Limits:
    """Validated limits of one target in its (calibrated) units; None where not measured."""

    lob: float | None = None
    lod: float | None = None
    loq: float | None = None
    range: tuple[float, float] | None = None


@dataclass(frozen=True)
class Validation:
    """``card.validation`` parsed (the limits the runtime applies)."""

    id: str
    date: str
    calibration_id: str | None
    targets: Mapping[str, Limits]


def parse_validation(data: Mapping[str, Any], targets: Sequence[str]) -> Validation | None:
    """Parse and check ``card.validation``; None for an empty section.

    Raises:
        CardError: a malformed section.
    """
    def parse(section: Mapping[str, Any], bad: Bad) -> Validation:
        def number(value: Any) -> float | None:
            if value is None:
                return None
            value = float(value)
            if not math.isfinite(value):
                raise bad(f"limits must be finite numbers or null, got {value}")
            return value

        limits = {}
        for name, entry in section["targets"].items():
            if name not in targets:
                raise bad(f"target {name!r} is not one of the model's {list(targets)}")
            span = entry.get("range")
            limits[name] = Limits(lob=number(entry.get("lob")), lod=number(entry.get("lod")),
                                  loq=number(entry.get("loq")),
                                  range=None if span is None else (float(span[0]), float(span[1])))
        return Validation(id=str(section["id"]), date=str(section["date"]),
                          calibration_id=section.get("calibration_id"), targets=limits)

    return read_section(data, name="validation", fix="validate again with `edgereg validate MODEL STANDARDS`",
                        parse=parse)


__all__ = ["Limits", "Validation", "parse_validation"]
