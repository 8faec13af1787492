"""Preprocessing: decode (OpenCV) -> crop/resize (OpenCV) -> one fused numba kernel per batch."""

from edgereg.preprocess.batch import preprocess_batch
from edgereg.preprocess.config import PreprocessConfig
from edgereg.preprocess.decode import decode_image, default_threads, read_image, read_images
from edgereg.preprocess.frames import load_frame, read_frame
from edgereg.preprocess.geometry import CropBox, check_frame, crop_box, crop_resize, prepare_frames

__all__ = [
    "CropBox", "PreprocessConfig", "check_frame", "crop_box", "crop_resize", "decode_image",
    "default_threads", "load_frame", "prepare_frames", "preprocess_batch", "read_frame", "read_image", "read_images",
]
