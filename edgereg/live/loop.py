"""The live readout loop: frames from a camera -> quality gate -> model -> smoothed, stable readings.

:func:`run_live` works with any frame source that has ``read() -> (ok, frame)`` and ``release()``
(``cv2.VideoCapture``, :class:`edgereg.batch.sources.CameraSource`, or a test double). A source that can
end (a video file) sets ``ended = True`` at its end and the loop stops; a source may also raise
:class:`~edgereg.errors.CameraError` from ``read()`` when it cannot open (the error propagates
when the source has also ``ended``: it will never open). Any other failed read is a drop-out: the
loop yields a ``quality="no_frame"`` reading with the reason, waits (back-off doubling from
``retry_initial_s`` to ``retry_max_s``, through the injected ``sleep``) and tries again, forever
unless ``max_retries`` is set; the readout resumes when frames return.

Per frame it yields one :class:`Reading`. A frame the quality gate rejects (black, overexposed,
frozen, blurred) is not sent to the model and its reading carries no number. The smoother and
the stability window start again after a drop-out (the sample may have changed); a withheld frame
only restarts the stability window.

There is one loop however the readings are consumed: ``edgereg infer --camera`` iterates
:func:`run_live` on its own thread; :class:`LiveFeed` runs the same generator on a background
thread and hands every reading to its subscribers (``edgereg serve`` publishes them to all its
web clients), keeping the latest reading and the counters.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, cast

import numpy as np

from edgereg.batch.sources import redact_credentials
from edgereg.errors import CameraError, EdgeregError, ShapeError
from edgereg.json_values import finite_values
from edgereg.live.quality import QualityConfig, QualityGate, QualityReport
from edgereg.live.smoothing import StabilityTracker, make_smoother, stability_tolerance

if TYPE_CHECKING:
    from edgereg.core.predictor import Predictor

NO_FRAME = "no_frame"  # the quality of a reading for a failed read
INVALID = "invalid_frame"  # the quality of a frame that is not an image (wrong shape or dtype)


class FrameSource(Protocol):
    """What :func:`run_live` reads from (``cv2.VideoCapture`` is one)."""

    def read(self) -> tuple[bool, np.ndarray | None]: ...

    def release(self) -> None: ...


@dataclass(frozen=True)
class LiveConfig:
    """Options of the live loop."""

    smooth_window: int = 5  # readings smoothed over, and how long a reading must hold to be stable
    smooth_method: str = "median"  # "median" ignores single odd frames; "ema" reacts more smoothly
    stable_tolerance: float | None = None  # max - min allowed while stable, in target units; None = per card
    quality: QualityConfig | None = QualityConfig()  # None turns the gate off (every frame is read)
    retry_initial_s: float = 0.5  # first wait after a failed read: a USB camera needs about that
    retry_max_s: float = 10.0  # the back-off stops doubling here, so recovery is noticed within 10 s
    max_retries: int | None = None  # consecutive failed reads before giving up; None = never give up
    max_frames: int | None = None  # stop after this many frames (None = until the source ends)
    audit: bool = False  # add the audit trail (edgereg.lab.audit) to every reading


@dataclass(frozen=True)
class Reading:
    """One frame's outcome (or one failed read).

    Attributes:
        timestamp: seconds since the epoch (the injected clock) when the frame was read.
        frame: 0-based number of the frame since the start; None for a failed read.
        quality: "ok", a quality-gate reason (``black``, ``overexposed``, ``frozen``, ``blurred``),
            ``invalid_frame`` or ``no_frame``.
        values: {target: value} in physical units, or None when withheld.
        spread: {target: TTA spread}, or None without TTA or when withheld.
        smoothed: {target: smoothed value}, or None when withheld.
        stable: the smoothed value has stayed within tolerance for ``smooth_window`` readings.
        note: a human explanation when withheld or after a drop-out (e.g. "blurred: sharpness 3.1 < 10").
        report: the quality gate's measurements, or None.
        process_ms: time spent on this frame (gate + model), in milliseconds.
        image: the (H, W, 3) uint8 BGR frame itself, for display (not serialized).
        lo, hi: {target: conformal bound} at the predictor's confidence, or None.
        flags: lab flags of the reading (``edgereg.lab.readout``), e.g. ``("below_lod",)``.
        audit: the audit trail (``edgereg.lab.audit``) with ``--audit``, else None.
        standard: the ``--check-standard`` verdict on this reading, or None.
    """

    timestamp: float
    frame: int | None
    quality: str
    values: dict[str, float] | None = None
    spread: dict[str, float] | None = None
    smoothed: dict[str, float] | None = None
    stable: bool = False
    note: str | None = None
    report: QualityReport | None = None
    process_ms: float = 0.0
    image: np.ndarray | None = field(default=None, repr=False, compare=False)
    lo: dict[str, float] | None = None
    hi: dict[str, float] | None = None
    flags: tuple[str, ...] = ()
    audit: dict[str, Any] | None = None
    standard: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.quality == "ok"

    def to_json(self) -> str:
        """One JSON object (no newline): timestamp, frame, value, lo, hi, spread, smoothed, stable,
        flags, quality, note, the gate's measurements under ``quality_detail``, and ``audit`` /
        ``standard`` when present."""
        clean = finite_values  # unrounded, as /api/predict sends them (edgereg.json_values)
        record: dict[str, Any] = {
            "timestamp": round(self.timestamp, 3), "frame": self.frame, "value": clean(self.values),
            "lo": clean(self.lo), "hi": clean(self.hi),
            "spread": clean(self.spread), "smoothed": clean(self.smoothed), "stable": self.stable,
            "flags": list(self.flags), "quality": self.quality, "note": self.note,
            "quality_detail": self.report.as_dict() if self.report is not None else None,
        }
        if self.audit is not None:
            record["audit"] = self.audit
        if self.standard is not None:
            record["standard"] = self.standard
        return json.dumps(record, ensure_ascii=False)


class LiveStats:
    """Counts for the end-of-run summary; feed it every reading.

    Memory stays flat however long the loop runs: counters, and the processing times of the last
    ``keep_times`` frames (the summary's median is over those).
    """

    def __init__(self, keep_times: int = 10_000) -> None:
        self.frames = 0
        self.readings = 0
        self.withheld: Counter[str] = Counter()
        self.failed_reads = 0
        self.dropouts = 0
        self.process_ms: deque[float] = deque(maxlen=keep_times)  # milliseconds, the latest frames
        self._in_dropout = False
        self._started = time.perf_counter()

    def add(self, reading: Reading) -> None:
        if reading.quality == NO_FRAME:
            self.failed_reads += 1
            self.dropouts += not self._in_dropout
            self._in_dropout = True
            return
        self._in_dropout = False
        self.frames += 1
        self.process_ms.append(reading.process_ms)
        if reading.ok:
            self.readings += 1
        else:
            self.withheld[reading.quality] += 1

    def summary(self) -> str:
        elapsed = time.perf_counter() - self._started
        withheld = sum(self.withheld.values())
        reasons = ", ".join(f"{n} {reason}" for reason, n in self.withheld.most_common())
        text = f"{self.frames} frames: {self.readings} readings, {withheld} withheld"
        text += f" ({reasons})" if reasons else ""
        if self.failed_reads:
            text += f"; {self.dropouts} camera drop-out(s), {self.failed_reads} failed reads"
        if self.process_ms:
            over = "" if len(self.process_ms) == self.frames else f" of the last {len(self.process_ms)}"
            text += f"; {float(np.median(self.process_ms)):.1f} ms/frame (median{over})"
        if elapsed > 0:
            text += f"; {self.frames / elapsed:.1f} frames/s over {elapsed:.1f} s"
        return text


def run_live(source: FrameSource, predictor: Predictor, *, config: LiveConfig = LiveConfig(),
             clock: Callable[[], float] = time.time,
             sleep: Callable[[float], object] = time.sleep) -> Generator[Reading, None, None]:
    """Read frames until the source ends, ``max_frames`` is reached or the consumer stops.

    Args:
        source: anything with ``read() -> (ok, (H, W, 3) uint8 BGR frame)`` and ``release()``;
            released when this generator finishes or is closed.
        predictor: an ``edgereg.Predictor`` (``predict([frame])``, ``card``, ``names``).
        config: smoothing, stability, quality gate and retry options.
        clock: returns the timestamp of a reading (seconds since the epoch).
        sleep: waits between retries (inject a fake in tests).

    Yields:
        One Reading per frame read, and one per failed read.

    Raises:
        CameraError: ``max_retries`` consecutive reads failed.
    """
    readout = _Readout(predictor, config, clock,
                       source_name=redact_credentials(str(getattr(source, "name", "camera"))))
    failures = 0
    frame_number = 0
    try:
        while config.max_frames is None or frame_number < config.max_frames:
            try:
                ok, frame = source.read()
                reason = "the source returned no frame"
            except CameraError as exc:
                if getattr(source, "ended", False):
                    raise  # it cannot open and never will (a video file OpenCV cannot decode)
                ok, frame, reason = False, None, redact_credentials(str(exc))  # notes reach web clients
            if not ok or frame is None:
                if getattr(source, "ended", False):
                    return
                failures += 1
                if config.max_retries is not None and failures > config.max_retries:
                    raise CameraError(f"no frame after {failures} attempts ({reason}); check the camera "
                                      "and its cable, or raise --max-retries")
                delay = min(config.retry_max_s, config.retry_initial_s * 2 ** (failures - 1))
                readout.reset()
                yield Reading(clock(), None, NO_FRAME, note=f"{reason}; retry {failures} in {delay:.1f} s")
                sleep(delay)
                continue
            note = f"frames are back after {failures} failed read(s)" if failures else None
            failures = 0
            yield readout.read(frame, frame_number, note)
            frame_number += 1
    finally:
        source.release()


class LiveFeed:
    """One :func:`run_live` loop on a background thread, shared by every consumer of its readings.

    Subscribers are called on the capture thread with each :class:`Reading`, in order; they must
    return quickly (hand the reading over, never wait on a client). :meth:`stop` ends the loop
    within one frame or one back-off wait and releases the source. ``max_retries`` and
    ``max_frames`` of the config still end the loop; ``error`` then says why.

    Args:
        source: a frame source (see :func:`run_live`); released when the loop ends.
        predictor: an ``edgereg.Predictor``.
        config: the loop's options.
        name: what the source is, for messages (default: ``source.name`` or the class name).
        clock: timestamps of the readings (seconds since the epoch).
    """

    def __init__(self, source: FrameSource, predictor: Predictor, *, config: LiveConfig = LiveConfig(),
                 name: str | None = None, clock: Callable[[], float] = time.time) -> None:
        self.source = source
        self.predictor = predictor
        self.config = config
        self.name = redact_credentials(str(name or getattr(source, "name", type(source).__name__)))
        self.stats = LiveStats()
        self.error: BaseException | None = None  # why the loop ended, when it ended on an error
        self._clock = clock
        self._subscribers: list[Callable[[Reading], None]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._latest: Reading | None = None
        self._last_frame_at: float | None = None  # time.monotonic() of the latest frame read

    def subscribe(self, callback: Callable[[Reading], None]) -> Callable[[], None]:
        """Call ``callback(reading)`` for every reading from now on; returns the unsubscribe function."""
        with self._lock:
            self._subscribers.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._subscribers:
                    self._subscribers.remove(callback)
        return unsubscribe

    @property
    def latest(self) -> Reading | None:
        """The most recent reading (a frame or a failed read), or None before the first."""
        return self._latest

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def frame_age_s(self) -> float | None:
        """Seconds since the last frame was read (None before the first frame)."""
        at = self._last_frame_at
        return None if at is None else time.monotonic() - at

    def connected(self) -> bool:
        """The loop runs and its latest reading came from a frame, not a failed read."""
        latest = self._latest
        return self.running and latest is not None and latest.quality != NO_FRAME

    def start(self) -> None:
        """Start the capture thread (once)."""
        if self._thread is not None:
            raise RuntimeError("LiveFeed.start() was already called")
        self._thread = threading.Thread(target=self._run, name="edgereg-capture", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Ask the loop to end and wait up to ``timeout_s`` for it (a blocked camera read may not return)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)

    def _run(self) -> None:
        readings = run_live(self.source, self.predictor, config=self.config, clock=self._clock,
                            sleep=self._stop.wait)  # a stop interrupts a back-off wait
        try:
            for reading in readings:
                self._publish(reading)
                if self._stop.is_set():
                    break
        except Exception as exc:
            self.error = exc
        finally:
            readings.close()

    def _publish(self, reading: Reading) -> None:
        now = time.monotonic()
        self.stats.add(reading)
        self._latest = reading
        if reading.quality != NO_FRAME:
            self._last_frame_at = now
        with self._lock:
            subscribers = list(self._subscribers)
        for callback in subscribers:
            callback(reading)


class _Readout:
    """Turns one frame into a Reading: gate, model, smoother and stability window."""

    def __init__(self, predictor: Predictor, config: LiveConfig, clock: Callable[[], float], *,
                 source_name: str = "camera") -> None:
        card = predictor.card
        self.source_name = source_name
        self.audit = None
        if config.audit:
            from edgereg.lab.audit import AuditTrail

            self.audit = AuditTrail.for_predictor(predictor)
        self.predictor = predictor
        self.names = tuple(predictor.names)
        self.clock = clock
        self.smoother = make_smoother(config.smooth_method, config.smooth_window, kind=card.target_kind)
        self.stability = StabilityTracker(config.smooth_window,
                                          stability_tolerance(card, config.stable_tolerance),
                                          circular=card.target_kind.circular)
        self.gate = QualityGate(config.quality) if config.quality is not None else None

    def reset(self) -> None:
        """Start smoothing, stability and the frozen check afresh (after a drop-out)."""
        self.smoother.reset()
        self.stability.reset()
        if self.gate is not None:
            self.gate.reset()

    def read(self, frame: np.ndarray, number: int, note: str | None) -> Reading:
        timestamp = self.clock()
        started = time.perf_counter()
        try:
            gate = self.gate
            report = gate.check(frame) if gate is not None else None
            if gate is not None and report is not None and not report.ok:
                self.stability.reset()
                return Reading(timestamp, number, cast(str, report.reason), note=report.describe(gate.config),
                               report=report, process_ms=_ms_since(started), image=frame)
            result = self.predictor.predict([frame])
        except ShapeError as exc:
            self.stability.reset()
            return Reading(timestamp, number, INVALID, note=str(exc), process_ms=_ms_since(started))
        values = result.values[0]  # (T,)
        smoothed = self.smoother.update(values)
        stable = self.stability.update(smoothed)
        spread = dict(zip(self.names, map(float, result.spread[0]))) if result.spread is not None else None
        lo = dict(zip(self.names, map(float, result.lo[0]))) if result.lo is not None else None
        hi = dict(zip(self.names, map(float, result.hi[0]))) if result.hi is not None else None
        audit = None
        if self.audit is not None:
            from edgereg.preprocess import crop_resize

            crop = crop_resize(frame, self.predictor.config)[0]
            audit = self.audit.fields(f"{self.source_name}#frame={number}", crop, timestamp=timestamp)
        return Reading(timestamp, number, "ok", values=dict(zip(self.names, map(float, values))),
                       spread=spread, smoothed=dict(zip(self.names, map(float, smoothed))), stable=stable,
                       note=note, report=report, process_ms=_ms_since(started), image=frame, lo=lo, hi=hi,
                       flags=tuple(result.flags[0]) if result.flags else (), audit=audit)


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1e3


def check_gui() -> None:
    """Raise a clear error when this OpenCV cannot open windows (``--show``).

    Raises:
        EdgeregError: OpenCV was built without a GUI backend (e.g. opencv-python-headless) or
            no display is available.
    """
    import cv2

    try:
        cv2.namedWindow("edgereg", cv2.WINDOW_NORMAL)
    except cv2.error:
        raise EdgeregError("--show needs OpenCV with a GUI and a display; this OpenCV has no GUI "
                           "(opencv-python-headless) or there is no display: pip install opencv-python, "
                           "or drop --show and use --jsonl") from None


def draw_overlay(image: np.ndarray, lines: list[str], *, ok: bool) -> np.ndarray:
    """A copy of ``image`` ((H, W, 3) uint8 BGR) with ``lines`` written in its top-left corner."""
    import cv2

    canvas = image.copy()
    colour = (60, 220, 60) if ok else (40, 40, 230)  # BGR green / red
    scale = max(0.5, canvas.shape[1] / 1000)
    for i, line in enumerate(lines):
        origin = (10, int(30 * scale * (i + 1)))
        cv2.putText(canvas, line, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 4, cv2.LINE_AA)
        cv2.putText(canvas, line, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, 1, cv2.LINE_AA)
    return canvas
