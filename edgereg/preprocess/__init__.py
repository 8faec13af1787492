"""Preprocessing: decode (OpenCV) -> crop/resize (OpenCV) -> one fused numba kernel per batch.

Modules: ``config`` (:class:`PreprocessConfig`, the preprocessing facts of a model card and their
rules), ``decode`` (image files -> (H, W, 3) uint8 BGR, header checks and pixel caps first),
``frames`` (a file or frame cropped to the model's input), ``geometry`` (crop boxes, crop + resize),
``kernels`` and ``batch`` (the fused numba pass -> (B*V, C, H, W) float32), ``reference`` (the
plain-numpy reference of the kernels), ``small`` (small inputs read whole). The names below are
imported on first use, so reading a card (which needs ``config``) does not load OpenCV or numba.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgereg._lazy import lazy_exports

if TYPE_CHECKING:  # the names for type checkers and IDEs; at run time __getattr__ imports them
    from edgereg.preprocess.batch import preprocess_batch
    from edgereg.preprocess.config import PreprocessConfig
    from edgereg.preprocess.decode import decode_image, default_threads, read_image, read_images
    from edgereg.preprocess.frames import load_frame, read_frame
    from edgereg.preprocess.geometry import CropBox, check_frame, crop_box, crop_resize, prepare_frames

__all__ = [
    "CropBox", "PreprocessConfig", "check_frame", "crop_box", "crop_resize", "decode_image",
    "default_threads", "load_frame", "prepare_frames", "preprocess_batch", "read_frame", "read_image", "read_images",
]

_LAZY = {
    "preprocess_batch": "edgereg.preprocess.batch",
    "PreprocessConfig": "edgereg.preprocess.config",
    **{name: "edgereg.preprocess.decode" for name in ("decode_image", "default_threads", "read_image", "read_images")},
    **{name: "edgereg.preprocess.frames" for name in ("load_frame", "read_frame")},
    **{name: "edgereg.preprocess.geometry"
       for name in ("CropBox", "check_frame", "crop_box", "crop_resize", "prepare_frames")},
}

__getattr__ = lazy_exports(__name__, _LAZY)
