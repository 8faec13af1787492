"""int8 sweep: every registry model on every task of the accuracy benchmark, through the public CLI.

For each (model, task) the model is trained briefly (``edgereg train --time-budget``), exported with
``edgereg export --int8`` (calibration, accuracy control, speed control: ``edgereg.export.int8.search``)
and one row is printed from its ``export_report.json``: did an int8 model pass the default gate
(10%), which layers stayed float and why, int8 / fp32 images/s at batch 1 and 32 as the export's
speed control measured them (single thread, int8 and fp32 timed side by side in one process), and
the export's wall seconds (``int8.json`` also keeps each calibrator's seconds, or "skipped", under
the ``--int8-budget``).

Goal (issue "Faster than decoding"): every row passes the gate at >= 1.3x fp32 at batch 32.

Tasks: assay (scalar, colour), gravel (distribution, group split), box (coords), pixelstats (the
mean, median and std of a patch as one vector). Models: those of ``edgereg models`` whose kinds
include the task's.

Run: ``python benchmarks/bench_int8.py --out bench_int8`` (about an hour on 2 cores with the default
1-minute budgets; ``--models`` and ``--tasks`` narrow it). ``--lock FILE`` holds an exclusive lock on
FILE while each export runs, so the speed measurements never overlap another timing run.
Writes ``OUT/int8.json`` and prints the table.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

TASKS = {  # task -> (kind, synth size, extra train args)
    "assay": ("scalar", None, []),
    "gravel": ("distribution", None, ["--split", "group"]),
    "box": ("coords", None, []),
    "pixelstats": ("vector", None, ["--targets", "mean,median,std", "--kind", "vector"]),
}


def edgereg(*args, allowed=(0,)) -> subprocess.CompletedProcess:
    """Run the CLI in a fresh process, as a user would."""
    done = subprocess.run([sys.executable, "-m", "edgereg", *map(str, args)], capture_output=True, text=True)
    if done.returncode not in allowed:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-5:])
        raise RuntimeError(f"edgereg {' '.join(map(str, args[:3]))} exited {done.returncode}:\n{tail}")
    return done


@contextlib.contextmanager
def locked(path: str | None):
    """Hold an exclusive flock on ``path`` (no-op without one)."""
    if not path:
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def models_for(kind: str) -> list[str]:
    from edgereg.training.models.registry import list_models

    return list_models(kind=kind)


def row(model: str, task: str, run: Path, code: int, seconds: float, export_seconds: float) -> dict:
    report = json.loads((run / "export_report.json").read_text())
    int8 = report["models"].get("int8", {})
    plans = (int8.get("calibration") or {}).get("plans", {})
    search = int8.get("search") or {}
    speed = search.get("speed") or {}
    layers = search.get("layers", [])
    return {
        "model": model, "task": task, "exit": code, "seconds": round(seconds, 1),
        "export_seconds": round(export_seconds, 1),
        "calibration": {m: ("skipped" if p["skipped"] else p["seconds"]) for m, p in plans.items()},
        "passed": bool(report["gate"] and report["gate"]["passed"]),
        "worst_drop": report["gate"]["worst_drop"] if report["gate"] else None,
        "activations": int8.get("activations", "").split(",")[0],
        "float_layers": [(layer["name"], layer["why"]) for layer in layers if layer["float"]],
        "n_layers": len(layers),
        "int8_vs_fp32": speed.get("int8_vs_fp32", {}),
        "recommended": speed.get("recommended"),
        "steps": search.get("steps", []),
    }


def short(name: str) -> str:
    """A layer name without the exporter's module path noise."""
    return name.replace("/model/", "").split("/")[-2] if name.count("/") >= 2 else name


def print_table(rows: list[dict]) -> None:
    print(f"\n{'model':<16}{'task':<12}{'gate':<7}{'worst':>8}{'act':>7}  {'float layers (why)':<44}"
          f"{'b1':>7}{'b32':>7}{'export s':>10}  recommended")
    for r in rows:
        if "error" in r:
            print(f"{r['model']:<16}{r['task']:<12}ERROR  {r['error'][:90]}")
            continue
        floats = ", ".join(f"{short(n)} ({w})" for n, w in r["float_layers"]) or "-"
        floats = f"{len(r['float_layers'])}/{r['n_layers']}: {floats}"
        ratios = r["int8_vs_fp32"]
        cell = lambda b, ratios=ratios: f"{ratios[b]:.2f}x" if b in ratios else "-"  # noqa: E731
        worst = f"{r['worst_drop']:+.1%}" if r["worst_drop"] is not None else "-"
        gate = "pass" if r["passed"] else "FAIL"
        print(f"{r['model']:<16}{r['task']:<12}{gate:<7}{worst:>8}{r['activations']:>7}  {floats[:44]:<44}"
              f"{cell('1'):>7}{cell('32'):>7}{r.get('export_seconds', float('nan')):>10.1f}  "
              f"{r['recommended'] or '-'}")
    met = [r for r in rows if r.get("passed") and r["int8_vs_fp32"].get("32", 0) >= 1.3]
    print(f"\n{len(met)}/{len(rows)} rows pass the gate at >= 1.3x fp32 at batch 32 "
          f"(goal: all); {sum(bool(r.get('passed')) for r in rows)}/{len(rows)} pass the gate")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench_int8")
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--models", default=None, help="comma list (default: every model that fits the task)")
    parser.add_argument("--minutes", type=float, default=1.0, help="training budget per model and task")
    parser.add_argument("--n", type=int, default=600, help="images per synthetic dataset")
    parser.add_argument("--retrain", action="store_true", help="train again even where OUT has a finished run")
    parser.add_argument("--calib-method", default="auto", help="passed to edgereg export (minmax is quickest)")
    parser.add_argument("--int8-budget", default="100", help="passed to edgereg export (calibrators' seconds)")
    parser.add_argument("--lock", default=None, help="flock this file while each export measures speed")
    args = parser.parse_args()
    work = Path(args.out).resolve()
    work.mkdir(parents=True, exist_ok=True)
    results_path = work / "int8.json"
    rows = json.loads(results_path.read_text()) if results_path.exists() else []
    done = {(r["model"], r["task"]) for r in rows}
    for task in args.tasks.split(","):
        kind, size, train_args = TASKS[task]
        data = work / f"data_{task}"
        if not (data / "labels.csv").exists():
            edgereg("synth", task, data, "--n", args.n, *(["--size", size] if size else []))
        models = args.models.split(",") if args.models else models_for(kind)
        for model in models:
            if (model, task) in done:
                continue
            run = work / f"run_{task}_{model}"
            print(f"=== {model} on {task}", flush=True)
            started = time.perf_counter()
            try:
                if args.retrain or not (run / "best.pt").exists():  # a finished run is exported again
                    shutil.rmtree(run, ignore_errors=True)
                    edgereg("train", data, "--out", run, "--model", model, "--time-budget", args.minutes,
                            "--quiet", *train_args)
                with locked(args.lock):
                    exporting = time.perf_counter()
                    code = edgereg("export", run, "--int8", "--repeats", "3", "--calib-method", args.calib_method,
                                   "--int8-budget", args.int8_budget, allowed=(0, 1)).returncode
                    export_seconds = time.perf_counter() - exporting
            except RuntimeError as exc:  # one broken combination must not stop the sweep
                print(f"  failed: {exc}", flush=True)
                rows.append({"model": model, "task": task, "error": str(exc).splitlines()[-1]})
                results_path.write_text(json.dumps(rows, indent=1))
                continue
            rows.append(row(model, task, run, code, time.perf_counter() - started, export_seconds))
            print("  " + "\n  ".join(rows[-1]["steps"]), flush=True)
            results_path.write_text(json.dumps(rows, indent=1))
    print_table(rows)
    print(f"\nresults: {results_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
