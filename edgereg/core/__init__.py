"""What makes a reading: the model card, the target kinds, the predictor and the ONNX Runtime session.

Modules: ``card`` (the model card a model carries in its ONNX metadata), ``kinds`` (what each target
kind means at read time: range, units, reduction), ``angles`` (circular arithmetic), ``tta`` (test-time
augmentation specs), ``reduce`` (averaging TTA readings per kind), ``providers`` (ONNX Runtime execution
providers), ``predictor`` (images -> readings, the one entry point of the runtime), ``platform_info``
(the line that says what ran). numpy, numba, OpenCV and ONNX Runtime only.
"""

from __future__ import annotations

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


def __getattr__(name: str):
    """Import a public name's module on first use (keeps `import edgereg.core` cheap and cycle-free)."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
