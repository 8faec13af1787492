"""Reading and decoding image files with OpenCV, from bytes so that any path works.

Hostile files are refused before they cost memory or time:

* Only regular files are read. A FIFO, socket or device is opened non-blocking and refused after
  ``fstat`` (``not a regular file (fifo)``), so a FIFO in a scored folder can never hang a run.
* The image size is read from the header (PNG IHDR, JPEG SOF, BMP, PNM/PFM, WebP, TIFF IFD0,
  JPEG 2000 SIZ, GIF, Radiance HDR, Sun raster), walking it as OpenCV's decoder will (a JPEG's
  markers are found as libjpeg finds them, skipping junk bytes), before decoding, and an image
  over ``max_pixels`` (default 50 MP, :data:`DEFAULT_MAX_PIXELS`) is refused with
  ``too large: 30000x30000 = 900 MP > 50 MP (--max-pixels)``. A 1 MB PNG can declare 900 MP and
  would otherwise decode into 2.7 GB of BGR pixels; a uniform 16k x 16k JPEG is 4 MB.
* Data without such a header (EXR, AVIF, PAM, random bytes) is refused under a pixel limit: its
  size would be known only after decoding it. ``max_pixels=0`` (``--max-pixels 0``) decodes it.
* A file bigger than :func:`max_file_bytes` of ``max_pixels`` is refused before it is read.
* Decoder threads share a :class:`DecodeBudget` of decoded bytes (default 1 GiB per pool), so
  memory is bounded by bytes, not only by the number of threads.
* OpenCV's own cap, ``OPENCV_IO_MAX_IMAGE_PIXELS``, is a back-stop: ``edgereg/__init__.py`` sets it
  to :data:`OPENCV_PIXEL_CAP` unless the environment already sets it (OpenCV reads it once, when
  the library loads, so it must be set before anything imports cv2).
* OpenCV's exceptions (``cv2.error``, assertion text) become one :class:`DecodeError` sentence.
"""

from __future__ import annotations

import contextlib
import os
import stat
import struct
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import cv2
import numpy as np

from edgereg.errors import DecodeError

DEFAULT_MAX_PIXELS = 50_000_000  # 50 MP: above any camera in this field, far below a memory problem
OPENCV_PIXEL_CAP = 1 << 28  # 268 MP: OpenCV refuses larger images whatever their format (see edgereg/__init__)
BYTES_PER_PIXEL_LIMIT = 8  # a raw 16-bit RGBA file: the most bytes per pixel a legitimate image needs
MIN_FILE_LIMIT = 64 << 20  # files up to 64 MiB are always read (headers, metadata, small limits)
DECODE_BYTES_PER_PIXEL = 6  # what a decode holds per pixel (decode_cost): 3 channels of up to 16 bits
DEFAULT_DECODE_BUDGET = 1 << 30  # 1 GiB of images being decoded at once, per pool (DecodeBudget)
_REDUCED_SCALES = {cv2.IMREAD_REDUCED_COLOR_2: 2, cv2.IMREAD_REDUCED_COLOR_4: 4, cv2.IMREAD_REDUCED_COLOR_8: 8}

_FILE_KINDS = (
    (stat.S_ISFIFO, "fifo"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"), (stat.S_ISDIR, "directory"),
)


def default_threads() -> int:
    """Decoder threads: one per core, at least 2 (OpenCV releases the GIL while decoding)."""
    return max(2, os.cpu_count() or 2)


def format_megapixels(pixels: float) -> str:
    """``900 MP``, ``56 MP``, ``50.3 MP``, ``0.3 MP``: at most 3 significant digits below 100."""
    mp = pixels / 1e6
    return f"{mp:.0f} MP" if mp >= 100 else f"{mp:.3g} MP"


def max_file_bytes(max_pixels: int | None) -> int | None:
    """The largest file read for a pixel limit: 8 bytes per pixel, at least 64 MiB (None: no limit)."""
    if not max_pixels:
        return None
    return max(MIN_FILE_LIMIT, BYTES_PER_PIXEL_LIMIT * int(max_pixels))


def check_pixels(width: int, height: int, max_pixels: int | None) -> str | None:
    """The refusal reason when ``width x height`` exceeds ``max_pixels``, else None."""
    if max_pixels and width * height > max_pixels:
        return (f"too large: {width}x{height} = {format_megapixels(width * height)} > "
                f"{format_megapixels(max_pixels)} (--max-pixels)")
    return None


def file_kind(mode: int) -> str | None:
    """"fifo", "socket", "character device", "block device", "directory", or None for a regular file."""
    for test, name in _FILE_KINDS:
        if test(mode):
            return name
    return None if stat.S_ISREG(mode) else "special file"


# ------------------------------------------------------------------------------------- headers

HEADER_FORMATS = "JPEG, PNG, BMP, PNM/PFM, WebP, TIFF, JPEG 2000, GIF, Radiance HDR or Sun raster"


def image_dimensions(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` declared by the header, read as OpenCV's decoder will read it, else None.

    Formats: see :data:`HEADER_FORMATS`. Only the header is parsed (nothing is decoded). None means
    "no header of these formats, or an unreadable one"; :func:`decode_image` then refuses the data
    under a pixel limit (its size cannot be checked before decoding).
    """
    for parse in _PARSERS:
        try:
            size = parse(data)
        except (struct.error, IndexError, ValueError):
            return None  # the header of this format, cut short or malformed
        if size is not None:
            return size
    return None


def _png_size(data: bytes) -> tuple[int, int] | None:
    if data[:8] != b"\x89PNG\r\n\x1a\n" or len(data) < 24 or data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", data[16:24])
    return width, height


_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # DHT, JPG and DAC are not frames


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """The size in the first SOF0..SOF15 segment, walking the markers from SOI as libjpeg does.

    libjpeg's ``next_marker`` skips any bytes before a 0xFF (junk between segments, with only a
    warning), any 0xFF fill bytes, and a stuffed ``FF 00``; the walk here does the same, so a stray
    byte cannot hide the frame header that the decoder will use.
    """
    if data[:2] != b"\xff\xd8":
        return None
    position = 2
    while True:
        position = data.find(b"\xff", position)  # junk before the marker is skipped
        while 0 <= position < len(data) - 1 and data[position + 1] == 0xFF:
            position += 1  # fill bytes
        if position < 0 or position + 1 >= len(data):
            return None
        marker = data[position + 1]
        if marker == 0x00:  # not a marker (a stuffed zero): keep scanning
            position += 2
        elif marker in (0x01, *range(0xD0, 0xD8)):  # TEM, RSTn: no length
            position += 2
        elif marker in (0xD8, 0xD9, 0xDA):  # a second SOI, EOI or SOS before any frame: no image
            return None
        elif marker in _SOF_MARKERS:
            height, width = struct.unpack(">HH", data[position + 5:position + 9])
            return width, height
        else:
            (length,) = struct.unpack(">H", data[position + 2:position + 4])
            position += 2 + max(length, 2)


def _bmp_size(data: bytes) -> tuple[int, int] | None:
    if data[:2] != b"BM" or len(data) < 26:
        return None
    (header,) = struct.unpack("<I", data[14:18])
    if header == 12:  # OS/2 BITMAPCOREHEADER: 16-bit sizes
        width, height = struct.unpack("<HH", data[18:22])
        return width, height
    width, height = struct.unpack("<ii", data[18:26])
    return abs(width), abs(height)  # a negative height means top-down rows


def _pnm_size(data: bytes) -> tuple[int, int] | None:
    """P1..P6 (PBM, PGM, PPM) and PF/Pf (PFM): magic, then width and height as decimal tokens,
    '#' comments allowed."""
    if len(data) < 3 or data[0:1] != b"P" or data[1:2] not in b"123456Ff" or not data[2:3].isspace():
        return None
    tokens: list[int] = []
    position = 2
    head = data[:4096]
    while len(tokens) < 2 and position < len(head):
        char = head[position:position + 1]
        if char.isspace():
            position += 1
        elif char == b"#":
            end = head.find(b"\n", position)
            position = len(head) if end < 0 else end + 1
        else:
            end = position
            while end < len(head) and head[end:end + 1].isdigit():
                end += 1
            if end == position or end - position > 10:
                return None
            tokens.append(int(head[position:end]))
            position = end
    return (tokens[0], tokens[1]) if len(tokens) == 2 else None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    if data[:4] != b"RIFF" or data[8:12] != b"WEBP" or len(data) < 30:
        return None
    chunk = data[12:16]
    if chunk == b"VP8X":  # 24-bit canvas size minus one
        width = 1 + int.from_bytes(data[24:27], "little")
        height = 1 + int.from_bytes(data[27:30], "little")
        return width, height
    if chunk == b"VP8L" and data[20:21] == b"\x2f":  # 14-bit sizes minus one
        bits = int.from_bytes(data[21:25], "little")
        return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    return None


_TIFF_IMAGE_WIDTH, _TIFF_IMAGE_LENGTH = 256, 257
_TIFF_INTEGER_TYPES = {1: "B", 3: "H", 4: "I", 16: "Q"}  # BYTE, SHORT, LONG, LONG8 (BigTIFF)


def _tiff_size(data: bytes) -> tuple[int, int] | None:
    """ImageWidth and ImageLength of the first IFD (the image OpenCV decodes), either byte order,
    classic TIFF and BigTIFF."""
    order = {b"II": "<", b"MM": ">"}.get(data[:2])
    if order is None:
        return None
    (version,) = struct.unpack(order + "H", data[2:4])
    if version == 42:  # classic: 4-byte offsets, 12-byte entries with a 4-byte value field
        (offset,) = struct.unpack(order + "I", data[4:8])
        (count,) = struct.unpack(order + "H", data[offset:offset + 2])
        first, entry, value_size = offset + 2, 12, 4
    elif version == 43:  # BigTIFF: 8-byte offsets, 20-byte entries with an 8-byte value field
        (offset,) = struct.unpack(order + "Q", data[8:16])
        (count,) = struct.unpack(order + "Q", data[offset:offset + 8])
        first, entry, value_size = offset + 8, 20, 8
    else:
        return None
    found: dict[int, int] = {}
    for at in range(first, first + entry * min(count, 4096), entry):
        tag, kind = struct.unpack(order + "HH", data[at:at + 4])
        if tag in (_TIFF_IMAGE_WIDTH, _TIFF_IMAGE_LENGTH) and kind in _TIFF_INTEGER_TYPES:
            code = _TIFF_INTEGER_TYPES[kind]
            value_at = at + entry - value_size  # the value, left-justified in its field
            (found[tag],) = struct.unpack(order + code, data[value_at:value_at + struct.calcsize(code)])
    if _TIFF_IMAGE_WIDTH in found and _TIFF_IMAGE_LENGTH in found:
        return found[_TIFF_IMAGE_WIDTH], found[_TIFF_IMAGE_LENGTH]
    return None


_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
_J2K_CODESTREAM = b"\xff\x4f\xff\x51"  # SOC, then the SIZ marker


def _jpeg2000_size(data: bytes) -> tuple[int, int] | None:
    """The image area of the codestream's SIZ segment (``Xsiz - XOsiz``, ``Ysiz - YOsiz``): a raw
    codestream (.j2k), or the ``jp2c`` box of a .jp2 file (what OpenJPEG decodes, whatever the
    ``ihdr`` box says)."""
    if data[:4] == _J2K_CODESTREAM:
        xsiz, ysiz, x0, y0 = struct.unpack(">IIII", data[8:24])
        return xsiz - x0, ysiz - y0
    if data[:12] != _JP2_SIGNATURE:
        return None
    position = 0
    while position + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[position:position + 8])
        header = 8
        if length == 1:  # a 64-bit length follows
            (length,) = struct.unpack(">Q", data[position + 8:position + 16])
            header = 16
        if kind == b"jp2c":
            return _jpeg2000_size(data[position + header:position + header + 24])
        if length == 0 or length < header:  # the last box, or a malformed one
            return None
        position += length
    return None


def _gif_size(data: bytes) -> tuple[int, int] | None:
    if data[:6] not in (b"GIF87a", b"GIF89a"):
        return None
    width, height = struct.unpack("<HH", data[6:10])  # the logical screen
    return width, height


def _hdr_size(data: bytes) -> tuple[int, int] | None:
    """Radiance HDR: text lines up to a blank line, then the resolution line (``-Y h +X w``)."""
    if not data.startswith((b"#?RADIANCE", b"#?RGBE")):
        return None
    blank = data.find(b"\n\n", 0, 1 << 16)
    if blank < 0:
        return None
    tokens = data[blank + 2:data.find(b"\n", blank + 2, blank + 200)].split()
    if len(tokens) != 4 or {tokens[0][1:], tokens[2][1:]} != {b"X", b"Y"}:
        return None
    first, second = int(tokens[1]), int(tokens[3])
    return (second, first) if tokens[0][1:] == b"Y" else (first, second)


def _sun_raster_size(data: bytes) -> tuple[int, int] | None:
    if data[:4] != b"\x59\xa6\x6a\x95":
        return None
    width, height = struct.unpack(">II", data[4:12])
    return width, height


_PARSERS = (_png_size, _jpeg_size, _bmp_size, _pnm_size, _webp_size, _tiff_size, _jpeg2000_size, _gif_size,
            _hdr_size, _sun_raster_size)


# ------------------------------------------------------------------------------------- decoding


def explain_cv2_error(exc: BaseException) -> str:
    """A sentence for an OpenCV exception, instead of its assertion text and source location."""
    text = str(exc)
    if "!buf.empty()" in text:
        return "empty file (0 bytes)"
    if "CV_IO_MAX_IMAGE_PIXELS" in text or "validateInputImageSize" in text:
        return ("too large for OpenCV's own limit (OPENCV_IO_MAX_IMAGE_PIXELS, "
                f"{format_megapixels(int(os.environ.get('OPENCV_IO_MAX_IMAGE_PIXELS', OPENCV_PIXEL_CAP)))})")
    if "size.width>0" in text or "size.height>0" in text or "!ssize.empty()" in text:
        return "the image has zero width or height"
    if "Insufficient memory" in text or "Failed to allocate" in text:
        return "not enough memory to decode it"
    return "not a decodable image (OpenCV refused it: corrupt or unsupported format)"


class DecodeBudget:
    """A budget of decoded bytes shared by decoder threads: a semaphore counted in bytes.

    Thread count alone does not bound memory: 16 threads each decoding a 50 MP image hold 16 x
    300 MB. A decoder acquires its image's :func:`decode_cost` before decoding and releases it
    after, so the images being decoded at once hold at most ``limit_bytes`` (one image larger than
    the whole budget still decodes, alone).

    Args:
        limit_bytes: the bytes that decodes in flight may hold together (> 0).
    """

    def __init__(self, limit_bytes: int = DEFAULT_DECODE_BUDGET) -> None:
        if limit_bytes <= 0:
            raise ValueError(f"a decode budget must be positive, got {limit_bytes}")
        self.limit_bytes = int(limit_bytes)
        self.in_use = 0  # bytes held by decodes in progress
        self._changed = threading.Condition()

    @contextlib.contextmanager
    def hold(self, cost: int) -> Iterator[None]:
        """Wait until ``cost`` bytes fit in the budget, hold them for the block, then give them back."""
        cost = max(1, min(int(cost), self.limit_bytes))
        with self._changed:
            self._changed.wait_for(lambda: self.in_use + cost <= self.limit_bytes)
            self.in_use += cost
        try:
            yield
        finally:
            with self._changed:
                self.in_use -= cost
                self._changed.notify_all()


def decode_cost(width: int, height: int, flags: int = cv2.IMREAD_COLOR) -> int:
    """Bytes a decode of a ``width x height`` image holds (an estimate): 3 channels of up to 2 bytes
    (a 16-bit image is decoded at 16 bits, then converted), divided by s^2 for a 1/s reduced decode."""
    scale = _REDUCED_SCALES.get(flags, 1)
    return -(-width // scale) * -(-height // scale) * DECODE_BYTES_PER_PIXEL


def decode_image(data: bytes, *, source: str = "<bytes>", max_pixels: int | None = DEFAULT_MAX_PIXELS,
                 flags: int = cv2.IMREAD_COLOR, budget: DecodeBudget | None = None) -> np.ndarray:
    """Decode encoded image bytes (JPEG, PNG, BMP, TIFF, ...).

    Gray, 16-bit and alpha images are converted to 8-bit BGR (OpenCV's IMREAD_COLOR).

    Args:
        data: the file's bytes.
        source: a name for error messages (usually the path).
        max_pixels: refuse images whose header declares more pixels, and data whose size cannot be
            read from a header (:data:`HEADER_FORMATS`), before decoding (None or 0: no limit of
            ours; OpenCV's own cap still applies).
        flags: OpenCV imread flags: IMREAD_COLOR, or IMREAD_REDUCED_COLOR_2/4/8 for a DCT-domain
            1/2, 1/4, 1/8 decode of a JPEG (see ``edgereg.preprocess.frames``).
        budget: decoded bytes shared with other decoder threads; the decode waits for its
            :func:`decode_cost` to fit (None: no wait).

    Returns:
        (H, W, 3) uint8, BGR.

    Raises:
        DecodeError: empty, truncated, too large or undecodable data, or (with ``max_pixels``) data
            without a header that gives its size.
    """
    if len(data) == 0:
        raise DecodeError(f"'{source}': empty file (0 bytes)")
    size = image_dimensions(data)
    if size is not None:
        width, height = size
        if width == 0 or height == 0:
            raise DecodeError(f"'{source}': the header declares a {width}x{height} image (zero width or height)")
        reason = check_pixels(width, height, max_pixels)
        if reason:
            raise DecodeError(f"'{source}': {reason}")
    elif max_pixels:  # its size would be known only after decoding it, whatever it costs
        raise DecodeError(f"'{source}': not a decodable image (no readable {HEADER_FORMATS} header, so its size "
                          "cannot be checked before decoding; convert it to PNG, or pass --max-pixels 0 to "
                          "decode it unchecked)")
    if _looks_truncated(data):
        raise DecodeError(f"'{source}': truncated image (the end-of-image marker is missing)")
    buffer = np.frombuffer(data, dtype=np.uint8)
    cost = decode_cost(*size, flags) if size is not None else len(data) * DECODE_BYTES_PER_PIXEL
    try:
        with budget.hold(cost) if budget is not None else contextlib.nullcontext():
            image = cv2.imdecode(buffer, flags)
    except cv2.error as exc:
        raise DecodeError(f"'{source}': {explain_cv2_error(exc)}") from None
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


@contextlib.contextmanager
def _os_errors_as_decode_errors(path):
    """Turn the OS errors of stat/open into one-line DecodeErrors naming ``path``."""
    try:
        yield
    except FileNotFoundError:
        raise DecodeError(f"'{path}': file not found") from None
    except PermissionError:
        raise DecodeError(f"'{path}': permission denied") from None
    except OSError as exc:
        raise DecodeError(f"'{path}': unreadable ({exc.strerror or exc})") from None


def read_file_bytes(path: str | os.PathLike, *, max_bytes: int | None = None) -> bytes:
    """The bytes of a regular file; anything else is refused without blocking.

    The file is opened with ``O_NONBLOCK`` (a FIFO without a writer would otherwise block the
    ``open`` forever) and checked with ``fstat`` on the opened descriptor, so a file swapped for a
    FIFO between listing and reading is refused too.

    Raises:
        DecodeError: missing, not a regular file, larger than ``max_bytes``, or unreadable.
    """
    with _os_errors_as_decode_errors(path):
        mode = os.stat(path).st_mode
    kind = file_kind(mode)
    if kind == "directory":
        raise DecodeError(f"'{path}': is a directory, not an image")
    if kind is not None:
        raise DecodeError(f"'{path}': not a regular file ({kind})")
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    with _os_errors_as_decode_errors(path):
        fd = os.open(path, flags)
    try:
        info = os.fstat(fd)
        kind = file_kind(info.st_mode)
        if kind is not None:
            raise DecodeError(f"'{path}': not a regular file ({kind})")
        if max_bytes is not None and info.st_size > max_bytes:
            raise DecodeError(f"'{path}': file too large for an image ({info.st_size / 1e6:,.0f} MB > "
                              f"{max_bytes / 1e6:,.0f} MB allowed with --max-pixels)")
        chunks = []
        remaining = info.st_size + 1  # one more byte reveals a file that grew
        while True:
            chunk = os.read(fd, max(remaining, 1 << 16))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
            if max_bytes is not None and sum(map(len, chunks)) > max_bytes:
                raise DecodeError(f"'{path}': file too large for an image (grew past "
                                  f"{max_bytes / 1e6:,.0f} MB while being read)")
        return b"".join(chunks)
    except OSError as exc:
        raise DecodeError(f"'{path}': unreadable ({exc.strerror or exc})") from None
    finally:
        os.close(fd)


def read_image(path: str | os.PathLike, *, max_pixels: int | None = DEFAULT_MAX_PIXELS,
               budget: DecodeBudget | None = None) -> np.ndarray:
    """Read and decode one image file (regular files only; see the module docstring).

    Args:
        path: the file.
        max_pixels: refuse images declaring more pixels (None or 0: no limit of ours).
        budget: decoded bytes shared with other decoder threads (see :func:`decode_image`).

    Returns:
        (H, W, 3) uint8, BGR.

    Raises:
        DecodeError: missing, unreadable, not a regular file, empty, truncated, too large or
            undecodable file.
    """
    data = read_file_bytes(path, max_bytes=max_file_bytes(max_pixels))
    return decode_image(data, source=str(path), max_pixels=max_pixels, budget=budget)


def read_images(paths: Sequence[str | os.PathLike], *, threads: int | None = None,
                max_pixels: int | None = DEFAULT_MAX_PIXELS,
                loader: Callable[[str | os.PathLike], Any] | None = None) -> Iterator[tuple[int, Any]]:
    """Decode files in a thread pool, yielding ``(index, image or DecodeError)`` in input order.

    At most ``4 * threads`` decodes are in flight, so memory stays flat on long lists, and the
    default loader's decodes share one :class:`DecodeBudget`. ``loader`` turns one path into the
    result (default: :func:`read_image` with ``max_pixels``), raising DecodeError for a bad file.
    """
    threads = threads or default_threads()
    window = 4 * threads
    budget = DecodeBudget()

    def load(path):
        try:
            return loader(path) if loader is not None else read_image(path, max_pixels=max_pixels, budget=budget)
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
