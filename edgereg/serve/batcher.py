"""Micro-batching: images of concurrent ``/api/predict`` requests go to ONNX Runtime together.

One worker thread takes the first waiting request, then every request that is already waiting or
arrives within ``max_wait_s``, up to ``max_images`` images, and runs them as one
``predict_prepared`` call; each request gets its own slice of the result through its Future.
Under load the queue fills while a batch runs, so batches form without waiting; with one client
the added latency is at most ``max_wait_s``. A request larger than ``max_images`` runs on its own
(the predictor splits it into its own batches).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from edgereg.core.predictor import Predictions
from edgereg.preprocess import CropBox


@dataclass
class _Job:
    frames: np.ndarray  # (n, H, W, 3) uint8 BGR at the model input size
    boxes: list[CropBox]
    future: Future = field(default_factory=Future)


class MicroBatcher:
    """Runs ``predict_prepared(frames, boxes)`` on batches gathered from concurrent submitters.

    Args:
        predict_prepared: ``(frames (B, H, W, 3) uint8, boxes) -> Predictions`` (a Predictor's).
        max_images: images per ONNX Runtime call at most.
        max_wait_s: how long the first request of a batch waits for company.
        on_batch: ``on_batch(images, seconds)`` after each call (metrics).
    """

    def __init__(self, predict_prepared: Callable[[np.ndarray, Sequence[CropBox]], Predictions], *,
                 max_images: int = 32, max_wait_s: float = 0.002,
                 on_batch: Callable[[int, float], None] | None = None) -> None:
        if max_images < 1:
            raise ValueError(f"max_images must be >= 1, got {max_images}")
        self._predict = predict_prepared
        self.max_images = int(max_images)
        self.max_wait_s = float(max_wait_s)
        self._on_batch = on_batch
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._carry: _Job | None = None  # a job that did not fit in the previous batch
        self._thread = threading.Thread(target=self._work, name="edgereg-batcher", daemon=True)
        self._thread.start()

    def submit(self, frames: np.ndarray, boxes: list[CropBox]) -> Future:
        """Queue prepared frames; the Future resolves to their Predictions (or the model's error)."""
        if not self._thread.is_alive():
            raise RuntimeError("the micro-batcher is closed")
        job = _Job(frames, list(boxes))
        self._queue.put(job)
        return job.future

    def close(self, timeout_s: float = 5.0) -> None:
        """Finish the queued requests and stop the worker."""
        self._queue.put(None)
        self._thread.join(timeout_s)

    def _gather(self, first: _Job) -> tuple[list[_Job], bool]:
        """The batch starting with ``first``; True when the queue said to stop."""
        jobs, count = [first], len(first.frames)
        deadline = time.monotonic() + self.max_wait_s
        while count < self.max_images:
            try:
                remaining = deadline - time.monotonic()
                job = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                return jobs, True
            if count + len(job.frames) > self.max_images:
                self._carry = job
                break
            jobs.append(job)
            count += len(job.frames)
        return jobs, False

    def _work(self) -> None:
        stopping = False
        while not stopping or self._carry is not None:
            first, self._carry = self._carry, None
            if first is None:
                first = self._queue.get()
                if first is None:
                    return
            jobs, stopping = self._gather(first)
            self._run(jobs)

    def _run(self, jobs: list[_Job]) -> None:
        started = time.perf_counter()
        try:
            frames = jobs[0].frames if len(jobs) == 1 else np.concatenate([j.frames for j in jobs])  # (B, H, W, 3)
            boxes = [box for job in jobs for box in job.boxes]
            result = self._predict(frames, boxes)
        except BaseException as exc:
            for job in jobs:
                job.future.set_exception(exc)
            return
        if self._on_batch is not None:
            self._on_batch(len(frames), time.perf_counter() - started)
        start = 0
        for job in jobs:
            n = len(job.frames)
            job.future.set_result(result.take(start, start + n))
            start += n
