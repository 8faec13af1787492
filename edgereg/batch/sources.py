"""Input sources: one class per kind of input that `edgereg infer` scores.

Batch sources (:class:`ImageSource`, :class:`FolderSource`, :class:`GlobSource`,
:class:`ListFileSource`, :class:`VideoSource`) list their inputs in a deterministic order and yield
:class:`Entry` items: a file for a worker thread to decode, or a frame already decoded (video). The
position of an entry in that order (``Entry.index``) is what ``--shard`` splits on, and its ``key``
is the ``path`` column of the output, which ``--resume`` matches on.

* Folders and globs keep files with an image extension (:data:`IMAGE_EXTENSIONS`, any case) and
  sort them in natural order, component by component (``img2.png`` before ``img10.png``), so the
  order is the same on every machine and file system.
* A list file (``.txt``, ``.lst``, ``.list``) names one path per line, taken as written and in
  the file's order; blank lines and lines starting with ``#`` are skipped; relative paths are
  resolved against the list file's folder, and the key is the line as written.
* A video scores every frame; the key of frame N (0-based) is ``video.mp4#frame=N``.
* Nothing with an image extension vanishes: a FIFO, socket or device file is listed like any file
  and refused by the reader without blocking (``not a regular file (fifo)``, see
  ``edgereg.preprocess.decode``), and a directory named like an image (``x.png/``) is listed too
  (``is a directory, not an image``) unless ``--recursive`` descends into it. A video or list
  file that is not a regular file is refused before it is opened.

:class:`CameraSource` is the live source: a device index, a video file or a stream URL, opened
with ``cv2.VideoCapture`` and re-opened after a drop-out (see ``edgereg.live.loop``).
"""

from __future__ import annotations

import glob
import os
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edgereg.errors import CameraError, DecodeError, EdgeregError
from edgereg.preprocess.decode import file_kind

IMAGE_EXTENSIONS = frozenset({
    ".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".dib", ".tif", ".tiff", ".webp",
    ".pbm", ".pgm", ".ppm", ".pnm", ".jp2", ".sr", ".ras", ".exr", ".hdr", ".pic",
})
VIDEO_EXTENSIONS = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv"})
LIST_EXTENSIONS = frozenset({".txt", ".lst", ".list"})

Selector = Callable[[int, str], bool]
"""``select(index, key) -> bool``: whether an entry is wanted (shard and resume filters)."""


@dataclass(frozen=True)
class Entry:
    """One input to score.

    Exactly one of ``path``, ``frame`` and ``error`` is set.

    Attributes:
        index: position in the source's deterministic order (what ``--shard`` splits on).
        key: the ``path`` column of the output (what ``--resume`` matches on).
        path: a file to read and decode.
        frame: (H, W, 3) uint8 BGR, a frame the source has already decoded (video).
        error: why the input cannot be read at all (a folder that cannot be listed, a video frame
            that does not decode).
    """

    index: int
    key: str
    path: Path | None = None
    frame: np.ndarray | None = field(default=None, repr=False, compare=False)
    error: str | None = None


def natural_key(text: str) -> tuple:
    """Sort key that orders digit runs by value, case-insensitively: ``a2 < A10 < b1``.

    Ties (``a01`` vs ``a1``, ``A`` vs ``a``) fall back to the exact text, so distinct names never
    compare equal and the order is total.
    """
    parts = re.split(r"(\d+)", text)  # even positions are text, odd positions digit runs
    folded = tuple(int(p) if i % 2 else p.casefold() for i, p in enumerate(parts))
    return folded, text


def path_key(relative: Path) -> tuple:
    """Natural sort key of a relative path, component by component (a folder sorts as a unit)."""
    return tuple(natural_key(part) for part in relative.parts)


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


class BatchSource(ABC):
    """A finite, ordered set of inputs to score."""

    description: str  # for messages, e.g. "folder 'photos' (1,234 images)"

    @abstractmethod
    def entries(self, select: Selector | None = None) -> Iterator[Entry]:
        """Yield the wanted entries in order.

        Args:
            select: ``select(index, key) -> bool``; entries it rejects are skipped (a video then
                grabs the frame without decoding it). None keeps every entry.
        """

    @abstractmethod
    def planned_keys(self) -> Sequence[str] | None:
        """The keys of all entries in order, as far as known without decoding (for progress)."""


class _FileListSource(BatchSource):
    """A source whose entries are a list of files known up front (plus listing errors)."""

    def __init__(self, items: list[tuple[str, Path | None, str | None]], description: str) -> None:
        self._items = items  # (key, path to read | None, error | None), in order
        self.description = description

    def entries(self, select: Selector | None = None) -> Iterator[Entry]:
        for index, (key, path, error) in enumerate(self._items):
            if select is None or select(index, key):
                yield Entry(index, key, path=path, error=error)

    def planned_keys(self) -> list[str]:
        return [key for key, _, _ in self._items]


class ImageSource(_FileListSource):
    """A single image file (decoded like any other: a bad file becomes an error row)."""

    def __init__(self, path: str | os.PathLike) -> None:
        path = Path(path)
        super().__init__([(str(path), path, None)], f"image '{path}'")


class FolderSource(_FileListSource):
    """The image files of a folder, in natural order; sub-folders too with ``recursive=True``.

    A sub-folder that cannot be listed becomes an error entry rather than silently missing images.
    ``ignored`` counts files skipped for not having an image extension.
    """

    def __init__(self, root: str | os.PathLike, *, recursive: bool = False) -> None:
        root = Path(root)
        if not root.is_dir():
            raise EdgeregError(f"input folder not found: '{root}'; check the path")
        found: list[tuple[Path, str | None]] = []  # (relative path, listing error)
        self.ignored = 0

        def on_error(exc: OSError) -> None:
            relative = Path(exc.filename).relative_to(root) if exc.filename else Path(".")
            found.append((relative, f"cannot list folder ({exc.strerror or exc})"))

        for folder, subfolders, files in os.walk(root, onerror=on_error):
            base = Path(folder).relative_to(root)
            if not recursive:  # a folder named like an image is listed (and refused), not dropped
                found.extend((base / name, None) for name in subfolders if is_image_file(Path(name)))
                subfolders.clear()
            for name in files:
                if is_image_file(Path(name)):
                    found.append((base / name, None))
                else:
                    self.ignored += 1
        found.sort(key=lambda item: path_key(item[0]))
        items = [(str(root / rel), None if error else root / rel, error) for rel, error in found]
        if not items:
            deep = "" if recursive else " (add --recursive for sub-folders)"
            raise EdgeregError(f"no images in folder '{root}'{deep}: expected files ending in "
                               f"{', '.join(sorted(IMAGE_EXTENSIONS)[:6])}, ...")
        super().__init__(items, f"folder '{root}' ({len(items):,} images)")


class GlobSource(_FileListSource):
    """Image files matching a glob pattern (``**`` descends into folders), in natural order."""

    def __init__(self, pattern: str) -> None:
        matches = [Path(p) for p in glob.glob(pattern, recursive=True)]
        # anything named like an image, regular file or not: the reader refuses FIFOs and folders
        files = [p for p in matches if is_image_file(p)]
        self.ignored = len(matches) - len(files)
        files.sort(key=path_key)
        if not files:
            others = f" (only {len(matches)} non-image matches)" if matches else ""
            raise EdgeregError(f"no images match '{pattern}'{others}; check the pattern, and quote it so "
                               "the shell does not expand it")
        super().__init__([(str(p), p, None) for p in files], f"glob '{pattern}' ({len(files):,} images)")


class ListFileSource(_FileListSource):
    """A text file listing one image path per line, scored in the file's order.

    Relative paths are resolved against the list file's folder; the key is the line as written.
    """

    def __init__(self, list_path: str | os.PathLike) -> None:
        list_path = Path(list_path)
        try:
            text = list_path.read_text(encoding="utf-8", errors="surrogateescape")
        except OSError as exc:
            raise EdgeregError(f"cannot read list file '{list_path}' ({exc.strerror or exc}); check the path") from None
        items: list[tuple[str, Path | None, str | None]] = []
        for line in text.split("\n"):  # not splitlines: U+2028, U+0085, ... may stand in a file name
            name = line.strip(" \t\r")
            if not name or name.startswith("#"):
                continue
            path = Path(name)
            items.append((name, path if path.is_absolute() else list_path.parent / path, None))
        if not items:
            raise EdgeregError(f"list file '{list_path}' names no images: expected one path per line")
        super().__init__(items, f"list '{list_path}' ({len(items):,} paths)")


class VideoSource(BatchSource):
    """Every frame of a video file, decoded in order; frame N has the key ``video.mp4#frame=N``.

    A video that stops decoding before the frame count in its header yields one error entry for
    the first frame that failed, so a truncated file is never mistaken for a complete one.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        capture = cv2.VideoCapture(str(self.path))
        try:
            if not capture.isOpened():
                raise DecodeError(f"'{self.path}': not a video OpenCV can open (corrupt, or a codec this "
                                  "OpenCV build lacks); convert it with ffmpeg -i IN -c:v mjpeg OUT.avi")
            self.frame_count = max(0, int(capture.get(cv2.CAP_PROP_FRAME_COUNT)))
        finally:
            capture.release()
        self.description = f"video '{self.path}' ({self.frame_count:,} frames)"

    def key(self, index: int) -> str:
        return f"{self.path}#frame={index}"

    def planned_keys(self) -> list[str] | None:
        return [self.key(i) for i in range(self.frame_count)] if self.frame_count else None

    def entries(self, select: Selector | None = None) -> Iterator[Entry]:
        capture = cv2.VideoCapture(str(self.path))
        try:
            index = 0
            while True:
                key = self.key(index)
                if select is None or select(index, key):
                    ok, frame = capture.read()
                    if ok:
                        yield Entry(index, key, frame=frame)
                else:
                    ok = capture.grab()  # skip without decoding
                if not ok:
                    yield from self._shortfall(index, select)
                    return
                index += 1
        finally:
            capture.release()

    def _shortfall(self, stopped_at: int, select: Selector | None) -> Iterator[Entry]:
        """One error entry for the first wanted frame that the header promises but did not decode."""
        for index in range(stopped_at, self.frame_count):
            if select is None or select(index, self.key(index)):
                yield Entry(index, self.key(index), error=(
                    f"the video stops decoding at frame {stopped_at} of the {self.frame_count} in its header "
                    "(truncated or corrupt); this and later frames were not scored"))
                return


def open_source(spec: str, *, recursive: bool = False) -> BatchSource:
    """Pick the source for a PATH argument.

    A folder -> FolderSource; a file ending in a video extension -> VideoSource, in a list
    extension -> ListFileSource, anything else -> ImageSource; a path that does not exist but
    contains ``*``, ``?`` or ``[`` -> GlobSource.

    Raises:
        EdgeregError: the path does not exist and is not a glob, or names no images.
    """
    path = Path(spec)
    if path.is_dir():
        return FolderSource(path, recursive=recursive)
    if path.exists():
        suffix = path.suffix.lower()
        kind = file_kind(path.stat().st_mode)
        if kind is not None and suffix in VIDEO_EXTENSIONS | LIST_EXTENSIONS:
            raise EdgeregError(f"'{path}' is not a regular file ({kind}); give a video or list file")
        if suffix in VIDEO_EXTENSIONS:
            return VideoSource(path)
        if suffix in LIST_EXTENSIONS:
            return ListFileSource(path)
        return ImageSource(path)
    if any(ch in spec for ch in "*?["):
        return GlobSource(spec)
    raise EdgeregError(f"input not found: '{spec}'; expected an image, a folder, a glob like "
                       "'photos/*.jpg', a .txt list of paths or a video file")


def redact_credentials(text: str) -> str:
    """``text`` with the credentials of every URL in it hidden (``rtsp://user:pw@host`` -> ``rtsp://***@host``).

    Every message, reading note and web page that names a camera goes through this: a stream URL
    often carries its password.
    """
    return re.sub(r"://[^/@\s]+@", "://***@", text)


class CameraSource:
    """A live source for ``edgereg infer --camera``: a device index, a video file or a stream URL.

    ``read()`` opens the capture on first use and again after a failed read, so a camera that is
    unplugged and plugged back in, or a stream that drops, comes back without a restart; the
    retry pacing is the caller's (``edgereg.live.loop.run_live`` backs off). A video file is finite:
    at its end ``read()`` returns ``(False, None)`` and sets ``ended`` -- unless ``loop`` is set.

    Args:
        spec: "0" (device index), a video file path, or a URL such as "rtsp://host/stream".
        open_capture: factory of the capture object (``cv2.VideoCapture``; replaceable in tests).
        loop: (video files) start again from the first frame at the end, and treat a file that
            cannot be opened (deleted, being replaced) as a drop-out to retry, never as the end:
            a recorded clip then behaves like a camera (``edgereg serve`` uses it).
        realtime: (video files) deliver frames at the file's frame rate (``CAP_PROP_FPS``; 25
            when the file does not say) instead of as fast as they decode.
        sleep: waits for the next frame when ``realtime`` (inject a fake in tests).

    Raises:
        CameraError: ``spec`` is none of the three.
    """

    def __init__(self, spec: str | int, *, open_capture: Callable[..., object] = cv2.VideoCapture,
                 loop: bool = False, realtime: bool = False,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        text = str(spec).strip()
        if text.isdigit():
            self.target: int | str = int(text)
            self.kind = "device"
        elif "://" in text:
            self.target, self.kind = text, "stream"
        elif Path(text).is_file():
            self.target, self.kind = text, "file"
        else:
            raise CameraError(f"--camera {text!r} is not a device index (0, 1, ...), an existing video file "
                              "or a stream URL (rtsp://..., http://...); check the value")
        shown = redact_credentials(str(self.target))  # the name goes into messages, notes and web pages
        self.name = f"camera {self.target}" if self.kind == "device" else f"{self.kind} '{shown}'"
        self._open_capture = open_capture
        self._capture: Any = None  # what open_capture returned (cv2.VideoCapture, or a test double)
        self.loop = loop and self.kind == "file"
        self.realtime = realtime and self.kind == "file"
        self._sleep = sleep
        self._period_s = 0.0  # seconds between frames when realtime (from the file's frame rate)
        self._due: float | None = None  # time.monotonic() when the next frame is due (realtime)
        self.ended = False  # a video file has been read to its end
        self.frames_read = 0

    def _open(self):
        capture = self._open_capture(self.target)
        if not capture.isOpened():
            capture.release()
            # a file that does not open will not open later, unless it is looped (it may come back)
            self.ended = self.kind == "file" and not self.loop
            hint = {"device": "is it connected and free? (ls /dev/video*)",
                    "stream": "is the URL right and the stream up?",
                    "file": "does it exist, and is it a video OpenCV can decode?"}[self.kind]
            raise CameraError(f"could not open {self.name}; {hint}")
        if self.kind == "device":
            capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # read the newest frame, not a stale queue
        if self.realtime:
            fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
            self._period_s = 1.0 / (fps if 0.0 < fps <= 1000.0 else 25.0)
        return capture

    def read(self) -> tuple[bool, np.ndarray | None]:
        """The next frame: ``(True, (H, W, 3) uint8 BGR)``, or ``(False, None)`` on a failed read.

        Raises:
            CameraError: the source could not be opened (the caller may retry, unless ``ended``).
        """
        if self.ended:
            return False, None
        if self._capture is None:
            self._capture = self._open()
        ok, frame = self._capture.read()
        if not (ok and frame is not None) and self.loop and self.frames_read:
            self.release()  # the end of the clip: play it again from its first frame
            self._capture = self._open()
            ok, frame = self._capture.read()
        if ok and frame is not None:
            self.frames_read += 1
            if self.realtime:
                self._pace()
            return True, frame
        if self.kind == "file" and not self.loop:
            self.ended = True
        self.release()  # re-open on the next read
        return False, None

    def _pace(self) -> None:
        """Wait until this frame is due at the file's frame rate (never sleeps to catch up)."""
        now = time.monotonic()
        due = self._due
        if due is None or now - due > self._period_s:
            due = now  # the first frame, or running late (slow decode, a drop-out): resync
        elif due > now:
            self._sleep(due - now)
        self._due = due + self._period_s

    def release(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None
