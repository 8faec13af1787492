"""Uploaded images -> frames for the model, through the same checks as folder scoring.

Each upload is read with :func:`edgereg.preprocess.load_frame`, the function folder scoring and
training use: the card's decode policy (a reduced JPEG decode where the crop allows it), the
crop and the resize; empty, truncated and corrupt images, and images whose header declares more
than ``max_pixels``, are refused before decoding with the reasons ``edgereg infer PATH`` gives
(:func:`edgereg.batch.failures.failure_reason`). A bad upload never fails the others: it gets its
reason, and the good ones are read.

Decodes of all requests share one :class:`~edgereg.preprocess.decode.DecodeBudget`
(:data:`UPLOAD_DECODE_BUDGET`): however many requests arrive at once, the images being decoded
hold at most its bytes; the others wait for their turn.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgereg.batch.failures import failure_reason
from edgereg.preprocess import CropBox, PreprocessConfig, load_frame
from edgereg.preprocess.decode import DEFAULT_MAX_PIXELS, DecodeBudget

UPLOAD_DECODE_BUDGET = DecodeBudget()  # shared by every request of the process (1 GiB decoding at once)


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


def prepare_uploads(uploads: list[Upload], config: PreprocessConfig, *,
                    max_pixels: int | None = DEFAULT_MAX_PIXELS,
                    budget: DecodeBudget = UPLOAD_DECODE_BUDGET) -> PreparedUploads:
    """Decode, check, crop and resize uploads (blocking: call from a worker thread).

    Args:
        uploads: the request's images.
        config: the model's preprocessing.
        max_pixels: refuse images whose header declares more pixels (None: no limit of ours).
        budget: decoded bytes shared with the other requests' decodes (default: the process's).
    """
    frames, boxes, index, errors = [], [], [], []
    for position, upload in enumerate(uploads):
        try:
            frame, box = load_frame(upload.data, config, source=upload.name, max_pixels=max_pixels, budget=budget)
        except Exception as exc:
            errors.append((position, upload.name, failure_reason(exc, upload.name)))
            continue
        frames.append(frame)
        boxes.append(box)
        index.append(position)
    height, width = config.input_size
    stacked = np.stack(frames) if frames else np.empty((0, height, width, 3), np.uint8)  # (B, H, W, 3)
    return PreparedUploads(stacked, boxes, index, errors)
