"""Image file -> model-sized frame, decoding only the pixels the model needs.

A 64x64 model reading a 480x640 photo uses one pixel in about 56 of the centre square; decoding all
of them is most of the work of folder scoring. Under the ``"reduced"`` decode policy (the card's
``decode`` field, ``PreprocessConfig.decode``) a JPEG whose crop is at least twice the model input
in both directions is decoded by libjpeg-turbo's scaled inverse DCT at 1/2, 1/4 or 1/8 of its size
(OpenCV's ``IMREAD_REDUCED_COLOR_*``): the largest factor that leaves the crop at least as large as
the model input. The crop is then taken in the reduced image and resized with ``INTER_AREA`` as
usual. Other formats, smaller crops and the ``"full"`` policy decode every pixel
(:func:`edgereg.preprocess.crop_resize`).

Training decodes its files with this same function, so a model sees the same pixels in training
and in deployment (a test holds them equal); the card records the policy, and a card without the
field (older models, trained on full decodes) means ``"full"``. Frames that arrive already decoded
(a camera, ``Predictor.predict``) are cropped and resized at full resolution under either policy:
the DCT-domain reduction is a box-like average of each s x s block, close to what ``INTER_AREA``
does, but not bit-identical.

Geometry. Reduced pixel i covers source pixels ``[i s, (i + 1) s)``, so with the crop taken at
reduced ``(x0r, y0r, wr, hr)`` the returned CropBox is ``(x0r s, y0r s, wr s, hr s)`` in source
pixels and the contract ``x_src = x0 + u w - 0.5`` holds exactly. The reduced box is the source
box divided by s and rounded, so the box can differ from the full-decode box by less than s / 2
source pixels; the CropBox reports the one used.

Measured on 480x640 JPEGs (quality 90), one thread, single process, shared 2-core machine: OpenCV
full decode 3.8-4.5 ms, OpenCV 1/4 decode 1.5-1.7 ms, simplejpeg (libjpeg-turbo) 1/4 decode
1.3-1.4 ms with bit-identical pixels. simplejpeg's ~15% is within this machine's noise and would be a
new dependency, so OpenCV is used.
"""

from __future__ import annotations

import os

import cv2
import numpy as np

from edgereg.preprocess.config import PreprocessConfig
from edgereg.preprocess.decode import (
    DEFAULT_MAX_PIXELS,
    DecodeBudget,
    decode_image,
    image_dimensions,
    max_file_bytes,
    read_file_bytes,
    read_images,
)
from edgereg.preprocess.geometry import CropBox, crop_box, crop_region, crop_resize

REDUCED_FLAGS = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) from a JPEG's start-of-frame header, or None when ``data`` is not a sizable JPEG.

    Only the marker segments up to the first SOFn are read (``edgereg.preprocess.decode``'s header
    parser); no pixel is decoded.
    """
    if data[:2] != b"\xff\xd8":
        return None
    size = image_dimensions(data)
    return None if size is None or not all(size) else (size[1], size[0])


def reduction(box_h: float, box_w: float, size: tuple[int, int]) -> int:
    """The DCT-domain scale factor for a crop of ``box_h x box_w`` source pixels: 8, 4, 2, or 1 (none).

    The largest s with the crop still at least the model input ``size`` (h, w) after dividing by s;
    s >= 2 needs a crop at least twice the input in both directions.
    """
    out_h, out_w = size
    for s in (8, 4, 2):
        if box_h / s >= out_h and box_w / s >= out_w:
            return s
    return 1


def load_frame(data: bytes, config: PreprocessConfig, *, source: str = "<bytes>",
               max_pixels: int | None = DEFAULT_MAX_PIXELS,
               budget: DecodeBudget | None = None) -> tuple[np.ndarray, CropBox]:
    """Decode encoded image bytes and crop/resize them to the model input, under ``config.decode``.

    Args:
        data: the file's bytes (JPEG, PNG, BMP, TIFF, ...).
        config: the model's preprocessing (``decode``: "full" or "reduced").
        source: a name for error messages (usually the path).
        max_pixels: refuse images whose header declares more pixels (``decode_image``).
        budget: decoded bytes shared with other decoder threads (``decode_image``; None: no wait).

    Returns:
        ((h, w, 3) uint8 BGR with (h, w) = config.input_size, CropBox in source pixels).

    Raises:
        DecodeError: empty, truncated or undecodable data.
    """
    size = jpeg_size(data) if config.decode == "reduced" else None
    if size is not None:
        height, width = size
        # The decoder applies EXIF orientation, which may swap the sides: take the smaller factor.
        s = min(reduction(*_box_sides(height, width, config), config.input_size),
                reduction(*_box_sides(width, height, config), config.input_size))
        if s > 1:
            reduced = decode_image(data, source=source, max_pixels=max_pixels, flags=REDUCED_FLAGS[s],
                                   budget=budget)
            return _crop_reduced(reduced, s, (height, width), config)
    return crop_resize(decode_image(data, source=source, max_pixels=max_pixels, budget=budget), config)


def read_frame(path: str | os.PathLike, config: PreprocessConfig, *,
               max_pixels: int | None = DEFAULT_MAX_PIXELS,
               budget: DecodeBudget | None = None) -> tuple[np.ndarray, CropBox]:
    """Read an image file and return it cropped and resized to the model input (see :func:`load_frame`).

    The file is read as ``read_image`` reads it (regular files only, size limits from ``max_pixels``).

    Raises:
        DecodeError: missing, unreadable, not a regular file, empty, truncated, too large or
            undecodable file.
    """
    data = read_file_bytes(path, max_bytes=max_file_bytes(max_pixels))
    return load_frame(data, config, source=str(path), max_pixels=max_pixels, budget=budget)


def read_frames(paths, config: PreprocessConfig, *, threads: int | None = None,
                max_pixels: int | None = DEFAULT_MAX_PIXELS):
    """:func:`read_frame` over ``paths`` in a thread pool, yielding ``(index, (frame, CropBox) or
    DecodeError)`` in input order (see ``edgereg.preprocess.read_images``); the decodes share one
    :class:`~edgereg.preprocess.decode.DecodeBudget`."""
    budget = DecodeBudget()
    return read_images(paths, threads=threads,
                       loader=lambda path: read_frame(path, config, max_pixels=max_pixels, budget=budget))


def _box_sides(height: int, width: int, config: PreprocessConfig) -> tuple[float, float]:
    box = crop_box(height, width, config)
    return box.h, box.w


def _crop_reduced(reduced: np.ndarray, s: int, header_size: tuple[int, int],
                  config: PreprocessConfig) -> tuple[np.ndarray, CropBox]:
    """Crop a 1/s decode in reduced pixels and report the crop in source pixels (module docstring)."""
    height, width = header_size
    if (reduced.shape[0], reduced.shape[1]) != (-(-height // s), -(-width // s)):
        height, width = width, height  # EXIF orientation turned the image by 90 degrees
    box = crop_box(height, width, config)
    x0, y0 = int(round(box.x0 / s)), int(round(box.y0 / s))
    w, h = max(1, int(round(box.w / s))), max(1, int(round(box.h / s)))
    frame = crop_region(reduced, x0, y0, w, h, config.input_size)
    return frame, CropBox(float(x0 * s), float(y0 * s), float(w * s), float(h * s))
