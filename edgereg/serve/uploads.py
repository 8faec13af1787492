"""Uploaded images -> frames for the model, through the same checks as folder scoring.

Each upload is decoded with :func:`edgereg.preprocess.decode_image` (empty, truncated, corrupt
images, and images whose header declares more than ``max_pixels``, are refused before decoding
with the same reasons as ``edgereg infer PATH``), then cropped and
resized with :func:`edgereg.preprocess.crop_resize`. A bad upload never fails the others: it gets
its reason, and the good ones are read.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgereg.errors import EdgeregError
from edgereg.preprocess import CropBox, PreprocessConfig, crop_resize, decode_image
from edgereg.preprocess.decode import DEFAULT_MAX_PIXELS


@dataclass(frozen=True)
class Upload:
    """One uploaded file: its name (the form's filename, or ``image``) and its bytes."""

    name: str
    data: bytes


@dataclass(frozen=True)
class PreparedUploads:
    """The uploads the model can read, and why the others cannot.

    Attributes:
        frames: (B, H, W, 3) uint8 BGR at the model input size, for the readable uploads.
        boxes: B CropBoxes in source pixels.
        index: B positions of the readable uploads in the request.
        errors: ``[(position, name, reason), ...]`` for the others.
    """

    frames: np.ndarray
    boxes: list[CropBox]
    index: list[int]
    errors: list[tuple[int, str, str]]


def _reason(exc: BaseException, name: str) -> str:
    """The error's one line without the ``'name': `` prefix that decode errors start with."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    prefix = f"'{name}': "
    text = text[len(prefix):] if text.startswith(prefix) else text
    return text if isinstance(exc, EdgeregError) else f"{type(exc).__name__}: {text}"


def prepare_uploads(uploads: list[Upload], config: PreprocessConfig, *,
                    max_pixels: int | None = DEFAULT_MAX_PIXELS) -> PreparedUploads:
    """Decode, check, crop and resize uploads (blocking: call from a worker thread).

    Args:
        uploads: the request's images.
        config: the model's preprocessing.
        max_pixels: refuse images whose header declares more pixels (None: no limit of ours).
    """
    frames, boxes, index, errors = [], [], [], []
    for position, upload in enumerate(uploads):
        try:
            image = decode_image(upload.data, source=upload.name, max_pixels=max_pixels)
            frame, box = crop_resize(image, config)
        except Exception as exc:  # noqa: BLE001 - a bad upload is reported, never a server error
            errors.append((position, upload.name, _reason(exc, upload.name)))
            continue
        frames.append(frame)
        boxes.append(box)
        index.append(position)
    height, width = config.input_size
    stacked = np.stack(frames) if frames else np.empty((0, height, width, 3), np.uint8)  # (B, H, W, 3)
    return PreparedUploads(stacked, boxes, index, errors)
