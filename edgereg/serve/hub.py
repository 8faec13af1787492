"""The readings of the capture loop, kept for a few minutes and handed to async web clients.

The capture thread calls :meth:`ReadingHub.publish` for every reading; the reading is serialized
once (the ``--jsonl`` schema, :meth:`edgereg.live.loop.Reading.to_json`) and every ``/events`` client
sends the same text. Async clients wait with :meth:`ReadingHub.wait_newer`, woken on the server's
event loop through ``call_soon_threadsafe``; nothing blocks the event loop.

Sequence numbers start at 1 and grow by one per reading; ``instance`` changes on every start of
the server, so an event-stream client that reconnects to a restarted server (with the old
``Last-Event-ID``) is recognised and starts from the latest reading.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace

from edgereg.json_values import finite_or_none
from edgereg.live.loop import NO_FRAME, Reading


@dataclass(frozen=True)
class Published:
    """One reading as the hub keeps it.

    Attributes:
        seq: 1, 2, ... in publishing order.
        reading: the reading; with its frame (for the JPEG encoder) only in :meth:`ReadingHub.latest`
            and :meth:`ReadingHub.latest_with_image`, never in the history.
        json: ``reading.to_json()``, computed once for every client.
        at: ``time.monotonic()`` when it was published.
    """

    seq: int
    reading: Reading
    json: str
    at: float


@dataclass(frozen=True)
class CameraState:
    """The camera as the published readings tell it, taken at one moment (one lock, one clock).

    ``/healthz``, ``/metrics`` and the snapshot all judge the camera from this, so they never
    disagree about a reading that is being handed out.

    Attributes:
        seq: sequence number of the latest reading (0 before the first).
        lost: the latest reading is a failed read (``quality == "no_frame"``).
        frame_age_s: seconds since the latest reading from a frame was published; None before the first.
    """

    seq: int
    lost: bool
    frame_age_s: float | None

    def connected(self, stale_after_s: float) -> bool:
        """Frames arrive: the latest reading came from a frame no older than ``stale_after_s`` seconds."""
        return not self.lost and self.frame_age_s is not None and self.frame_age_s <= stale_after_s


class ReadingHub:
    """Buffer of recent readings with async waiting.

    Args:
        history_s: how long readings are kept (for ``/api/history`` and event-stream resumes).
        max_items: at most this many readings are kept, whatever their age.
        clock: monotonic seconds (inject a fake in tests); ages and expiry are measured with it.
    """

    def __init__(self, *, history_s: float = 300.0, max_items: int = 20_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.history_s = float(history_s)
        self.max_items = int(max_items)
        self.instance = uuid.uuid4().hex[:8]
        self._clock = clock
        self._items: deque[Published] = deque()
        self._lock = threading.Lock()
        self._seq = 0
        self._last_frame_at: float | None = None  # clock() when the latest reading from a frame was published
        self._loop: asyncio.AbstractEventLoop | None = None
        self._event: asyncio.Event | None = None
        self._latest: Published | None = None  # the latest reading, with its frame
        self._last_image_item: Published | None = None  # the latest reading that carries a frame

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Attach the event loop that the waiting clients run on (call from that loop)."""
        self._loop = loop
        self._event = asyncio.Event()

    @property
    def seq(self) -> int:
        return self._seq

    def latest(self) -> Published | None:
        """The latest reading, with its frame (None before the first)."""
        with self._lock:
            return self._latest

    def oldest_seq(self) -> int | None:
        """The sequence number of the oldest buffered reading (None when empty)."""
        with self._lock:
            return self._items[0].seq if self._items else None

    def latest_with_image(self) -> Published | None:
        """The latest reading that carries a frame (withheld frames do; failed reads do not)."""
        return self._last_image_item

    def publish(self, reading: Reading) -> Published:
        """Add a reading (any thread) and wake the waiting clients.

        The history keeps the reading without its frame (a frame is 1-25 MB; the history holds up
        to ``max_items`` readings): only the latest frame is kept, for the snapshot and the stream.
        """
        now = self._clock()
        with self._lock:
            self._seq += 1
            item = Published(self._seq, reading, reading.to_json(), now)
            self._latest = item
            self._items.append(item if reading.image is None else replace(item, reading=replace(reading, image=None)))
            while self._items and (len(self._items) > self.max_items or now - self._items[0].at > self.history_s):
                self._items.popleft()
            if reading.image is not None:
                self._last_image_item = item
            if reading.quality != NO_FRAME:
                self._last_frame_at = now
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._wake)
            except RuntimeError:  # the loop closed between the check and the call (shutdown)
                pass
        return item

    def _wake(self) -> None:
        """On the event loop: release every waiter and arm a fresh event for the next reading."""
        event, self._event = self._event, asyncio.Event()
        if event is not None:
            event.set()

    def since(self, seq: int, *, limit: int | None = None) -> list[Published]:
        """Readings with a sequence number above ``seq``, oldest first (at most the last ``limit``)."""
        with self._lock:
            newer: list[Published] = []
            for item in reversed(self._items):
                if item.seq <= seq or (limit is not None and len(newer) >= limit):
                    break
                newer.append(item)
        newer.reverse()
        return newer

    async def wait_newer(self, seq: int, timeout_s: float) -> bool:
        """Wait until a reading newer than ``seq`` exists; False after ``timeout_s`` without one."""
        event = self._event
        if self._seq > seq:
            return True
        if event is None:
            raise RuntimeError("ReadingHub.bind(loop) must be called before waiting")
        try:
            await asyncio.wait_for(event.wait(), timeout_s)
        except asyncio.TimeoutError:
            return self._seq > seq
        return True

    def history(self, seconds: float, *, max_points: int = 1500) -> dict:
        """The recent readings for the page's chart, thinned to at most ``max_points``.

        Returns:
            ``{"timestamp": [t...], "value": {target: [v or None...]}, "smoothed": {...},
            "stable": [bool...], "quality": [str...]}`` (epoch seconds; None where withheld).
        """
        now = self._clock()
        with self._lock:
            items = [item for item in self._items if now - item.at <= seconds]
        step = max(1, math.ceil(len(items) / max_points))
        items = items[::-1][::step][::-1]  # thin from the newest, so the latest point is always kept
        names: list[str] = []
        for item in items:
            for key in (item.reading.values or {}):
                if key not in names:
                    names.append(key)

        def column(field: str) -> dict[str, list[float | None]]:
            out = {}
            for name in names:
                series = []
                for item in items:
                    mapping = getattr(item.reading, field)
                    value = None if mapping is None else mapping.get(name)
                    series.append(finite_or_none(value))
                out[name] = series
            return out

        return {
            "timestamp": [round(item.reading.timestamp, 3) for item in items],
            "value": column("values"), "smoothed": column("smoothed"),
            "stable": [item.reading.stable for item in items],
            "quality": [item.reading.quality for item in items],
        }

    def camera_state(self) -> CameraState:
        """The camera's state from the published readings, read at once under the hub's lock."""
        with self._lock:
            latest = self._latest
            at = self._last_frame_at
            now = self._clock()
        lost = latest is not None and latest.reading.quality == NO_FRAME
        return CameraState(self._seq if latest is not None else 0, lost, None if at is None else max(0.0, now - at))

    def camera_lost(self) -> bool:
        """The latest reading is a failed read."""
        return self.camera_state().lost
