"""Accuracy benchmark: one row per synthetic task, fp32 and int8 side by side, on test images never
used for training or model selection. Each task trains within its time budget on this machine's
cores through the public CLI (`edgereg synth / train / export / eval`).

Goals (issue "Training"):
* assay: RMSE <= 1.0 mg/L (range 80..350) and within 1.2x of an oracle that knows the generator's
  colour curve (mean colour inside the well, curve inverted);
* gravel: per-bin MAE <= 4 percentage points on distribution groups never seen in training, at most
  1 point worse than on seen groups, and predictions no closer to the training groups than the truth;
* box (x, y): RMSE <= 0.5 px on 64x64, on a uniform split and on a quadrant hold-out (training never
  sees the box in quadrant q3, the test only there);
* pixel statistics: test MSE at or below the seed paper's Base (mean 1.12e-5, median 9.43e-4,
  std 1.57e-5, values in [0, 1]); plus the paper's depth sweep (Base + N layers).

Run: ``python benchmarks/accuracy.py --out bench_acc`` (about an hour on 2 cores; ``--tasks`` and
``--minutes`` shorten it). Writes ``OUT/accuracy.json`` and prints the table.

``--real`` runs the real-photograph table instead (photographs shipped inside scikit-image's wheel,
``pip install 'edgereg[bench]'``; see ``benchmarks/real_photos.py``): pixel statistics of natural
patches, texture scale between the training levels, a colour assay on unseen backgrounds and
lighting, and an object's (x, y) in a quadrant training never saw, each trained with the defaults
(``edgereg train DIR --time-budget M`` only), exported ``--int8``, scored on the test folder, and
set beside the classical reader of the field and an estimate of the data's noise floor.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from edgereg.training.synth import ASSAY_RANGE, assay_oracle, make_dataset

PAPER_BASE_MSE = {"mean": 1.12e-5, "median": 9.43e-4, "std": 1.57e-5}
DEPTHS = (0, 1, 2, 3, 4, 5, 10)


def edgereg(*args: str, allowed=(0,)) -> int:
    """Run the CLI in a subprocess (a fresh process per step, as a user would)."""
    command = [sys.executable, "-m", "edgereg", *map(str, args)]
    print("$ edgereg " + " ".join(map(str, args)), flush=True)
    result = subprocess.run(command, capture_output=True, text=True)
    tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-6:])
    print("  " + tail.replace("\n", "\n  "), flush=True)
    if result.returncode not in allowed:
        raise RuntimeError(f"edgereg {' '.join(map(str, args))} exited {result.returncode}")
    return result.returncode


def read_rows(labels: Path) -> tuple[list[str], list[dict]]:
    with open(labels, newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames), list(reader)


def write_subset(pool: Path, out: Path, keep) -> Path:
    """A dataset folder whose labels.csv lists the rows of ``pool`` with ``keep(row)``, pointing at
    the pool's images (no copies)."""
    fields, rows = read_rows(pool / "labels.csv")
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "labels.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            if keep(row):
                writer.writerow(dict(row, path=str(Path("..") / pool.name / row["path"])))
    return out


def evaluate(model: Path, dataset: Path, out: Path) -> dict:
    edgereg("eval", model, dataset, "--out", out)
    return json.loads((out / "metrics.json").read_text())["metrics"]


def train_export_eval(name: str, data: Path, tests: dict[str, Path], work: Path, minutes: float,
                      train_args: list[str]) -> dict:
    """Train on ``data``, export fp32 + int8 (gated), evaluate both on each test set."""
    run = work / f"run_{name}"
    shutil.rmtree(run, ignore_errors=True)  # a fresh run each time the benchmark runs
    started = time.perf_counter()
    edgereg("train", data, "--out", run, "--time-budget", minutes, "--quiet", *train_args)
    train_seconds = time.perf_counter() - started
    edgereg("export", run, "--int8", "--no-speed", allowed=(0, 1))
    result = {"train_seconds": round(train_seconds, 1), "int8_gate": (run / "model.int8.onnx").exists()}
    for test_name, test_dir in tests.items():
        result[test_name] = {"fp32": evaluate(run / "model.onnx", test_dir, work / f"eval_{name}_{test_name}_fp32")}
        if result["int8_gate"]:
            result[test_name]["int8"] = evaluate(run / "model.int8.onnx", test_dir,
                                                 work / f"eval_{name}_{test_name}_int8")
    return result


def task_assay(work: Path, minutes: float, n: int) -> dict:
    train = work / "assay"
    test = work / "assay_test"
    make_dataset("assay", train, n=n, seed=0, overwrite=True)
    make_dataset("assay", test, n=max(400, n // 5), seed=777, overwrite=True)  # new samples
    result = train_export_eval("assay", train, {"test": test}, work, minutes, ["--split", "group"])
    import cv2

    fields, rows = read_rows(test / "labels.csv")
    images = np.stack([cv2.imread(str(test / r["path"])) for r in rows])
    truth = np.array([float(r["concentration"]) for r in rows])
    oracle = float(np.sqrt(np.mean((assay_oracle(images) - truth) ** 2)))
    result["oracle_rmse"] = oracle
    fp32 = result["test"]["fp32"]["rmse"]
    result["row"] = {
        "metric": "RMSE mg/L", "fp32": fp32, "int8": result["test"].get("int8", {}).get("rmse"),
        "reference": f"oracle {oracle:.2f}", "goal": "<= 1.0 and <= 1.2x oracle",
        "met": fp32 <= 1.0 and fp32 <= 1.2 * oracle, "range": ASSAY_RANGE,
    }
    return result


def _bins(metrics: dict) -> float:
    """Mean per-bin MAE in percentage points from an eval metrics dict."""
    return 100.0 * float(np.mean([t["mae"] for t in metrics["targets"].values()]))


def _nearest_group_distance(predictions_csv: Path, names: list[str], train_groups: np.ndarray) -> tuple[float, float]:
    """Mean L1 distance to the nearest training-group distribution: of the predictions, of the truth."""
    fields, rows = read_rows(predictions_csv)
    pred = np.array([[float(r[f"{n}_pred"]) for n in names] for r in rows])
    true = np.array([[float(r[f"{n}_true"]) for n in names] for r in rows])
    d = lambda x: np.abs(x[:, None, :] - train_groups[None]).sum(-1).min(1).mean()  # noqa: E731
    return float(d(pred)), float(d(true))


def task_gravel(work: Path, minutes: float, n: int) -> dict:
    pool = work / "gravel_pool"
    make_dataset("gravel", pool, n=n, seed=0, overwrite=True)
    fields, rows = read_rows(pool / "labels.csv")
    groups = sorted({r["group"] for r in rows})
    unseen = set(groups[-len(groups) // 4:])  # a quarter of the distributions, never in training
    counter: dict[str, int] = {}

    def seen_holdout(row) -> bool:  # every 5th photo of a training distribution is kept back
        counter[row["group"]] = counter.get(row["group"], 0) + 1
        return row["group"] not in unseen and counter[row["group"]] % 5 == 0

    held = {r["path"] for r in rows if seen_holdout(r)}
    train = write_subset(pool, work / "gravel_train", lambda r: r["group"] not in unseen and r["path"] not in held)
    seen = write_subset(pool, work / "gravel_seen", lambda r: r["path"] in held)
    unseen_dir = write_subset(pool, work / "gravel_unseen", lambda r: r["group"] in unseen)
    result = train_export_eval("gravel", train, {"seen": seen, "unseen": unseen_dir}, work, minutes,
                               ["--split", "group", "--test-frac", "0", "--size", "128"])
    names = [f"bin{i}" for i in range(5)]
    train_groups = np.array(sorted({tuple(float(r[n]) for n in names) for r in rows if r["group"] not in unseen}))
    d_pred, d_true = _nearest_group_distance(work / "eval_gravel_unseen_fp32" / "predictions.csv", names, train_groups)
    unseen_pp, seen_pp = _bins(result["unseen"]["fp32"]), _bins(result["seen"]["fp32"])
    result["nearest_training_group_l1"] = {"predictions": d_pred, "truth": d_true}
    result["row"] = {
        "metric": "per-bin MAE pp (unseen groups)", "fp32": unseen_pp,
        "int8": _bins(result["unseen"]["int8"]) if "int8" in result["unseen"] else None,
        "reference": f"seen {seen_pp:.2f}; L1 to nearest train group: pred {d_pred:.3f} vs truth {d_true:.3f}",
        "goal": "<= 4, <= seen + 1, pred not closer",
        "met": unseen_pp <= 4 and unseen_pp <= seen_pp + 1 and d_pred >= 0.9 * d_true,
    }
    return result


def task_box(work: Path, minutes: float, n: int, quadrant: bool) -> dict:
    pool = work / "box_pool"
    if not (pool / "labels.csv").exists():
        make_dataset("box", pool, n=n, seed=0, overwrite=True)
    fields, rows = read_rows(pool / "labels.csv")
    name = "box_quadrant" if quadrant else "box_uniform"
    if quadrant:  # training never sees q3; the test only there
        train = write_subset(pool, work / f"{name}_train", lambda r: r["group"] != "q3")
        test = write_subset(pool, work / f"{name}_test", lambda r: r["group"] == "q3")
    else:
        train = write_subset(pool, work / f"{name}_train", lambda r: int(Path(r["path"]).stem) % 5 != 0)
        test = write_subset(pool, work / f"{name}_test", lambda r: int(Path(r["path"]).stem) % 5 == 0)
    result = train_export_eval(name, train, {"test": test}, work, minutes, ["--split", "random"])
    fp32 = result["test"]["fp32"]["rmse"]
    result["row"] = {"metric": "RMSE px", "fp32": fp32, "int8": result["test"].get("int8", {}).get("rmse"),
                     "reference": "q3 never in training" if quadrant else "uniform split",
                     "goal": "<= 0.5", "met": fp32 <= 0.5}
    return result


def task_pixelstats(work: Path, minutes: float, n: int) -> dict:
    data, test = work / "pixelstats", work / "pixelstats_test"
    make_dataset("pixelstats", data, n=n, seed=0, overwrite=True)
    make_dataset("pixelstats", test, n=max(1000, n // 5), seed=777, overwrite=True)
    result = {}
    for target in ("mean", "median", "std"):
        r = train_export_eval(f"pixelstats_{target}", data, {"test": test}, work, minutes / 3,
                              ["--targets", target])
        r["mse"] = r["test"]["fp32"]["rmse"] ** 2
        r["mse_int8"] = r["test"]["int8"]["rmse"] ** 2 if "int8" in r["test"] else None
        result[target] = r
    result["row"] = {
        "metric": "MSE mean/median/std",
        "fp32": "/".join(f"{result[t]['mse']:.2e}" for t in PAPER_BASE_MSE),
        "int8": "/".join(f"{result[t]['mse_int8']:.2e}" if result[t]["mse_int8"] else "gate" for t in PAPER_BASE_MSE),
        "reference": "paper Base " + "/".join(f"{v:.2e}" for v in PAPER_BASE_MSE.values()),
        "goal": "<= paper Base", "met": all(result[t]["mse"] <= PAPER_BASE_MSE[t] for t in PAPER_BASE_MSE),
    }
    return result


def task_depth(work: Path, minutes: float, n: int) -> dict:
    """The seed paper's depth sweep (Base + N extra conv layers) on the mean task."""
    data, test = work / "pixelstats", work / "pixelstats_test"
    if not (data / "labels.csv").exists():
        make_dataset("pixelstats", data, n=n, seed=0, overwrite=True)
        make_dataset("pixelstats", test, n=max(1000, n // 5), seed=777, overwrite=True)
    sweep = {}
    for depth in DEPTHS:
        r = train_export_eval(f"depth{depth}", data, {"test": test}, work, minutes / len(DEPTHS),
                              ["--targets", "mean", "--model", "base_seed004", "--model-opt", f"depth={depth}"])
        sweep[depth] = r["test"]["fp32"]["rmse"] ** 2
    return {"sweep_mse": sweep, "row": {
        "metric": "MSE mean by depth", "fp32": " ".join(f"{d}:{m:.1e}" for d, m in sweep.items()), "int8": "-",
        "reference": "paper: deeper is not better", "goal": "table", "met": None}}


# --------------------------------------------------------------------------------------------------
# The real-photograph table


def default_train(name: str, data: Path, test: Path, work: Path, minutes: float, extra: tuple[str, ...] = ()) -> dict:
    """``edgereg train DATA --time-budget M`` (+ ``extra``), ``export --int8``, ``eval`` on ``test``."""
    run = work / f"run_{name}"
    shutil.rmtree(run, ignore_errors=True)
    started = time.perf_counter()
    edgereg("train", data, "--out", run, "--time-budget", minutes, "--quiet", *extra)
    seconds = time.perf_counter() - started
    edgereg("export", run, "--int8", "--no-speed", allowed=(0, 1))
    metrics = json.loads((run / "metrics.json").read_text())
    result = {"train_seconds": round(seconds, 1), "budget_used": round(seconds / (60 * minutes), 3),
              "stopped": metrics.get("budget", {}).get("stopped"), "model": metrics.get("model", {}).get("name"),
              "int8_gate": (run / "model.int8.onnx").exists()}
    result["fp32"] = evaluate(run / "model.onnx", test, work / f"eval_{name}_fp32")
    if result["int8_gate"]:
        result["int8"] = evaluate(run / "model.int8.onnx", test, work / f"eval_{name}_int8")
    return result


def _rmse(a, b) -> float:
    return float(np.sqrt(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)))


def real_pixelstats(work: Path, minutes: float) -> dict:
    import real_photos as rp

    data, test = work / "real_pixelstats", work / "real_pixelstats_test"
    if not (test / "labels.csv").exists():
        rp.write_dataset(data, rp.pixelstats_rows(6000, test=False, seed=0), ("mean", "median", "std"))
        rp.write_dataset(test, rp.pixelstats_rows(1500, test=True, seed=1), ("mean", "median", "std"))
    ours = default_train("real_pixelstats", data, test, work, minutes)
    base = default_train("real_pixelstats_base", data, test, work, minutes,
                         ("--model", "base_seed004", "--lr", "auto", "--augment", "none"))
    mse = {k: {t: ours[k]["targets"][t]["rmse"] ** 2 for t in ("mean", "median", "std")}
           for k in ("fp32", "int8") if k in ours}
    base_mse = {t: base["fp32"]["targets"][t]["rmse"] ** 2 for t in ("mean", "median", "std")}
    ratio = {t: base_mse[t] / mse["fp32"][t] for t in base_mse}
    return {"ours": ours, "base": base, "mse": mse, "base_mse": base_mse, "row": {
        "metric": "MSE mean/median/std",
        "fp32": "/".join(f"{mse['fp32'][t]:.1e}" for t in base_mse),
        "int8": "/".join(f"{mse['int8'][t]:.1e}" for t in base_mse) if "int8" in mse else "gate",
        "baseline": "Base " + "/".join(f"{v:.1e}" for v in base_mse.values()),
        "floor": "0 (exact targets)",
        "ratio": "/".join(f"{r:.1f}x" for r in ratio.values()),
        "met": all(r >= 2 for r in ratio.values()), "budget_used": ours["budget_used"]}}


def real_texture(work: Path, minutes: float) -> dict:
    import real_photos as rp

    data, test = work / "real_texture", work / "real_texture_test"
    if not (test / "labels.csv").exists():
        rp.write_dataset(data, rp.texture_rows(rp.TEXTURE_LEVELS, 300, test=False, seed=0), ("scale",))
        rp.write_dataset(test, rp.texture_rows(rp.TEXTURE_TEST_LEVELS, 100, test=True, seed=1), ("scale",))
    ours = default_train("real_texture", data, test, work, minutes)
    train_images, train_y, _ = rp.read_dataset(data)
    test_images, test_y, _ = rp.read_dataset(test)
    train_bands, test_bands = rp.band_powers(train_images), rp.band_powers(test_images)
    baseline = _rmse(rp.ridge_fit_predict(train_bands, train_y, test_bands), test_y)
    mean = _rmse(np.full_like(test_y, train_y.mean()), test_y)
    # the FFT reader fitted on the test columns' own levels (5-fold): no unseen parts, no
    # interpolation; what remains is the reader's error plus the label's ambiguity (perspective),
    # an upper bound of the floor
    folds = np.random.default_rng(0).permutation(len(test_y)) % 5
    in_place = np.zeros_like(test_y)
    for k in range(5):
        in_place[folds == k] = rp.ridge_fit_predict(test_bands[folds != k], test_y[folds != k], test_bands[folds == k])
    floor = _rmse(in_place, test_y)
    fp32 = ours["fp32"]["rmse"]
    return {"ours": ours, "fft_rmse": baseline, "mean_rmse": mean, "fft_in_place_rmse": floor, "row": {
        "metric": "RMSE (scale 1..3)", "fp32": fp32, "int8": ours.get("int8", {}).get("rmse"),
        "baseline": f"FFT band powers {baseline:.3f} (mean {mean:.3f})",
        "floor": f"<= {floor:.3f} (FFT reader fitted in place)",
        "ratio": f"{baseline / fp32:.1f}x", "met": baseline / fp32 >= 2, "budget_used": ours["budget_used"]}}


def real_assay(work: Path, minutes: float) -> dict:
    import real_photos as rp

    data, test = work / "real_assay", work / "real_assay_test"
    if not (test / "labels.csv").exists():
        rp.write_dataset(data, rp.assay_rows(2400, test=False, seed=0), ("concentration",))
        rp.write_dataset(test, rp.assay_rows(600, test=True, seed=1), ("concentration",))
    ours = default_train("real_assay", data, test, work, minutes)
    train_images, train_y, _ = rp.read_dataset(data)
    test_images, test_y, _ = rp.read_dataset(test)
    ratio_reader = _rmse(rp.assay_ratio_reader(test_images), test_y[:, 0])
    log_ratio = _rmse(rp.ridge_fit_predict(rp.assay_log_ratio_features(train_images), train_y,
                                           rp.assay_log_ratio_features(test_images)), test_y)
    floor = rp.assay_floor(600, seed=5)
    fp32 = ours["fp32"]["rmse"]
    best = min(ratio_reader, log_ratio)
    return {"ours": ours, "ratio_rmse": ratio_reader, "log_ratio_rmse": log_ratio, "floor": floor, "row": {
        "metric": "RMSE mg/L (80..350)", "fp32": fp32, "int8": ours.get("int8", {}).get("rmse"),
        "baseline": f"colour ratio {ratio_reader:.2f}; log-ratio regression {log_ratio:.2f}",
        "floor": f"{floor:.2f} (tone-curve drift)", "ratio": f"{best / fp32:.2f}x",
        "met": fp32 < best and (best / fp32 >= 2 or fp32 <= 1.2 * floor), "budget_used": ours["budget_used"]}}


def real_coords(work: Path, minutes: float) -> dict:
    import real_photos as rp

    data, test = work / "real_coords", work / "real_coords_test"
    if not (test / "labels.csv").exists():
        train_rows, _ = rp.coords_rows(3000, test=False, seed=0)
        test_rows, truth = rp.coords_rows(600, test=True, seed=1)
        rp.write_dataset(data, train_rows, ("x", "y"))
        rp.write_dataset(test, test_rows, ("x", "y"))
        (test / "truth.json").write_text(json.dumps(truth))
    ours = default_train("real_coords", data, test, work, minutes)
    test_images, test_xy, _ = rp.read_dataset(test)
    coins = rp.coin_templates()
    matched = rp.match_template(test_images, [rp.mean_coin_template(coins)])
    exact = rp.match_template(test_images, rp.exact_templates(coins, json.loads((test / "truth.json").read_text())))
    distance = lambda p: np.sqrt(((p - test_xy) ** 2).sum(axis=1))  # noqa: E731
    baseline = float(np.sqrt(np.mean(distance(matched) ** 2)))
    exact_d = distance(exact)
    floor = float(np.sqrt(np.mean(exact_d[exact_d < 2.0] ** 2)))
    fp32 = ours["fp32"]["rmse"]
    axes = {a: ours["fp32"]["targets"][a] for a in ("x", "y")}
    return {"ours": ours, "template_rmse": baseline, "exact_template_rmse": float(np.sqrt(np.mean(exact_d ** 2))),
            "floor": floor, "row": {
                "metric": "RMSE px, quadrant q3 unseen", "fp32": fp32, "int8": ours.get("int8", {}).get("rmse"),
                "baseline": (f"template matching {baseline:.2f} (x/y of ours: {axes['x']['rmse']:.2f} / "
                             f"{axes['y']['rmse']:.2f}, bias {axes['x']['bias']:+.2f} / {axes['y']['bias']:+.2f})"),
                "floor": f"{floor:.2f} (exact template, inliers)", "ratio": f"{baseline / fp32:.1f}x",
                "met": baseline / fp32 >= 2 and fp32 <= 0.5, "budget_used": ours["budget_used"]}}


def main_real(args) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    work = Path(args.out).resolve()
    work.mkdir(parents=True, exist_ok=True)
    runners = {"pixelstats": real_pixelstats, "texture": real_texture, "assay": real_assay, "coords": real_coords}
    results_path = work / "accuracy_real.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    tasks = args.tasks.split(",") if args.tasks else list(runners)
    run_tasks({task: (lambda task=task: runners[task](work, args.minutes)) for task in tasks}, results, results_path,
              label="real ")
    print_table(f"{'task':<11}{'metric':<28}{'fp32':>10}{'int8':>10}  {'budget':>6}  "
                "classical baseline / floor / ours vs baseline", results, results_path,
                lambda task, row: f"{task:<11}{row['metric']:<28}{cell(row['fp32']):>10}{cell(row['int8']):>10}  "
                                  f"{row['budget_used']:>6.0%}  {row['baseline']}; floor {row['floor']}; "
                                  f"{row['ratio']} {verdict(row)}")


def run_tasks(runners: dict, results: dict, results_path: Path, *, label: str = "") -> None:
    """Run each task (name -> no-argument callable) in order, saving ``results`` after each one."""
    for task, run in runners.items():
        print(f"\n=== {label}{task}", flush=True)
        results[task] = run()
        results_path.write_text(json.dumps(results, indent=1, default=str))


def cell(value) -> str:
    """A table cell: floats with 3 decimals, anything else as it is."""
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def verdict(row: dict) -> str:
    return {True: "MET", False: "MISSED", None: ""}[row["met"]]


def print_table(header: str, results: dict, results_path: Path, line) -> None:
    """The header, one ``line(task, row)`` per task, and where the results are."""
    print("\n" + header)
    for task, result in results.items():
        print(line(task, result["row"]))
    print(f"\nresults: {results_path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench_accuracy")
    parser.add_argument("--tasks", default=None,
                        help="comma-separated tasks (default: assay,gravel,box_uniform,box_quadrant,pixelstats,depth; "
                             "with --real: pixelstats,texture,assay,coords)")
    parser.add_argument("--minutes", type=float, default=8.0, help="training budget per task")
    parser.add_argument("--n", type=int, default=3000, help="images per synthetic training pool")
    parser.add_argument("--real", action="store_true", help="the real-photograph table (scikit-image's photos)")
    args = parser.parse_args()
    if args.real:
        main_real(args)
        return
    args.tasks = args.tasks or "assay,gravel,box_uniform,box_quadrant,pixelstats,depth"
    work = Path(args.out).resolve()
    work.mkdir(parents=True, exist_ok=True)
    runners = {
        "assay": lambda: task_assay(work, args.minutes, args.n),
        "gravel": lambda: task_gravel(work, args.minutes, args.n),
        "box_uniform": lambda: task_box(work, args.minutes, args.n, quadrant=False),
        "box_quadrant": lambda: task_box(work, args.minutes, args.n, quadrant=True),
        "pixelstats": lambda: task_pixelstats(work, args.minutes, max(args.n, 6000)),
        "depth": lambda: task_depth(work, args.minutes, max(args.n, 6000)),
    }
    results_path = work / "accuracy.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    from edgereg.core.platform_info import runtime_line

    print(runtime_line(), flush=True)  # the CPU and instruction set behind every number below
    run_tasks({task: runners[task] for task in args.tasks.split(",")}, results, results_path)
    print_table(f"{'task':<14}{'metric':<32}{'fp32':>34}{'int8':>34}  goal / reference", results, results_path,
                lambda task, row: f"{task:<14}{row['metric']:<32}{cell(row['fp32']):>34}{cell(row['int8']):>34}  "
                                  f"{row['goal']} {verdict(row)}; {row['reference']}")


if __name__ == "__main__":
    main()
