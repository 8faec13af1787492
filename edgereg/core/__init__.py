"""What makes a reading: the model card, the target kinds, the predictor and the ONNX Runtime session.

Modules: ``card`` (the model card a model carries in its ONNX metadata), ``kinds`` (what each target
kind means at read time: range, units, reduction), ``angles`` (circular arithmetic), ``tta`` (test-time
augmentation specs), ``reduce`` (averaging TTA readings per kind), ``providers`` (ONNX Runtime execution
providers), ``predictor`` (images -> readings, the one entry point of the runtime), ``platform_info``
(the line that says what ran). numpy, numba, OpenCV and ONNX Runtime only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgereg._lazy import lazy_exports

if TYPE_CHECKING:  # the names for type checkers and IDEs; at run time __getattr__ imports them
    from edgereg.core.card import ModelCard, read_card
    from edgereg.core.kinds import TargetKind, target_kind
    from edgereg.core.predictor import Predictions, Predictor
    from edgereg.core.tta import TTASpec, parse_tta

__all__ = ["ModelCard", "Predictions", "Predictor", "TTASpec", "TargetKind", "parse_tta", "read_card", "target_kind"]

_LAZY = {
    "ModelCard": "edgereg.core.card",
    "read_card": "edgereg.core.card",
    "Predictor": "edgereg.core.predictor",
    "Predictions": "edgereg.core.predictor",
    "TargetKind": "edgereg.core.kinds",
    "target_kind": "edgereg.core.kinds",
    "TTASpec": "edgereg.core.tta",
    "parse_tta": "edgereg.core.tta",
}

__getattr__ = lazy_exports(__name__, _LAZY)
