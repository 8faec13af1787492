"""Batch scoring: a source of images -> a predictor -> one output row per image, none lost.

Threads: a producer thread walks the source (decoding video frames itself) and submits each file
to a pool of daemon decoder threads that read, decode and crop/resize it (OpenCV releases the
GIL). The
futures go, in input order, into a bounded queue (``queue_size``), so at most that many decoded
frames exist at any time, whatever the number of inputs. The calling thread takes them in order,
gathers batches of ``predictor.batch_size`` and runs ONNX Runtime (which releases the GIL too)
while the pool decodes the next ones. Taking futures in submission order is the reorder buffer:
rows come out in input order whatever order the decodes finish in.

A file that cannot be read or decoded is never fatal: it is written to the errors writer with
its reason and scoring goes on (``fail_fast`` stops at the first). Rows are written one at a time
(see ``edgereg.batch.writers``), so a killed run leaves only complete rows.

Each row is laid out by ``edgereg.core.rows`` (the columns of ``output_columns``); its flags (the
``flags`` column: ``out_of_range``, ``tta_disagreement``, ``not_finite``) are ``edgereg.batch.flags``;
a failure's one-line reason is ``edgereg.batch.failures``; ``--shard`` is ``edgereg.batch.shards``.

Video frames (batch scoring of a video file) pass the live readout's quality gate
(``edgereg.live.quality``, the same thresholds as ``--camera``), in frame order, before they are read:
a frame that is ``black``, ``overexposed``, ``frozen`` or ``blurred`` gets that word in its flags;
with ``gate=True`` (``--gate``) its row is still written, so nothing goes missing and ``--resume``
knows it was seen, but with empty values (JSONL ``null``) and the flag ``withheld``. Still images
are not gated: a folder has no frame order for ``frozen`` to mean anything, and a dark photo may be
a sample. After ``--resume`` or with ``--shard`` the gate starts afresh at the first frame scored,
so ``frozen`` needs its few frames of history again.

With intervals in the card, each target is followed by ``<target>_lo`` and ``<target>_hi`` (the
predictor's confidence level); the flags are followed by the predictor's lab flags (``below_lod``,
``interval_wide``, ...; see ``edgereg.lab.readout``), then ``unfamiliar`` when the model's novelty score
exceeds its card's threshold (``edgereg.core.predictor``; docs/lab-grade.md, "Unfamiliar photos").
"""

from __future__ import annotations

import contextlib
import functools
import os
import queue
import threading
import time
from collections.abc import Callable, Collection, Generator, Iterator, Mapping
from concurrent.futures import Future
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from edgereg.batch.failures import failure_reason
from edgereg.batch.flags import prediction_flags
from edgereg.batch.shards import Shard
from edgereg.batch.sources import BatchSource, Entry
from edgereg.batch.writers import RowWriter
from edgereg.core.rows import prediction_columns, prediction_row, reading_values, withheld_values
from edgereg.lab.audit import source_of
from edgereg.live.quality import QualityConfig, QualityGate, QualityReport
from edgereg.preprocess import CropBox, PreprocessConfig, crop_resize, default_threads
from edgereg.preprocess.decode import (
    DEFAULT_MAX_PIXELS,
    DecodeBudget,
    max_file_bytes,
    read_file_bytes,
)
from edgereg.preprocess.frames import load_frame

if TYPE_CHECKING:
    from edgereg.core.predictor import Predictor

OPENCV_EXIT_WAIT_S = 60.0  # the longest an exit waits for a decode in progress (a 50 MP image takes ~1 s)


def default_inference_threads() -> int:
    """ONNX Runtime intra-op threads while decoder threads run: half the cores, at least 1.

    ORT's worker threads spin while they wait; with one per core they take the CPU the decoder
    threads need (measured on 2 cores: 1 ORT thread scores ~1.5x more images/s than 2).
    """
    return max(1, (os.cpu_count() or 2) // 2)


@dataclass
class ScoreStats:
    """Counters of a scoring run (also what the progress callback receives).

    Attributes:
        scored: rows written (withheld rows included).
        failed: inputs written to the errors file.
        total: inputs this run will attempt (after shard and resume), when known.
        elapsed_s: seconds since the run started.
        withheld: rows written without values because the quality gate withheld them (``gate``).
        quality: count of each quality flag given to video frames (withheld or not).
        first_failures: the first few ``(key, reason)`` failures, for the summary.
    """

    scored: int = 0
    failed: int = 0
    total: int | None = None
    elapsed_s: float = 0.0
    withheld: int = 0
    quality: dict[str, int] = field(default_factory=dict)
    first_failures: list[tuple[str, str]] = field(default_factory=list)

    @property
    def done(self) -> int:
        return self.scored + self.failed

    @property
    def images_per_s(self) -> float:
        return self.done / self.elapsed_s if self.elapsed_s > 0 else 0.0


def output_columns(predictor: Predictor, *, audit: bool = False) -> tuple[str, ...]:
    """The columns :func:`score_source` writes for ``predictor`` (bounds when it has intervals,
    spreads with TTA, the audit columns when ``audit``; ``edgereg.core.rows``)."""
    from edgereg.lab.audit import AUDIT_COLUMNS

    return prediction_columns(predictor.names, with_spread=predictor.tta.n > 1,
                              with_interval=predictor.lab.has_intervals, audit=AUDIT_COLUMNS if audit else ())


class _OpenCVCalls:
    """Counts worker threads inside OpenCV, so that an exit can wait for them.

    The interpreter must not exit while a thread runs OpenCV code (its teardown then aborts the
    process with SIGABRT); a thread blocked reading a file, on the other hand, may be abandoned.
    """

    def __init__(self) -> None:
        self._inside = 0
        self._changed = threading.Condition()

    def __enter__(self) -> None:
        with self._changed:
            self._inside += 1

    def __exit__(self, *exc_info) -> None:
        with self._changed:
            self._inside -= 1
            self._changed.notify_all()

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no thread is inside OpenCV; False when ``timeout_s`` passed first."""
        with self._changed:
            return self._changed.wait_for(lambda: self._inside == 0, timeout=timeout_s)


def _load(entry: Entry, config: PreprocessConfig, max_pixels: int | None = DEFAULT_MAX_PIXELS,
          opencv: _OpenCVCalls | None = None, budget: DecodeBudget | None = None) -> tuple[np.ndarray, CropBox] | str:
    """Read, decode, crop and resize one entry (in a worker thread); a string is the failure reason.

    The file is read first (I/O, which may hang on a dead network file system), then decoded and
    cropped inside ``opencv`` (which an exit waits for), holding its decoded bytes in ``budget``.
    """
    if entry.error is not None:
        return entry.error
    try:
        frame = entry.frame
        # an entry without a frame has a path (Entry)
        data = None if frame is not None else read_file_bytes(cast(Path, entry.path),
                                                              max_bytes=max_file_bytes(max_pixels))
        with opencv or contextlib.nullcontext():
            if frame is not None:
                return crop_resize(frame, config)
            # JPEGs decoded at 1/2..1/8 under config.decode, as training decoded them (preprocess.frames)
            return load_frame(cast(bytes, data), config, source=str(entry.path), max_pixels=max_pixels, budget=budget)
    except Exception as exc:
        return failure_reason(exc, entry.key)


def load_entry(entry: Entry, config: PreprocessConfig,
               max_pixels: int | None = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, CropBox] | str:
    """Read, decode, crop and resize one entry on the calling thread; a string is the failure reason.

    The decode tasks of ``edgereg.cluster`` call it, so both engines refuse the same files for the
    same reasons, worded the same way.

    Returns:
        ``(frame (h, w, 3) uint8 BGR at the model input size, CropBox)``, or the reason (str).
    """
    return _load(entry, config, max_pixels)


class _DecoderPool:
    """Daemon threads that run ``fn(*args)`` for each submitted task and fill a Future.

    Not ``ThreadPoolExecutor``: its threads are joined when the interpreter exits, so one read
    hanging on a network file system (or a FIFO) would keep a Ctrl-C'd run from ever exiting.
    """

    def __init__(self, threads: int, fn: Callable[..., Any], opencv: _OpenCVCalls | None = None) -> None:
        self._fn = fn
        self.opencv = opencv or _OpenCVCalls()
        self._tasks: queue.SimpleQueue = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._work, name=f"edgereg-decode-{i}", daemon=True)
                         for i in range(threads)]
        for thread in self._threads:
            thread.start()

    def submit(self, *args: Any) -> Future:
        future: Future = Future()
        self._tasks.put((future, args))
        return future

    def _work(self) -> None:
        while (task := self._tasks.get()) is not None:
            future, args = task
            if not future.set_running_or_notify_cancel():
                continue  # cancelled while queued
            try:
                future.set_result(self._fn(*args))
            except BaseException as exc:
                future.set_exception(exc)

    def shutdown(self, *, timeout_s: float = 1.0, opencv_timeout_s: float = OPENCV_EXIT_WAIT_S) -> None:
        """Stop the threads after their current task, waiting at most ``timeout_s`` for them, and
        up to ``opencv_timeout_s`` more while one of them is inside OpenCV.

        Waiting lets a decode in progress leave OpenCV before the interpreter may exit (exiting
        under a running OpenCV call aborts the process); a decode is bounded by --max-pixels, so
        that wait ends. A thread stuck reading a file (a dead network file system) is not in
        OpenCV and is abandoned after ``timeout_s``: it cannot keep the run from exiting.
        """
        for _ in self._threads:
            self._tasks.put(None)
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if any(thread.is_alive() for thread in self._threads):
            self.opencv.wait_idle(opencv_timeout_s)


_END = object()  # the producer's last item


class _Failure:
    """An exception raised in the producer thread, handed to the consumer to re-raise."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def _produce(source: BatchSource, select, pool: _DecoderPool, config: PreprocessConfig,
             pending: queue.Queue, stop: threading.Event, max_pixels: int | None,
             quality: QualityConfig | None) -> None:
    """Walk the source in order, submit each entry for decoding and queue ``(entry, future,
    quality report or None)``; video frames pass the quality gate here, in frame order."""
    gate = QualityGate(quality) if quality is not None else None

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                pending.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    try:
        for entry in source.entries(select):
            report = gate.check(entry.frame) if gate is not None and entry.frame is not None else None
            if not put((entry, pool.submit(entry, config, max_pixels), report)):
                return
    except BaseException as exc:
        put(_Failure(exc))
    finally:
        put(_END)


def _decode_in_order(source: BatchSource, select, config: PreprocessConfig, *, threads: int, queue_size: int,
                     max_pixels: int | None = DEFAULT_MAX_PIXELS, quality: QualityConfig | None = None
                     ) -> Generator[tuple[Entry, tuple[np.ndarray, CropBox] | str, QualityReport | None], None, None]:
    """Yield ``(entry, (frame, box) or failure reason, quality report)`` in input order, decoding
    ahead in threads (the report is None except for video frames with ``quality``).

    ``frame`` is (h, w, 3) uint8 BGR at the model input size. At most ``queue_size`` entries are
    decoded ahead of the consumer. Close the generator to stop the threads.
    """
    pending: queue.Queue = queue.Queue(maxsize=max(1, queue_size))
    stop = threading.Event()
    opencv = _OpenCVCalls()
    budget = DecodeBudget()  # decoded bytes in flight, whatever the number of threads
    pool = _DecoderPool(threads, functools.partial(_load, opencv=opencv, budget=budget), opencv)
    producer = threading.Thread(target=_produce, name="edgereg-sources", daemon=True,
                                args=(source, select, pool, config, pending, stop, max_pixels, quality))
    producer.start()
    try:
        while (item := pending.get()) is not _END:
            if isinstance(item, _Failure):
                raise item.exc
            entry, future, report = item
            yield entry, future.result(), report
    finally:
        stop.set()
        _drain(pending)
        producer.join(timeout=1.0)
        pool.shutdown(timeout_s=1.0)


@dataclass(frozen=True)
class _Item:
    """One decoded input waiting in a batch: its frame at model size, crop box and quality report."""

    entry: Entry
    frame: np.ndarray  # (h, w, 3) uint8 BGR at the model input size
    box: CropBox
    report: QualityReport | None  # video frames only
    withheld: bool  # the quality gate withholds its reading (--gate)


def _rows(predictor: Predictor, items: list[_Item], audit=None) -> Iterator[dict[str, Any]]:
    """Score one batch and yield its output rows (``path``, targets with their ``_lo``/``_hi``
    bounds, spreads, ``flags``, then the audit columns when ``audit``, an
    ``edgereg.lab.audit.AuditTrail``, is given), in order.

    Withheld items get a row with empty values and the flags ``(reason, "withheld")``; the others
    go through the model together.
    """
    scored = [item for item in items if not item.withheld]
    if scored:
        frames = np.stack([item.frame for item in scored])  # (B, h, w, 3)
        boxes = [item.box for item in scored]
        result = predictor.predict_prepared(frames, boxes)
        flags = prediction_flags(predictor.card, result, boxes)
    with_interval = predictor.lab.has_intervals
    with_spread = predictor.tta.n > 1
    position = 0
    for item in items:
        quality = (item.report.reason,) if item.report is not None and item.report.reason else ()
        if item.withheld:
            numbers: Mapping[str, float | None] = withheld_values(predictor.names, with_spread=with_spread,
                                                                  with_interval=with_interval)
            flags_of_item: tuple[str, ...] = (*quality, "withheld")
        else:
            bounds = (result.lo, result.hi) if with_interval else (None, None)
            numbers = reading_values(predictor.names, result.values[position],
                                     None if result.spread is None else result.spread[position],
                                     *(None if bound is None else bound[position] for bound in bounds))
            flags_of_item = (*flags[position], *quality)
            position += 1
        fields = audit.fields(source_of(item.entry.key), item.frame) if audit is not None else None
        yield prediction_row(item.entry.key, numbers, flags_of_item, fields)


FAILURES_KEPT = 5  # failures remembered for the summary line
DEFAULT_QUALITY = QualityConfig()  # the live readout's thresholds (frozen)


def score_source(source: BatchSource, predictor: Predictor, rows: RowWriter, errors: RowWriter | None = None, *,
                 skip: Collection[str] = frozenset(), shard: Shard | None = None,
                 decode_threads: int | None = None, queue_size: int | None = None,
                 fail_fast: bool = False, on_error: Callable[[str, str], None] | None = None,
                 on_progress: Callable[[ScoreStats], None] | None = None,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS, quality: QualityConfig | None = DEFAULT_QUALITY,
                 gate: bool = False, audit=None) -> ScoreStats:
    """Score every selected input of ``source`` and write one row each, in input order.

    Args:
        source: the inputs (see ``edgereg.batch.sources``).
        predictor: an ``edgereg.Predictor`` (its ``batch_size``, TTA and card apply).
        rows: the predictions writer, with columns :func:`output_columns` ``(predictor, audit=...)``.
        errors: the errors writer (columns ``path, reason``), or None.
        skip: keys already scored (``--resume``).
        shard: score only this shard of the inputs.
        decode_threads: decoder threads (default: one per core, at least 2).
        queue_size: decoded frames allowed to wait for inference; bounds memory (default:
            two batches plus four per decoder thread).
        fail_fast: stop at the first input that fails.
        on_error: called with ``(key, reason)`` for each failure (e.g. to print it).
        on_progress: called with the running :class:`ScoreStats` after each batch and each failure.
        max_pixels: images whose header declares more pixels are failures (``--max-pixels``).
        quality: the quality gate's thresholds for video frames; None: no gate.
        gate: withhold the reading of a frame the gate rejects (``--gate``) instead of flagging it.
        audit: an ``edgereg.lab.audit.AuditTrail`` to add its columns to every row, or None.

    Returns:
        The final ScoreStats.
    """
    decode_threads = decode_threads or default_threads()
    queue_size = queue_size or 2 * predictor.batch_size + 4 * decode_threads
    skip = skip if isinstance(skip, (set, frozenset)) else set(skip)

    def select(position: int, key: str) -> bool:
        return (shard is None or shard.selects(position)) and key not in skip

    stats = ScoreStats(total=_count_selected(source, select))
    started = time.perf_counter()
    batch: list[_Item] = []

    def report() -> None:
        stats.elapsed_s = time.perf_counter() - started
        if on_progress:
            on_progress(stats)

    def flush() -> None:
        if batch:
            for row in _rows(predictor, batch, audit):
                rows.write(row)
                stats.scored += 1
            batch.clear()
            report()

    with closing(_decode_in_order(source, select, predictor.config, threads=decode_threads,
                                  queue_size=queue_size, max_pixels=max_pixels, quality=quality)) as decoded:
        for entry, loaded, verdict in decoded:
            if isinstance(loaded, str):
                if errors is not None:
                    errors.write({"path": entry.key, "reason": loaded})
                stats.failed += 1
                if len(stats.first_failures) < FAILURES_KEPT:
                    stats.first_failures.append((entry.key, loaded))
                if on_error:
                    on_error(entry.key, loaded)
                report()
                if fail_fast:
                    break
                continue
            reason = verdict.reason if verdict is not None else None
            rejected = reason is not None
            if reason is not None:
                stats.quality[reason] = stats.quality.get(reason, 0) + 1
                stats.withheld += gate
            batch.append(_Item(entry, *loaded, verdict, withheld=rejected and gate))
            if len(batch) >= predictor.batch_size:
                flush()
        flush()
    stats.elapsed_s = time.perf_counter() - started
    return stats


def _count_selected(source: BatchSource, select) -> int | None:
    """How many inputs this run will attempt: exact for file lists, from the header for video."""
    keys = source.planned_keys()
    if keys is None:
        return None
    return sum(1 for position, key in enumerate(keys) if select(position, key))


def _drain(pending: queue.Queue) -> None:
    """Empty the queue so a producer blocked on ``put`` sees the stop event; cancel its futures."""
    while True:
        try:
            item = pending.get_nowait()
        except queue.Empty:
            return
        if isinstance(item, tuple) and isinstance(item[1], Future):
            item[1].cancel()
