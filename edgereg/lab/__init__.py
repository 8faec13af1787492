"""Lab-grade readings, applied at read time: calibration to standards, conformal intervals, limits, audit.

Numpy only. Modules: ``readout`` (:class:`LabReadout`: the network's readings -> calibrated values,
bounds and lab flags, one pass per batch), ``calibration`` and ``limits`` and ``intervals`` (the card
sections they read), ``standard_check`` (a reading of a known standard checked against its
value), ``audit`` (the audit trail of a reading), ``_kernel`` (the per-reading arithmetic, the same as
the generated C). Fitting calibrations and limits needs the ``lab`` extra and lives in
:mod:`edgereg.lab.fit`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgereg._lazy import lazy_exports

if TYPE_CHECKING:  # the names for type checkers and IDEs; at run time __getattr__ imports them
    from edgereg.lab.audit import AuditTrail
    from edgereg.lab.calibration import parse_calibration
    from edgereg.lab.intervals import parse_intervals
    from edgereg.lab.limits import parse_validation
    from edgereg.lab.readout import LAB_FLAGS, LabReadout
    from edgereg.lab.standard_check import StandardCheck

__all__ = [
    "AuditTrail", "LAB_FLAGS", "LabReadout", "StandardCheck",
    "parse_calibration", "parse_intervals", "parse_validation",
]

_LAZY = {
    "LabReadout": "edgereg.lab.readout",
    "LAB_FLAGS": "edgereg.lab.readout",
    "AuditTrail": "edgereg.lab.audit",
    "StandardCheck": "edgereg.lab.standard_check",
    "parse_intervals": "edgereg.lab.intervals",
    "parse_calibration": "edgereg.lab.calibration",
    "parse_validation": "edgereg.lab.limits",
}

__getattr__ = lazy_exports(__name__, _LAZY)
