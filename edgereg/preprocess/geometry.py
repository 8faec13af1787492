"""Crop and resize: the geometric part of preprocessing, per image, with OpenCV."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from edgereg.errors import ShapeError
from edgereg.preprocess.config import PreprocessConfig


@dataclass(frozen=True)
class CropBox:
    """The region of the source frame the model saw, in source pixels.

    A model-input point at normalized (u, v) came from source pixel
    ``(x0 + u * w - 0.5, y0 + v * h - 0.5)`` (pixel centres at integers).
    """

    x0: float
    y0: float
    w: float
    h: float

    def to_source(self, uv: np.ndarray) -> np.ndarray:
        """Map normalized coords ``(..., 2)`` (u, v) of the model input to source pixels."""
        uv = np.asarray(uv, dtype=np.float64)
        pairs = uv.reshape(1, -1)  # (..., 2) -> (1, 2K)
        return uv_to_source_pixels(pairs, self.as_array()[None, :]).reshape(uv.shape)  # (1, 2K) -> (..., 2)

    def to_normalized(self, xy: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`to_source`: source pixels ``(..., 2)`` -> normalized (u, v)."""
        xy = np.asarray(xy, dtype=np.float64)
        out = np.empty_like(xy)
        out[..., 0] = (xy[..., 0] - self.x0 + 0.5) / self.w
        out[..., 1] = (xy[..., 1] - self.y0 + 0.5) / self.h
        return out

    def as_array(self) -> np.ndarray:
        return np.array([self.x0, self.y0, self.w, self.h], dtype=np.float64)


def uv_to_source_pixels(uv: np.ndarray, crop_boxes: np.ndarray) -> np.ndarray:
    """Map coords in [0, 1] of the model input to source-image pixels, one crop box per row.

    ``x = x0 + u * w - 0.5`` and ``y = y0 + v * h - 0.5`` (pixel centres at integers): the one
    definition of this mapping (docs/CONTRACTS.md); the generated C does the same arithmetic.

    Args:
        uv: (N, 2K) float, columns u0, v0, u1, v1, ...
        crop_boxes: (N, 4) float, (x0, y0, w, h) of each image's crop in source pixels.

    Returns:
        (N, 2K) float64 source pixels.

    Raises:
        ShapeError: the shapes do not pair up.
    """
    uv = np.asarray(uv, dtype=np.float64)
    boxes = np.asarray(crop_boxes, dtype=np.float64)
    if uv.ndim != 2 or uv.shape[1] % 2 or boxes.shape != (uv.shape[0], 4):
        raise ShapeError(f"expected uv (N, 2K) and crop_boxes (N, 4), got {uv.shape} and {boxes.shape}")
    pixels = np.empty_like(uv)
    pixels[:, 0::2] = boxes[:, 0:1] + uv[:, 0::2] * boxes[:, 2:3] - 0.5
    pixels[:, 1::2] = boxes[:, 1:2] + uv[:, 1::2] * boxes[:, 3:4] - 0.5
    return pixels


def check_frame(image: np.ndarray, *, source: str = "frame") -> np.ndarray:
    """Validate a decoded frame; a (H, W) gray frame is promoted to BGR.

    Returns:
        (H, W, 3) uint8, BGR.

    Raises:
        ShapeError: anything else, with expected vs got.
    """
    if not isinstance(image, np.ndarray):
        raise ShapeError(f"expected a numpy array (H, W, 3) uint8 BGR, got {type(image).__name__} from {source}")
    if image.dtype == np.uint8 and image.ndim == 2 and min(image.shape) > 0:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) == 0:
        raise ShapeError(f"expected (H, W, 3) uint8 BGR, got {image.shape} {image.dtype} from {source}")
    return image


def crop_box(height: int, width: int, config: PreprocessConfig) -> CropBox:
    """The source region for a (height, width) frame under ``config`` (see CropBox)."""
    if config.roi is not None:
        cx, cy, r = config.roi
        side = max(1, int(round(2 * r)))
        return CropBox(float(int(round(cx - r))), float(int(round(cy - r))), float(side), float(side))
    if config.crop == "none":
        return CropBox(0.0, 0.0, float(width), float(height))
    side = min(height, width)
    return CropBox(float((width - side) // 2), float((height - side) // 2), float(side), float(side))


def crop_resize(image: np.ndarray, config: PreprocessConfig) -> tuple[np.ndarray, CropBox]:
    """Crop a frame per ``config`` and resize it to the model input size.

    Resizing uses ``cv2.INTER_AREA`` when shrinking and ``cv2.INTER_LINEAR`` when enlarging. A ROI
    that reaches past the frame is padded with black.

    Args:
        image: (H, W, 3) uint8, BGR (or (H, W) uint8 gray).
        config: the preprocessing configuration.

    Returns:
        ((h, w, 3) uint8 BGR with (h, w) = config.input_size, CropBox in source pixels).
    """
    image = check_frame(image)
    height, width = image.shape[:2]
    box = crop_box(height, width, config)
    return crop_region(image, int(box.x0), int(box.y0), int(box.w), int(box.h), config.input_size), box


def crop_region(image: np.ndarray, x0: int, y0: int, w: int, h: int, size: tuple[int, int]) -> np.ndarray:
    """The region ``[x0, x0 + w) x [y0, y0 + h)`` of ``image`` (black beyond its edges), resized to ``size``.

    Args:
        image: (H, W, 3) uint8 BGR.
        size: (h, w) of the result; ``cv2.INTER_AREA`` when shrinking, ``cv2.INTER_LINEAR`` otherwise.

    Returns:
        (h, w, 3) uint8 BGR, C-contiguous.
    """
    height, width = image.shape[:2]
    if x0 < 0 or y0 < 0 or x0 + w > width or y0 + h > height:
        top, left = max(0, -y0), max(0, -x0)
        padded = cv2.copyMakeBorder(image, top, max(0, y0 + h - height), left, max(0, x0 + w - width),
                                    cv2.BORDER_CONSTANT, value=(0, 0, 0))
        region = padded[y0 + top: y0 + top + h, x0 + left: x0 + left + w]
    else:
        region = image[y0:y0 + h, x0:x0 + w]
    out_h, out_w = size
    if region.shape[0] == out_h and region.shape[1] == out_w:
        return np.ascontiguousarray(region)
    shrinking = region.shape[0] >= out_h and region.shape[1] >= out_w
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(region, (out_w, out_h), interpolation=interpolation)


def prepare_frames(images, config: PreprocessConfig) -> tuple[np.ndarray, list[CropBox]]:
    """Crop and resize a list of frames of any sizes into one batch.

    Returns:
        ((B, h, w, 3) uint8 BGR, list of B CropBox).
    """
    if isinstance(images, np.ndarray) and images.ndim == 4:
        images = list(images)
    out_h, out_w = config.input_size
    batch = np.empty((len(images), out_h, out_w, 3), dtype=np.uint8)
    boxes = []
    for i, image in enumerate(images):
        batch[i], box = crop_resize(image, config)
        boxes.append(box)
    return batch, boxes
