"""Lab-grade readings, applied at read time: calibration to standards, conformal intervals, limits, audit.

Numpy only. Modules: ``readout`` (:class:`LabReadout`: the network's readings -> calibrated values,
bounds and lab flags, one pass per batch), ``calibration`` and ``limits`` and ``intervals`` (the card
sections they read), ``standard_check`` (a reading of a known standard checked against its
value), ``audit`` (the audit trail of a reading), ``_kernel`` (the per-reading arithmetic, the same as
the generated C). Fitting calibrations and limits needs the ``lab`` extra and lives in
:mod:`edgereg.lab.fit`.
"""

from __future__ import annotations

__all__ = ["AuditTrail", "LAB_FLAGS", "LabReadout", "StandardCheck", "parse_calibration", "parse_intervals", "parse_validation"]

_LAZY = {
    "LabReadout": "edgereg.lab.readout",
    "LAB_FLAGS": "edgereg.lab.readout",
    "AuditTrail": "edgereg.lab.audit",
    "StandardCheck": "edgereg.lab.standard_check",
    "parse_intervals": "edgereg.lab.intervals",
    "parse_calibration": "edgereg.lab.calibration",
    "parse_validation": "edgereg.lab.limits",
}


def __getattr__(name: str):
    """Import a public name's module on first use (keeps `import edgereg.lab` cheap and cycle-free)."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
