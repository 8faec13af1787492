"""Fitting what :mod:`edgereg.lab` applies: calibration to reference standards, limits, the validation plot.

Needs the ``lab`` extra (scipy for t and F quantiles and isotonic fits, onnx for the card rewrite,
matplotlib for the plot). Modules: ``standards`` (reading a folder of standards), ``calibration``
(fitting a calibration curve), ``validation`` (limits of blank, detection and quantitation,
precision, linearity), ``plot`` (the one-page validation figure).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgereg._lazy import lazy_exports

if TYPE_CHECKING:  # the names for type checkers and IDEs; at run time __getattr__ imports them
    from edgereg.lab.fit.standards import read_standards

__all__ = ["read_standards"]

_LAZY = {
    "read_standards": "edgereg.lab.fit.standards",
}

__getattr__ = lazy_exports(__name__, _LAZY)
