"""``--engine ray`` against the local engine on one machine: throughput, start-up, equal outputs.

On a folder of generated small JPEGs (default 20,000 at 96x128) and a small CNN (the one
``bench_scoring.py`` generates: three strided 3x3 convolutions at 64x64; or ``--model``):

* start-up of a local Ray (``ray.init`` with the dashboard off), reported on its own, then one
  uncounted warm-up run (Ray starts its worker processes, which import edgereg, numba and ONNX
  Runtime);
* throughput after start-up of each engine, as the slope of run time against the number of
  images: every round scores the first half of the images and then all N, and
  ``(N - N/2) / (T(N) - T(N/2))`` is the rate at which a longer run goes, whatever its fixed
  start-up (Ray's actor start, the local engine's first batch) and end (the merge); the intercept
  is that fixed cost. Runs are timed as ``edgereg infer`` runs them, rows written to a
  CSV (and for Ray, committed parts and the merge). The ratio ray / local of the slopes, from the
  median times over the rounds (goal >= 0.9), and per round;
* the two full outputs compared row by row: same paths in the same order, values within 1e-6;
* per-stage rates for sizing a cluster (docs/scoring-a-million-images.md): images/s of one decode
  task (read + decode + crop/resize + preprocessing, one thread) and of one ONNX Runtime actor
  (one thread), for these JPEGs and for 480x640 photos.

The engines alternate within each round and the median of the per-round ratios is reported, so
that load from other processes hits both alike. Run: ``python benchmarks/bench_ray.py``
(``--quick`` for a smoke run). Needs the cluster extra.
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
from bench_scoring import build_cnn, make_jpegs

from edgereg import Predictor
from edgereg.batch.scoring import default_inference_threads, score_source
from edgereg.batch.sources import FolderSource
from edgereg.batch.writers import open_errors, open_rows
from edgereg.cluster.engine import (
    PartSink,
    RayRunConfig,
    block_rows,
    input_blocks,
    score_on_ray,
    select_inputs,
)
from edgereg.cluster.parts import PartStore
from edgereg.cluster.plan import ClusterResources, plan_resources
from edgereg.cluster.session import ray_session
from edgereg.cluster.stages import OnnxScorer, decode_batch
from edgereg.core.rows import prediction_columns


def run_local(folder: Path, model: Path, out: Path, batch: int) -> float:
    """Seconds of a local-engine run as ``edgereg infer`` does it (model load included)."""
    started = time.perf_counter()
    predictor = Predictor(model, batch_size=batch, threads=default_inference_threads(), providers="cpu",
                          preprocess_parallel=False)
    columns = prediction_columns(predictor.names, with_spread=False)
    with open_rows(out, columns, overwrite=True) as rows, open_errors(out) as errors:
        stats = score_source(FolderSource(folder), predictor, rows, errors)
    assert stats.failed == 0, "generated images must all decode"
    return time.perf_counter() - started


def run_ray(ray, folder: Path, model: Path, out: Path, batch: int) -> tuple[float, str]:
    """(seconds, plan) of an ``--engine ray`` run on the running Ray: parts, then the merge."""
    started = time.perf_counter()
    predictor = Predictor(model, batch_size=batch, providers="cpu")
    columns = prediction_columns(predictor.names, with_spread=False)
    source = FolderSource(folder)
    store = PartStore.open(out, {"bench": 1}, columns=columns, overwrite=True)
    plan = plan_resources(ClusterResources.from_ray(ray.cluster_resources()))
    sink = PartSink(store, commit_rows=RayRunConfig.commit_rows, commit_seconds=RayRunConfig.commit_seconds)
    stats, _ = score_on_ray(ray, select_inputs(source), predictor, model.read_bytes(), sink, plan=plan,
                            config=RayRunConfig(batch_size=batch))
    assert stats.failed == 0, "generated images must all decode"
    store.merge(out, columns=columns, position_of={k: i for i, k in enumerate(source.planned_keys())})
    store.remove()
    return time.perf_counter() - started, plan.describe()


def slope(small: int, full: int, t_small: float, t_full: float) -> tuple[float, float]:
    """(images/s after start-up, start-up seconds) from runs of ``small`` and ``full`` images."""
    rate = (full - small) / (t_full - t_small) if t_full > t_small else float("inf")
    return rate, t_full - full / rate


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
    batches = [{k: v[i:i + batch] for k, v in block.items()}
               for block in decoded for i in range(0, len(block["index"]), batch)]
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
    parser.add_argument("--rounds", type=int, default=5, help="alternating local / ray rounds (default 5)")
    parser.add_argument("--quick", action="store_true", help="2,000 images, one round: a smoke run")
    args = parser.parse_args()
    n, (height, width) = args.n, (int(v) for v in args.frame.lower().split("x"))
    if args.quick:
        n, args.rounds = 2000, 1

    with tempfile.TemporaryDirectory(prefix="edgereg-bench-ray-") as tmp:
        tmp = Path(tmp)
        folder, small_folder, photos = tmp / "imgs", tmp / "small", tmp / "photos"
        for made in (folder, small_folder, photos):
            made.mkdir()
        model = Path(args.model) if args.model else build_cnn(tmp / "cnn.onnx")
        paths = make_jpegs(folder, n, height, width)
        small = n // 2
        for path in paths[:small]:  # the same files (hard links), the start of the listing
            os.link(path, small_folder / path.name)
        photo_paths = make_jpegs(photos, 200, 480, 640)
        print(f"{n:,} JPEGs {height}x{width}, model {model.name}, batch {args.batch}, {os.cpu_count()} cores "
              "(a shared machine: ratios are from alternating rounds of one run)", flush=True)

        start = time.perf_counter()
        with ray_session() as ray:
            print(f"Ray start-up (ray.init, dashboard off): {time.perf_counter() - start:.1f} s")
            warm, _ = run_ray(ray, small_folder, model, tmp / "ray.csv", args.batch)
            print(f"warm-up run (Ray starts its worker processes and they import; not counted): {warm:.1f} s")
            times = {"local": [], "ray": []}  # per round: (T(small), T(N))
            for round_ in range(args.rounds):  # local and ray alternate run by run
                t_local_small = run_local(small_folder, model, tmp / "local.csv", args.batch)
                t_ray_small = run_ray(ray, small_folder, model, tmp / "ray.csv", args.batch)[0]
                t_local = run_local(folder, model, tmp / "local.csv", args.batch)
                t_ray = run_ray(ray, folder, model, tmp / "ray.csv", args.batch)[0]
                times["local"].append([t_local_small, t_local])
                times["ray"].append([t_ray_small, t_ray])
                fits = {engine: slope(small, n, *rounds[-1]) for engine, rounds in times.items()}
                print(f"round {round_ + 1}: " + " | ".join(
                    f"{engine} {times[engine][-1][0]:5.1f} s / {times[engine][-1][1]:5.1f} s -> {rate:7.1f} images/s "
                    f"+ {fixed:4.1f} s" for engine, (rate, fixed) in fits.items())
                    + f" | ray / local {fits['ray'][0] / fits['local'][0]:.2f}", flush=True)
            plan = plan_resources(ClusterResources.from_ray(ray.cluster_resources())).describe()
            difference = compare(tmp / "local.csv", tmp / "ray.csv")
        medians = {engine: slope(small, n, *np.median(np.array(rounds), axis=0)) for engine, rounds in times.items()}
        per_round = [slope(small, n, *ray_round)[0] / slope(small, n, *local_round)[0]
                     for ray_round, local_round in zip(times["ray"], times["local"])]
        print(f"runs of {small:,} and {n:,} images, {args.rounds} rounds; Ray plan: {plan}")
        print(f"throughput after start-up (slope of the median times): local {medians['local'][0]:.1f} images/s, "
              f"ray {medians['ray'][0]:.1f} images/s; ray / local {medians['ray'][0] / medians['local'][0]:.2f} "
              f"(goal >= 0.9; per round {', '.join(f'{r:.2f}' for r in per_round)})")
        print(f"fixed cost per run (intercept): local {medians['local'][1]:.1f} s, ray {medians['ray'][1]:.1f} s "
              "(plus Ray's own start-up above)")
        print(f"outputs: {n:,} rows, same paths in the same order, max |ray - local| = {difference:.2e} (goal <= 1e-6)")

        for label, sample in ((f"{height}x{width} JPEGs", paths[:2000]), ("480x640 JPEGs", photo_paths)):
            decode_rate, actor_rate = stage_rates(sample, model, args.batch)
            print(f"per-stage rates, {label}: one decode task {decode_rate:7.1f} images/s per CPU; "
                  f"one actor (1 ORT thread) {actor_rate:7.1f} images/s")


if __name__ == "__main__":
    main()
