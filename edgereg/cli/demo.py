"""`edgereg demo`: the whole pipeline on synthetic data, end to end, with a report.

synthesize an assay dataset -> train -> export fp32 + int8 (+ C) -> score a folder of new photos
-> compare the readings with the truth. Every step is the public CLI a user would type.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

from edgereg.cli.common import command_parser
from edgereg.cli.options import count, positive


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = command_parser(
        subparsers, "demo", help="synthetic data -> train -> int8 export -> folder scoring, with a report",
        description="Run the whole edgereg pipeline on a synthetic assay (a round well whose colour "
                    "follows a concentration of 80..350 mg/L): synthesize, train, export fp32 and "
                    "int8 (and C), score a folder of photos the model never saw, and report.",
        epilog="examples:\n  edgereg demo --out demo_out\n  edgereg demo --out /tmp/d --quick",
    )
    parser.add_argument("--out", default="demo_out", help="working folder (default demo_out)")
    parser.add_argument("--n", type=count(20), default=2000, help="training photos to synthesize (>= 20)")
    parser.add_argument("--minutes", type=positive, default=4.0, help="training time budget (> 0)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 160 photos, 1 epoch")
    return parser


def _step(title: str) -> float:
    print(f"\n== {title}", flush=True)
    return time.perf_counter()


def _call(argv: list[str], *, allowed=(0,)) -> int:
    from edgereg.cli.main import main

    print("$ edgereg " + " ".join(argv), flush=True)
    code = main(argv)
    if code not in allowed:
        from edgereg.errors import EdgeregError

        raise EdgeregError(f"demo step `edgereg {' '.join(argv)}` failed with exit code {code}")
    return code


def _score_accuracy(preds_csv: Path, labels_csv: Path, target: str) -> dict:
    """RMSE / max error of a predictions CSV against a dataset's labels, joined on the file path, and
    the coverage of its ``_lo``/``_hi`` interval when it has one."""
    import numpy as np

    truth = {}
    with open(labels_csv, newline="") as handle:
        for row in csv.DictReader(handle):
            truth[(labels_csv.parent / row["path"]).resolve()] = float(row[target])
    errors, inside = [], []
    with open(preds_csv, newline="") as handle:
        for row in csv.DictReader(handle):
            key = Path(row["path"]).resolve()
            if key in truth:
                errors.append(float(row[target]) - truth[key])
                if f"{target}_lo" in row:
                    inside.append(float(row[f"{target}_lo"]) <= truth[key] <= float(row[f"{target}_hi"]))
    err = np.asarray(errors)
    if not len(err):
        return {"n": 0}
    result = {"n": int(len(err)), "rmse": float(np.sqrt(np.mean(err ** 2))), "mae": float(np.abs(err).mean()),
              "max_error": float(np.abs(err).max())}
    if inside:
        result["interval_coverage_90"] = float(np.mean(inside))
    return result


def run(args) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    n, field_n = (160, 40) if args.quick else (args.n, 300)
    data, field, run_dir = out / "assay", out / "field", out / "run"
    started = time.perf_counter()

    _step("1/5 synthesize a training set and, separately, a 'field' folder of new photos")
    _call(["synth", "assay", str(data), "--n", str(n), "--seed", "0"])
    _call(["synth", "assay", str(field), "--n", str(field_n), "--seed", "12345"])

    _step("2/5 train (group-aware split, baselines, collapse check, report.png)")
    train = ["train", str(data), "--out", str(run_dir), "--split", "group", "--units", "mg/L"]
    train += ["--epochs", "1"] if args.quick else ["--time-budget", str(args.minutes)]
    _call(train)

    _step("3/5 export fp32 + int8 (accuracy gate) + C")
    _call(["export", str(run_dir), "--int8", "--c"])
    int8 = run_dir / "model.int8.onnx"
    model = int8 if int8.exists() else run_dir / "model.onnx"

    _step(f"4/5 score the field folder with {model.name}")
    preds = out / "field_preds.csv"
    preds.unlink(missing_ok=True)
    _call(["infer", str(model), str(field / "images"), "--out", str(preds)], allowed=(0, 3))

    _step("5/5 report")
    field_metrics = _score_accuracy(preds, field / "labels.csv", "concentration")
    summary = {"model": str(model), "field": field_metrics, "seconds": round(time.perf_counter() - started, 1)}
    metrics_path = run_dir / "metrics.json"
    if metrics_path.exists():
        summary["training_metrics"] = str(metrics_path)
    export_report = run_dir / "export_report.json"
    if export_report.exists():
        summary["export_report"] = str(export_report)
    (out / "demo_report.json").write_text(json.dumps(summary, indent=2))
    if field_metrics.get("n"):
        print(f"field photos scored: {field_metrics['n']}  RMSE {field_metrics['rmse']:.2f} mg/L  "
              f"MAE {field_metrics['mae']:.2f}  max error {field_metrics['max_error']:.2f} (range 80..350)"
              + (f"; 90% intervals covered {field_metrics['interval_coverage_90']:.0%}"
                 if "interval_coverage_90" in field_metrics else ""))
    print(f"training report: {run_dir / 'report.png'}")
    print(f"export report:   {export_report}")
    print(f"predictions:     {preds}")
    print(f"demo report:     {out / 'demo_report.json'}  ({summary['seconds']} s)")
    return 0
