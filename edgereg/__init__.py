"""edgereg: compact image regressors that run where the camera is.

The runtime package: numpy, numba, onnxruntime and OpenCV only; it never imports torch.
Public names are imported lazily so that `edgereg --help` starts fast.
"""

from __future__ import annotations

import os as _os
from typing import TYPE_CHECKING

from edgereg._lazy import lazy_exports

__version__ = "0.1.0"

# OpenCV's own pixel cap, the back-stop behind edgereg's header checks (edgereg.preprocess.decode):
# OpenCV reads it once, when the cv2 library loads, so it is set here, before any edgereg module
# imports cv2. A value in the environment wins. 1 << 28 = 268 MP.
_os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(1 << 28))

if TYPE_CHECKING:  # the names for type checkers and IDEs; at run time __getattr__ imports them
    from edgereg.core.card import ModelCard, read_card
    from edgereg.core.predictor import Predictions, Predictor
    from edgereg.errors import EdgeregError

__all__ = ["Predictor", "Predictions", "ModelCard", "read_card", "EdgeregError"]

_LAZY = {
    "Predictor": "edgereg.core.predictor",
    "Predictions": "edgereg.core.predictor",
    "ModelCard": "edgereg.core.card",
    "read_card": "edgereg.core.card",
    "EdgeregError": "edgereg.errors",
}

__getattr__ = lazy_exports(__name__, _LAZY)
