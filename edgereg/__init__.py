"""edgereg: compact image regressors that run where the camera is.

The runtime package: numpy, numba, onnxruntime and OpenCV only; it never imports torch.
Public names are imported lazily so that `edgereg --help` starts fast.
"""

from __future__ import annotations

import os as _os

__version__ = "0.1.0"

# OpenCV's own pixel cap, the back-stop behind edgereg's header checks (edgereg.preprocess.decode):
# OpenCV reads it once, when the cv2 library loads, so it is set here, before any edgereg module
# imports cv2. A value in the environment wins. 1 << 28 = 268 MP.
_os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(1 << 28))
__all__ = ["Predictor", "Predictions", "ModelCard", "read_card", "EdgeregError"]

_LAZY = {
    "Predictor": "edgereg.core.predictor",
    "Predictions": "edgereg.core.predictor",
    "ModelCard": "edgereg.core.card",
    "read_card": "edgereg.core.card",
    "EdgeregError": "edgereg.errors",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'edgereg' has no attribute {name!r}")
