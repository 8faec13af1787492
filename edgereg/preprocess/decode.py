"""Reading and decoding image files with OpenCV, from bytes so that any path works."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edgereg.errors import DecodeError


def default_threads() -> int:
    """Decoder threads: one per core, at least 2 (OpenCV releases the GIL while decoding)."""
    return max(2, os.cpu_count() or 2)


def decode_image(data: bytes, *, source: str = "<bytes>", flags: int = cv2.IMREAD_COLOR) -> np.ndarray:
    """Decode encoded image bytes (JPEG, PNG, BMP, TIFF, ...).

    Gray, 16-bit and alpha images are converted to 8-bit BGR (OpenCV's IMREAD_COLOR).

    Args:
        data: the file's bytes.
        source: a name for error messages (usually the path).
        flags: OpenCV imread flags: IMREAD_COLOR, or IMREAD_REDUCED_COLOR_2/4/8 for a DCT-domain
            1/2, 1/4, 1/8 decode of a JPEG (see ``edgereg.preprocess.frames``).

    Returns:
        (H, W, 3) uint8, BGR.

    Raises:
        DecodeError: empty, truncated or undecodable data.
    """
    if len(data) == 0:
        raise DecodeError(f"'{source}': empty file (0 bytes)")
    if _looks_truncated(data):
        raise DecodeError(f"'{source}': truncated image (the end-of-image marker is missing)")
    buffer = np.frombuffer(data, dtype=np.uint8)
    image = cv2.imdecode(buffer, flags)
    if image is None or image.size == 0:
        raise DecodeError(f"'{source}': not a decodable image (corrupt or unsupported format)")
    return image


def _looks_truncated(data: bytes) -> bool:
    """True for a JPEG without its EOI marker or a PNG without its IEND chunk.

    OpenCV decodes such files partially (grey bottom rows) with only a warning on stderr; a
    reading from half an image is worse than no reading.
    """
    if data[:2] == b"\xff\xd8":
        return data.rfind(b"\xff\xd9") < 0
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return data.rfind(b"IEND") < 0
    return False


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read and decode one image file.

    Returns:
        (H, W, 3) uint8, BGR.

    Raises:
        DecodeError: missing, unreadable, empty, truncated or undecodable file.
    """
    return decode_image(read_bytes(path), source=str(path))


def read_bytes(path: str | os.PathLike) -> bytes:
    """A file's bytes, or DecodeError naming the path and why it cannot be read."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise DecodeError(f"'{path}': file not found") from None
    except IsADirectoryError:
        raise DecodeError(f"'{path}': is a directory, not an image") from None
    except PermissionError:
        raise DecodeError(f"'{path}': permission denied") from None
    except OSError as exc:
        raise DecodeError(f"'{path}': unreadable ({exc.strerror or exc})") from None


def read_images(paths: Sequence[str | os.PathLike], *, threads: int | None = None,
                loader: Callable[[str | os.PathLike], Any] = read_image) -> Iterator[tuple[int, Any]]:
    """Decode files in a thread pool, yielding ``(index, image or DecodeError)`` in input order.

    At most ``4 * threads`` decodes are in flight, so memory stays flat on long lists. ``loader``
    (default :func:`read_image`) turns one path into the result, raising DecodeError for a bad file.
    """
    threads = threads or default_threads()
    window = 4 * threads

    def load(path):
        try:
            return loader(path)
        except DecodeError as exc:
            return exc

    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="edgereg-decode") as pool:
        pending = []
        for index, path in enumerate(paths):
            pending.append(pool.submit(load, path))
            if len(pending) >= window:
                yield index - len(pending) + 1, pending.pop(0).result()
        start = len(paths) - len(pending)
        for offset, future in enumerate(pending):
            yield start + offset, future.result()
