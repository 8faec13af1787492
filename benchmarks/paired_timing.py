"""What the interval and novelty benchmarks share: paired timing rounds and the per-task driver.

Imported by ``benchmarks/intervals.py`` and ``benchmarks/unfamiliar.py`` (run as scripts, with
this folder on ``sys.path``).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np


def paired_rounds(calls_by_variant: Mapping[str, Callable[[], object]], *, rounds: int, calls: int,
                  switch: Callable[[str], None] | None = None) -> tuple[float, float]:
    """Seconds per call ``without`` the feature, and the median of the paired per-round differences.

    The variants alternate round by round (``switch(name)`` first, when given, outside the timed
    loop), so a shared machine that drifts between rounds shifts both sides of each difference.

    Args:
        calls_by_variant: ``{"with": call, "without": call}``; each round times ``calls`` calls of each.
    Returns:
        (median seconds per call without, median of (with - without) seconds per call).
    """
    times: dict[str, list[float]] = {name: [] for name in calls_by_variant}
    for _ in range(rounds):
        for name, call in calls_by_variant.items():
            if switch is not None:
                switch(name)
            started = time.perf_counter()
            for _ in range(calls):
                call()
            times[name].append((time.perf_counter() - started) / calls)
    without = float(np.median(times["without"]))
    added = float(np.median(np.subtract(times["with"], times["without"])))
    return without, added


def parser(description: str, *, work: str, tasks: str, n_train: int,
           work_help: str | None = None) -> argparse.ArgumentParser:
    """The options every such benchmark takes: --work, --tasks, --n-train, --no-latency."""
    made = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    made.add_argument("--work", default=work, help=work_help)
    made.add_argument("--tasks", default=tasks)
    made.add_argument("--n-train", type=int, default=n_train)
    made.add_argument("--no-latency", action="store_true")
    return made


def run_tasks(args: argparse.Namespace, run_task: Callable[[Path, str], tuple[Path, np.ndarray]],
              latency: Callable[[Path, np.ndarray], None]) -> None:
    """``run_task(work, task) -> (model, frame)`` for each of ``--tasks``, then the latency of the first."""
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    first = None
    for task in args.tasks.split(","):
        model_and_frame = run_task(work, task)
        first = first or model_and_frame
    if not args.no_latency and first:
        latency(*first)
