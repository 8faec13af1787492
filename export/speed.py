"""Images/s and peak memory of an ONNX model on this machine's CPU, measured in a fresh process.

Each model is measured in its own child process (``python -m edgereg.export.speed MODEL ...``) so
that neither torch, already loaded by the exporter, nor a previously measured model shares its
threads or its memory high-water mark. Inside the child: load the model with ONNX Runtime's CPU
provider, run each batch size once to warm up, then time ``repeats`` runs and keep the median.
Inputs are random normalized images: inference time does not depend on their content.

Peak memory is the child's peak resident set size (``VmHWM`` in /proc/self/status) after the largest
batch, next to the same process's resident size right after importing onnxruntime, before loading
the model: their difference is what the model and its activations cost. (``getrusage``'s
``ru_maxrss`` would not do: Linux carries it across exec, so a child of the exporter would report
the exporter's own peak, torch included.)
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from edgereg.errors import EdgeregError

DEFAULT_BATCHES = (1, 32)


@dataclass(frozen=True)
class SpeedResult:
    """Throughput and memory of one model.

    Attributes:
        images_per_s: {batch size: median images per second}.
        latency_ms: {batch size: median milliseconds per call}.
        peak_rss_mib: peak resident memory of the measuring process, MiB (0 where /proc is missing).
        baseline_rss_mib: its resident memory after importing onnxruntime, before the model, MiB.
        threads: ONNX Runtime intra-op threads (0 = its default, one per core).
        repeats: timed runs per batch size.
    """

    images_per_s: dict[int, float]
    latency_ms: dict[int, float]
    peak_rss_mib: float
    baseline_rss_mib: float
    threads: int
    repeats: int

    def to_dict(self) -> dict:
        return {"images_per_s": {str(b): v for b, v in self.images_per_s.items()},
                "latency_ms": {str(b): v for b, v in self.latency_ms.items()},
                "peak_rss_mib": self.peak_rss_mib, "baseline_rss_mib": self.baseline_rss_mib,
                "threads": self.threads, "repeats": self.repeats}


def measure_speed(model_path: str | Path, *, batch_sizes: Sequence[int] = DEFAULT_BATCHES, repeats: int = 10,
                  threads: int = 0, timeout_s: float = 300.0) -> SpeedResult:
    """Measure a model in a fresh process (see the module docstring).

    Args:
        model_path: an ONNX model whose input is ``(N, C, H, W) float32`` with a dynamic batch axis.
        batch_sizes: batch sizes to time.
        repeats: timed runs per batch size; the median is kept.
        threads: ONNX Runtime intra-op threads (0 = ONNX Runtime's default).
        timeout_s: give up after this long.

    Raises:
        EdgeregError: the child process failed (its last error line is quoted).
    """
    if repeats < 1 or not batch_sizes or min(batch_sizes) < 1:
        raise EdgeregError(f"need repeats >= 1 and batch sizes >= 1, got repeats={repeats} batches={list(batch_sizes)}")
    command = [sys.executable, "-m", "edgereg.export.speed", str(model_path),
               "--batches", ",".join(str(b) for b in batch_sizes), "--repeats", str(repeats), "--threads", str(threads)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise EdgeregError(f"speed measurement of '{model_path}' failed: {last}")
    data = json.loads(done.stdout.strip().splitlines()[-1])
    return SpeedResult(images_per_s={int(b): v for b, v in data["images_per_s"].items()},
                       latency_ms={int(b): v for b, v in data["latency_ms"].items()},
                       peak_rss_mib=data["peak_rss_mib"], baseline_rss_mib=data["baseline_rss_mib"],
                       threads=threads, repeats=repeats)


def _measure_here(model_path: str, batch_sizes: Sequence[int], repeats: int, threads: int) -> dict:
    """The child's side: time the model in this process and report peak memory."""
    import numpy as np
    import onnxruntime as ort

    baseline = _current_rss_mib()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    session = ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])
    model_input = session.get_inputs()[0]
    channels, height, width = model_input.shape[1:]
    rng = np.random.default_rng(0)
    images_per_s, latency_ms = {}, {}
    for batch in sorted(batch_sizes):
        feed = {model_input.name: rng.standard_normal((batch, channels, height, width), dtype=np.float32)}
        session.run(None, feed)  # warm-up: first-run allocations and kernel selection
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            session.run(None, feed)
            times.append(time.perf_counter() - start)
        median = float(np.median(times))
        images_per_s[batch] = batch / median
        latency_ms[batch] = median * 1e3
    return {"images_per_s": images_per_s, "latency_ms": latency_ms, "peak_rss_mib": _memory_mib("VmHWM"),
            "baseline_rss_mib": baseline}


def _current_rss_mib() -> float:
    return _memory_mib("VmRSS")


def _memory_mib(field: str) -> float:
    """A memory field of /proc/self/status ("VmRSS": resident now, "VmHWM": peak resident), MiB.

    Returns 0.0 where /proc is unavailable (not Linux).
    """
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return 0.0
    for line in lines:
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # kB -> MiB
    return 0.0


def _main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m edgereg.export.speed",
                                     description="Time an ONNX model (used by `edgereg export`); prints JSON.")
    parser.add_argument("model")
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)
    result = _measure_here(args.model, [int(b) for b in args.batches.split(",")], args.repeats, args.threads)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(_main())
