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

Comparisons (:func:`compare_speed`) load every model into one child process and time them in
alternating rounds; each round keeps a model's fastest of a few runs and the result is the median of
those over the rounds: load from other processes on a shared machine slows whichever model it hits,
and neither one unlucky nor one lucky round moves a median of fastest runs. With one ONNX Runtime
thread (what the int8 search uses) the model runs on the measuring thread and its CPU time
(``time.thread_time``) is timed instead of wall time: on a machine shared with other jobs it does not
count the time the core spent on them. The
int8 search decides on these ratios; :func:`profile_nodes` says where the time goes inside one model.
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
    data = _run_child(command, timeout_s, what=str(model_path))
    return SpeedResult(images_per_s={int(b): v for b, v in data["images_per_s"].items()},
                       latency_ms={int(b): v for b, v in data["latency_ms"].items()},
                       peak_rss_mib=data["peak_rss_mib"], baseline_rss_mib=data["baseline_rss_mib"],
                       threads=threads, repeats=repeats)


def compare_speed(models: dict[str, str | Path], *, batch_sizes: Sequence[int] = DEFAULT_BATCHES,
                  rounds: int = 4, repeats: int = 5, threads: int = 0,
                  timeout_s: float = 300.0) -> dict[str, dict[int, float]]:
    """Images/s of several models measured side by side in one fresh process (see the module docstring).

    Args:
        models: {name: ONNX model with input ``(N, C, H, W) float32`` and a dynamic batch axis}; all
            models must take the same input shape.
        batch_sizes: batch sizes to time.
        rounds: alternating rounds; each times every model ``repeats`` times in a row.
        threads: ONNX Runtime intra-op threads (0 = its default, one per core); with 1, CPU time of the
            measuring thread is timed instead of wall time.

    Returns:
        {name: {batch size: images/s}}, from the median over rounds of each round's fastest run.

    Raises:
        EdgeregError: the child process failed (its last error line is quoted).
    """
    if rounds < 1 or repeats < 1 or not batch_sizes or min(batch_sizes) < 1 or not models:
        raise EdgeregError(f"need models, rounds/repeats >= 1 and batch sizes >= 1, got {len(models)} models, "
                           f"rounds={rounds} repeats={repeats} batches={list(batch_sizes)}")
    names = list(models)
    command = [sys.executable, "-m", "edgereg.export.speed", *(str(models[n]) for n in names), "--compare",
               "--batches", ",".join(str(b) for b in batch_sizes), "--repeats", str(repeats),
               "--rounds", str(rounds), "--threads", str(threads)]
    data = _run_child(command, timeout_s, what=", ".join(map(str, models.values())))
    return {name: {int(b): v for b, v in rates.items()} for name, rates in zip(names, data["images_per_s"])}


def profile_nodes(model_path: str | Path, *, batch_size: int = 32, runs: int = 5,
                  threads: int = 0) -> dict[str, float]:
    """Microseconds per run spent in each node of the model as ONNX Runtime optimized it.

    Runs the model with ONNX Runtime's profiler (in this process) on random input, one warm-up run
    then ``runs`` timed ones. Node names are those of the optimized graph: fused nodes keep the name of
    the node they grew from, possibly with a ``_token_N`` suffix, and layout conversions ONNX Runtime
    inserted (Transpose, ReorderInput/Output) have names of their own.

    Returns:
        {node name: mean microseconds per run}, with ``"<name>|<op type>"`` keys.
    """
    import json as _json
    import os
    import tempfile

    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    options.enable_profiling = True
    with tempfile.TemporaryDirectory(prefix="edgereg-profile-") as tmp:
        options.profile_file_prefix = os.path.join(tmp, "profile")
        session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        model_input = session.get_inputs()[0]
        feed = {model_input.name: np.random.default_rng(0).standard_normal(
            (batch_size, *model_input.shape[1:]), dtype=np.float32)}
        for _ in range(runs + 1):
            session.run(None, feed)
        events = _json.loads(Path(session.end_profiling()).read_text())
    suffix = "_kernel_time"
    totals: dict[str, float] = {}
    for event in events:
        if event.get("cat") == "Node" and event.get("name", "").endswith(suffix):
            key = f"{event['name'][:-len(suffix)]}|{event.get('args', {}).get('op_name', '')}"
            totals[key] = totals.get(key, 0.0) + float(event.get("dur", 0))
    return {key: total / (runs + 1) for key, total in totals.items()}


def _run_child(command: list[str], timeout_s: float, *, what: str) -> dict:
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise EdgeregError(f"speed measurement of '{what}' failed: {last}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _compare_here(model_paths: Sequence[str], batch_sizes: Sequence[int], rounds: int, repeats: int,
                  threads: int) -> dict:
    """The child's side of :func:`compare_speed`."""
    import numpy as np
    import onnxruntime as ort

    sessions = []
    for path in model_paths:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        sessions.append(ort.InferenceSession(path, options, providers=["CPUExecutionProvider"]))
    model_input = sessions[0].get_inputs()[0]
    rng = np.random.default_rng(0)
    # One intra-op thread runs the model on this thread: its CPU time is the model's cost, untouched by
    # the time other processes hold the core; with a thread pool only wall time tells.
    clock = time.thread_time if threads == 1 else time.perf_counter
    round_best = [{b: [] for b in batch_sizes} for _ in sessions]  # per model, per batch: each round's fastest
    for batch in sorted(batch_sizes):
        feed = rng.standard_normal((batch, *model_input.shape[1:]), dtype=np.float32)
        for session in sessions:  # warm-up: first-run allocations and kernel selection
            session.run(None, {session.get_inputs()[0].name: feed})
        for _ in range(rounds):
            for i, session in enumerate(sessions):
                name = session.get_inputs()[0].name
                fastest = float("inf")
                for _ in range(repeats):
                    start = clock()
                    session.run(None, {name: feed})
                    fastest = min(fastest, clock() - start)
                round_best[i][batch].append(fastest)
    return {"images_per_s": [{str(b): b / float(np.median(times)) for b, times in rates.items()}
                             for rates in round_best]}


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
    parser.add_argument("models", nargs="+")
    parser.add_argument("--compare", action="store_true", help="time all models in alternating rounds")
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    if args.compare:
        result = _compare_here(args.models, batches, args.rounds, args.repeats, args.threads)
    else:
        result = _measure_here(args.models[0], batches, args.repeats, args.threads)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(_main())
