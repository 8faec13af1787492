"""Fitting what :mod:`edgereg.lab` applies: calibration to reference standards, limits, the validation plot.

Needs the ``lab`` extra (scipy for t and F quantiles and isotonic fits, onnx for the card rewrite,
matplotlib for the plot). Modules: ``standards`` (reading a folder of standards), ``calibration``
(fitting a calibration curve), ``validation`` (limits of blank, detection and quantitation,
precision, linearity), ``plot`` (the one-page validation figure).
"""

from __future__ import annotations

__all__ = ["json_safe", "read_standards"]

_LAZY = {
    "read_standards": "edgereg.lab.fit.standards",
    "json_safe": "edgereg.lab.fit.validation",
}


def __getattr__(name: str):
    """Import a public name's module on first use (keeps `import edgereg.lab.fit` cheap and cycle-free)."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
