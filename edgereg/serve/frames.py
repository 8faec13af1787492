"""The JPEG of the latest frame, with the crop and the reading drawn over it, encoded once.

``/stream.mjpg`` and ``/snapshot.jpg`` ask :meth:`FrameEncoder.jpeg` for the latest reading; the
first request for a reading encodes it and every other client gets the same bytes (one encode per
frame whatever the number of clients; concurrent requests wait on a lock rather than encode twice).
The stream's frame rate cap is one :class:`StreamClock` for all clients, so they all send the
same frames (each client pacing itself would pick different frames and multiply the encodes).

The overlay (what a viewer of the stream needs without the page): the region the model reads
(the crop circle, the centre square or the ROI), the coordinates a ``coords`` model found, and the
reading in units with its state (STABLE / settling / withheld and why). After a failed read, the
last frame is shown darkened under "camera lost, retrying"; before the first frame, a grey
"waiting for the camera" image.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from edgereg.core.card import ModelCard
from edgereg.live.loop import NO_FRAME, Reading
from edgereg.preprocess import PreprocessConfig, crop_box
from edgereg.serve.hub import Published

GREEN = (60, 220, 60)  # BGR
AMBER = (0, 190, 255)
RED = (40, 40, 230)
CYAN = (230, 200, 40)


@dataclass(frozen=True)
class JpegOptions:
    """How frames are encoded for the stream and snapshots."""

    quality: int = 80  # JPEG quality 1..100: 80 is visually clean at a third of 95's size
    max_width: int = 1280  # wider frames are scaled down first: encode time and bandwidth grow with pixels

    def __post_init__(self) -> None:
        if not 1 <= self.quality <= 100:
            raise ValueError(f"JPEG quality must be 1..100, got {self.quality}")
        if self.max_width < 16:
            raise ValueError(f"max_width must be >= 16, got {self.max_width}")


def format_value(value: float) -> str:
    """Four significant digits without an exponent for ordinary magnitudes (``181.2``, ``0.01234``)."""
    if not np.isfinite(value):
        return "n/a"
    magnitude = int(np.floor(np.log10(abs(value)))) if value != 0 else 0
    decimals = min(6, max(0, 3 - magnitude))
    return f"{value:.{decimals}f}"


def reading_lines(reading: Reading, units: dict[str, str], *, max_targets: int = 4) -> list[str]:
    """The text drawn over a frame: one line per target (smoothed value, unit), then the state."""
    if reading.quality == NO_FRAME:
        return ["camera lost, retrying"]
    if not reading.ok or reading.smoothed is None:
        return [f"withheld: {reading.note or reading.quality}"]
    lines = []
    for name, value in list(reading.smoothed.items())[:max_targets]:
        unit = f" {units[name]}" if units.get(name) else ""
        lines.append(f"{name} {format_value(value)}{unit}")
    if len(reading.smoothed) > max_targets:
        lines.append(f"... {len(reading.smoothed) - max_targets} more")
    lines.append("STABLE" if reading.stable else "settling")
    return lines


class StreamClock:
    """Which reading the MJPEG stream shows: the latest one, renewed at most once per ``period_s``.

    Used from the event loop only (no lock). Every client asks :meth:`pick` and gets the same
    reading until the period has passed and a newer one exists.
    """

    def __init__(self, period_s: float) -> None:
        self.period_s = float(period_s)
        self.current: Published | None = None
        self._at = -float("inf")  # time.monotonic() when ``current`` was picked

    def pick(self, latest: Published) -> Published:
        now = time.monotonic()
        if self.current is None or (latest.seq > self.current.seq and now - self._at >= self.period_s):
            self.current = latest
            # keep the cadence when frames arrive on time; restart it after a pause
            self._at = now if now - self._at >= 2 * self.period_s else self._at + self.period_s
        return self.current

    def due_in(self) -> float:
        """Seconds until the next frame may be picked."""
        return self._at + self.period_s - time.monotonic()


class FrameEncoder:
    """Draws the overlay on the latest frame and encodes it as JPEG, once per reading.

    Args:
        card: the model card (crop geometry, units, kind).
        options: JPEG quality and size cap.
        on_encode: called after each encode (metrics).
    """

    def __init__(self, card: ModelCard, options: JpegOptions = JpegOptions(), *,
                 on_encode: Callable[[], None] | None = None) -> None:
        self.card = card
        self.options = options
        self.config = PreprocessConfig.from_card(card)
        self.units = card.unit_of
        self.encodes = 0  # JPEG encodes done
        self._on_encode = on_encode
        self._lock = threading.Lock()
        self._cache: dict[bool, tuple[int, bytes]] = {}  # overlay? -> (seq, jpeg)

    def jpeg(self, item: Published | None, *, image_item: Published | None = None, overlay: bool = True) -> bytes:
        """JPEG bytes for a published reading (blocking: call it from a worker thread).

        Args:
            item: the reading to show; None before the first reading.
            image_item: the latest reading with a frame, shown (darkened) when ``item`` is a failed read.
            overlay: draw the crop and the reading (False: the frame as the camera gave it).
        """
        seq = item.seq if item is not None else 0
        with self._lock:
            cached = self._cache.get(overlay)
            if cached is not None and cached[0] == seq:
                return cached[1]
            canvas = self._render(item, image_item, overlay)
            ok, buffer = cv2.imencode(".jpg", canvas, [cv2.IMWRITE_JPEG_QUALITY, self.options.quality])
            if not ok:
                raise RuntimeError("OpenCV could not encode the frame as JPEG")
            data = buffer.tobytes()
            self.encodes += 1
            if self._on_encode is not None:
                self._on_encode()
            self._cache[overlay] = (seq, data)
            return data

    def _render(self, item: Published | None, image_item: Published | None, overlay: bool) -> np.ndarray:
        """(H, W, 3) uint8 BGR: the frame to encode, with the overlay when asked."""
        reading = item.reading if item is not None else None
        if reading is not None and reading.image is not None:
            frame = reading.image
            canvas = self._scaled(frame)
            if overlay:
                self._draw_reading(canvas, reading, frame.shape[:2])
            return canvas
        previous = image_item.reading.image if image_item is not None else None
        if previous is None:
            canvas = np.full((480, 640, 3), 64, np.uint8)
            message = "camera lost, retrying" if reading is not None and reading.quality == NO_FRAME \
                else "waiting for the camera"
        else:
            canvas = (self._scaled(previous) // 3).astype(np.uint8)  # darkened: this is not live
            message = "camera lost, retrying"
        self._banner(canvas, message, RED)
        return canvas

    def _scaled(self, frame: np.ndarray) -> np.ndarray:
        """A copy of ``frame`` at most ``max_width`` wide (INTER_AREA)."""
        height, width = frame.shape[:2]
        if width <= self.options.max_width:
            return frame.copy()
        size = (self.options.max_width, max(1, round(height * self.options.max_width / width)))
        return cv2.resize(frame, size, interpolation=cv2.INTER_AREA)

    def _draw_reading(self, canvas: np.ndarray, reading: Reading, source_shape: tuple[int, int]) -> None:
        scale = canvas.shape[1] / source_shape[1]  # canvas pixels per source pixel
        colour = (GREEN if reading.stable else AMBER) if reading.ok else RED
        box = crop_box(source_shape[0], source_shape[1], self.config)
        thickness = max(1, round(canvas.shape[1] / 400))
        x0, y0, w, h = (v * scale for v in (box.x0, box.y0, box.w, box.h))
        if self.config.crop == "circle" or self.config.roi is not None:
            centre = (round(x0 + w / 2), round(y0 + h / 2))
            cv2.circle(canvas, centre, round(min(w, h) / 2), CYAN, thickness, cv2.LINE_AA)
        elif self.config.crop == "center":
            cv2.rectangle(canvas, (round(x0), round(y0)), (round(x0 + w) - 1, round(y0 + h) - 1), CYAN,
                          thickness, cv2.LINE_AA)
        if reading.ok and self.card.target_kind.xy_points and reading.values is not None:
            points = np.array(list(reading.values.values()), dtype=np.float64).reshape(-1, 2)  # (T,) -> (P, 2)
            for x, y in points:
                if np.isfinite(x) and np.isfinite(y):
                    cv2.drawMarker(canvas, (round((x + 0.5) * scale - 0.5), round((y + 0.5) * scale - 0.5)),
                                   GREEN, cv2.MARKER_CROSS, 8 * thickness, thickness, cv2.LINE_AA)
        self._text(canvas, reading_lines(reading, self.units), colour)

    @staticmethod
    def _text(canvas: np.ndarray, lines: list[str], colour: tuple[int, int, int]) -> None:
        """Lines in the top-left corner on a dark box, sized to the frame."""
        font_scale = max(0.45, canvas.shape[1] / 1100)
        weight = max(1, round(font_scale * 1.6))
        line_h = round(30 * font_scale) + 4
        width = max(cv2.getTextSize(line, cv2.FONT_HERSHEY_SIMPLEX, font_scale, weight)[0][0] for line in lines)
        box = canvas[4:8 + line_h * len(lines), 4:16 + width]
        box[:] = box // 3  # a dark backdrop keeps the text readable on any scene
        for i, line in enumerate(lines):
            cv2.putText(canvas, line, (10, 4 + line_h * (i + 1) - 6), cv2.FONT_HERSHEY_SIMPLEX, font_scale,
                        colour, weight, cv2.LINE_AA)

    def _banner(self, canvas: np.ndarray, message: str, colour: tuple[int, int, int]) -> None:
        self._text(canvas, [message], colour)
