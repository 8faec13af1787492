"""``--engine ray`` against the local engine on one machine: throughput, start-up, equal outputs.

On a folder of generated small JPEGs (default 20,000 at 96x128) and a small CNN (the one
``bench_scoring.py`` generates: three strided 3x3 convolutions at 64x64; or ``--model``):

* start-up of a local Ray (``ray.init`` with the dashboard off), reported on its own, then one
  uncounted warm-up run (Ray starts its worker processes and they import edgereg, numba and
  ONNX Runtime: part of start-up for a long run);
* throughput after start-up of each engine: rows written after the first block / time from the
  first block to the last (so Ray's actor start and the first decodes, and the local engine's
  first batch, count as start-up); the ratio ray / local (goal >= 0.9), and the wall time of each
  whole run;
* the two outputs compared row by row: same paths in the same order, values within 1e-6;
* per-stage rates for sizing a cluster (docs/scoring-a-million-images.md): images/s of one decode
  task (read + decode + crop/resize + preprocessing, one thread) and of one ONNX Runtime actor
  (one thread), for these JPEGs and for 480x640 photos.

Both engines run in this process, one after the other, in alternating rounds (``--rounds``); the
median of the per-round ratios is reported, so that load from other processes hits both alike.
Run: ``python benchmarks/bench_ray.py`` (``--quick`` for a smoke run). Needs the cluster extra.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scoring import build_cnn, make_jpegs  # noqa: E402  (the generated CNN and JPEGs)

from edgereg import Predictor  # noqa: E402
from edgereg.cluster.engine import (  # noqa: E402
    PartSink, RayRunConfig, block_rows, input_blocks, score_on_ray, select_inputs,
)
from edgereg.cluster.parts import PartStore  # noqa: E402
from edgereg.cluster.plan import ClusterResources, plan_resources  # noqa: E402
from edgereg.cluster.session import ray_session  # noqa: E402
from edgereg.cluster.stages import OnnxScorer, decode_batch  # noqa: E402
from edgereg.scoring import default_inference_threads, score_source  # noqa: E402
from edgereg.sources import FolderSource  # noqa: E402
from edgereg.writers import open_errors, open_rows, prediction_columns  # noqa: E402


class Timeline:
    """Progress callback that records (time, rows done) after each block or batch."""

    def __init__(self) -> None:
        self.points: list[tuple[float, int]] = []


    def __call__(self, stats) -> None:
        self.points.append((time.perf_counter(), stats.done))

    def steady_rate(self) -> float:
        """Rows after the first block / seconds from the first block to the last."""
        (t0, n0), (t1, n1) = self.points[0], self.points[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else float("nan")


def run_local(folder: Path, model: Path, out: Path, batch: int) -> tuple[float, float, float]:
    """(steady images/s, wall seconds, seconds to the first rows) of the local engine as ``edgereg infer`` runs it."""
    started = time.perf_counter()
    predictor = Predictor(model, batch_size=batch, threads=default_inference_threads(), providers="cpu",
                          preprocess_parallel=False)
    columns = prediction_columns(predictor.names, with_spread=False)
    timeline = Timeline()
    with open_rows(out, columns, overwrite=True) as rows, open_errors(out) as errors:
        score_source(FolderSource(folder), predictor, rows, errors, on_progress=timeline)
    return timeline.steady_rate(), time.perf_counter() - started, timeline.points[0][0] - started


def run_ray(ray, folder: Path, model: Path, out: Path, batch: int) -> tuple[float, float, float, str]:
    """(steady images/s, wall seconds, seconds to the first rows, plan) of ``--engine ray`` (parts,
    merge) on the running Ray."""
    started = time.perf_counter()
    predictor = Predictor(model, batch_size=batch, providers="cpu")
    columns = prediction_columns(predictor.names, with_spread=False)
    source = FolderSource(folder)
    store = PartStore.open(out, {"bench": 1}, columns=columns, overwrite=True)
    plan = plan_resources(ClusterResources.from_ray(ray.cluster_resources()))
    timeline = Timeline()
    sink = PartSink(store, commit_rows=RayRunConfig.commit_rows, commit_seconds=RayRunConfig.commit_seconds)
    stats, _ = score_on_ray(ray, select_inputs(source), predictor, model.read_bytes(), sink, plan=plan,
                            config=RayRunConfig(batch_size=batch), on_progress=timeline)
    assert stats.failed == 0, "generated images must all decode"
    store.merge(out, columns=columns, position_of={k: i for i, k in enumerate(source.planned_keys())})
    store.remove()
    return timeline.steady_rate(), time.perf_counter() - started, timeline.points[0][0] - started, plan.describe()


def compare(local: Path, ray_out: Path) -> float:
    """Largest |difference| of the values; asserts the same paths in the same order."""
    with open(local, newline="") as a, open(ray_out, newline="") as b:
        rows_a, rows_b = list(csv.DictReader(a)), list(csv.DictReader(b))
    assert [r["path"] for r in rows_a] == [r["path"] for r in rows_b], "rows differ in paths or order"
    columns = [c for c in rows_a[0] if c not in ("path", "flags")]
    values_a = np.array([[float(r[c]) for c in columns] for r in rows_a])
    values_b = np.array([[float(r[c]) for c in columns] for r in rows_b])
    return float(np.abs(values_a - values_b).max())


def stage_rates(paths: list[Path], model: Path, batch: int) -> tuple[float, float]:
    """(decode task images/s, actor images/s), each on one thread, from the engine's own stage code."""
    predictor = Predictor(model, batch_size=batch, providers="cpu")
    entries = select_inputs(FolderSource(paths[0].parent))[: len(paths)]
    rows = block_rows(predictor.config.input_size, predictor.config.n_channels, predictor.tta.n)
    blocks = [{name: column.to_numpy(zero_copy_only=False) for name, column in zip(t.column_names, t.columns)}
              for t in input_blocks(entries, rows)]
    decode_batch(blocks[0], config=predictor.config, tta=predictor.tta)  # warm-up: numba cache
    start = time.perf_counter()
    decoded = [decode_batch(block, config=predictor.config, tta=predictor.tta) for block in blocks]
    decode_rate = len(entries) / (time.perf_counter() - start)
    scorer = OnnxScorer(model.read_bytes(), card=predictor.card.to_json(), providers="cpu", tta="none",
                        batch_size=batch, threads=1)
    batches = [{k: v[i:i + batch] for k, v in block.items()} for block in decoded for i in range(0, len(block["index"]), batch)]
    scorer(batches[0])  # warm-up: ORT arenas
    start = time.perf_counter()
    for item in batches:
        scorer(item)
    return decode_rate, len(entries) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20_000, help="number of JPEGs (default 20000)")
    parser.add_argument("--frame", default="96x128", help="JPEG size HxW (default 96x128)")
    parser.add_argument("--model", default=None, help="an edgereg .onnx (default: a generated small CNN)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2, help="alternating local / ray rounds")
    parser.add_argument("--quick", action="store_true", help="2,000 images, one round: a smoke run")
    args = parser.parse_args()
    n, (height, width) = args.n, (int(v) for v in args.frame.lower().split("x"))
    if args.quick:
        n, args.rounds = 2000, 1

    with tempfile.TemporaryDirectory(prefix="edgereg-bench-ray-") as tmp:
        tmp = Path(tmp)
        folder, photos = tmp / "imgs", tmp / "photos"
        folder.mkdir()
        photos.mkdir()
        model = Path(args.model) if args.model else build_cnn(tmp / "cnn.onnx")
        paths = make_jpegs(folder, n, height, width)
        photo_paths = make_jpegs(photos, 200, 480, 640)
        print(f"{n:,} JPEGs {height}x{width}, model {model.name}, batch {args.batch}, {os.cpu_count()} cores "
              "(a shared machine: ratios are from alternating rounds of one run)", flush=True)

        start = time.perf_counter()
        with ray_session() as ray:
            startup = time.perf_counter() - start
            print(f"Ray start-up (ray.init, dashboard off): {startup:.1f} s")
            warm = time.perf_counter()
            warm_rate, _, warm_first, _ = run_ray(ray, folder, model, tmp / "ray.csv", args.batch)
            print(f"warm-up run (Ray starts and imports its worker processes; not counted): {time.perf_counter() - warm:.1f} s, "
                  f"first rows after {warm_first:.1f} s, then {warm_rate:.1f} images/s")
            ratios = []
            for round_ in range(args.rounds):
                local_rate, local_wall, local_first = run_local(folder, model, tmp / "local.csv", args.batch)
                ray_rate, ray_wall, ray_first, plan = run_ray(ray, folder, model, tmp / "ray.csv", args.batch)
                ratios.append(ray_rate / local_rate)
                print(f"round {round_ + 1}: local {local_rate:7.1f} images/s (run {local_wall:5.1f} s, first rows "
                      f"after {local_first:.2f} s) | ray {ray_rate:7.1f} images/s (run {ray_wall:5.1f} s, first rows "
                      f"after {ray_first:.2f} s; {plan}) | ray / local {ray_rate / local_rate:.2f}", flush=True)
            difference = compare(tmp / "local.csv", tmp / "ray.csv")
        print(f"throughput after start-up, ray / local: {float(np.median(ratios)):.2f} (median of "
              f"{', '.join(f'{r:.2f}' for r in ratios)}; goal >= 0.9)")
        print(f"outputs: {n:,} rows, same paths in the same order, max |ray - local| = {difference:.2e} (goal <= 1e-6)")

        for label, sample in ((f"{height}x{width} JPEGs", paths[:2000]), ("480x640 JPEGs", photo_paths)):
            decode_rate, actor_rate = stage_rates(sample, model, args.batch)
            print(f"per-stage rates, {label}: one decode task {decode_rate:7.1f} images/s per CPU; "
                  f"one actor (1 ORT thread) {actor_rate:7.1f} images/s")


if __name__ == "__main__":
    main()
