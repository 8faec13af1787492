"""Honest intervals through the CLI: a refitted model's intervals come from out-of-fold residuals
(RUN/held_out.npz) or are not stored at all; a level the calibration rows cannot support is refused
or left out with its reason; no output ever carries a NaN bound."""

from __future__ import annotations

import csv
import json
import math
import shutil

import numpy as np
import pytest

from edgereg.cli.main import main
from edgereg.core.card import read_card
from edgereg.lab.intervals import parse_intervals

NOISE = 5.0  # mg/L: the out-of-fold error written into the fake held_out.npz


def _refitted_copy(assay_run, tmp_path, *, held_out: bool):
    """The fixture run, recorded as refitted on train + val (as a holdout + --refit run is), with or
    without held-out predictions of its train + val rows (errors N(0, NOISE), folds by row)."""
    from edgereg.training.run import load_run_dataset, read_run_info

    run = tmp_path / "refit_run"
    shutil.copytree(assay_run, run)
    record = json.loads((run / "run.json").read_text())
    split = record["split"]
    rows = np.sort(np.concatenate([np.asarray(split["train"]), np.asarray(split["val"])])).astype(np.int64)
    record["refit_rows"] = rows.tolist()
    (run / "run.json").write_text(json.dumps(record))
    (run / "held_out.npz").unlink(missing_ok=True)
    if held_out:
        targets = np.asarray(load_run_dataset(read_run_info(run)).targets, np.float64)[rows]  # (n, 1) mg/L
        pred = targets + np.random.default_rng(0).normal(0.0, NOISE, targets.shape)
        np.savez(run / "held_out.npz", rows=rows, folds=rows % 3, true=targets, pred=pred,
                 scored_by=np.asarray("fold models (test)"))
    return run, rows


def test_a_refit_without_held_out_predictions_gets_no_intervals_and_says_why(assay_run, assay_data, tmp_path,
                                                                             capsys):
    run, _ = _refitted_copy(assay_run, tmp_path, held_out=False)
    assert main(["export", str(run), "--int8", "--no-speed"]) == 0
    printed = capsys.readouterr().out
    assert "intervals (fp32): none: the shipped model was refitted on every row" in printed
    for name in ("model.onnx", "model.int8.onnx"):
        card = read_card(run / name)
        assert "held_out.npz" in card.intervals["none"] and parse_intervals(card.intervals, card.targets) is None
    out = tmp_path / "preds.csv"
    assert main(["infer", str(run / "model.onnx"), str(assay_data / "images"), "--out", str(out)]) == 0
    assert "concentration_lo" not in next(csv.reader(open(out)))  # no "slightly optimistic" bounds
    assert "no prediction intervals: the shipped model was refitted" in capsys.readouterr().err
    assert main(["info", str(run / "model.onnx")]) == 0
    assert "intervals  none: the shipped model was refitted" in capsys.readouterr().out


def test_refit_intervals_come_from_the_out_of_fold_residuals(assay_run, tmp_path, capsys):
    run, rows = _refitted_copy(assay_run, tmp_path, held_out=True)
    val = json.loads((run / "run.json").read_text())["split"]["val"]
    assert main(["export", str(run), "--int8", "--no-speed"]) == 0
    fp32, int8 = (read_card(run / name) for name in ("model.onnx", "model.int8.onnx"))
    assert fp32.intervals["method"].startswith("cross-conformal")
    (entry,) = parse_intervals(fp32.intervals, fp32.targets).sets
    assert entry.n_calibration == len(rows)  # every held-out row (too few to divide for a difficulty)
    low, high = entry.targets[0].quantiles[0.9][0]
    # N(0, 5) errors: a 90% interval is about +-8.2 mg/L, whatever the model's own (trained-on) residuals
    assert 0.6 * 1.645 * NOISE < (low + high) / 2 < 1.5 * 1.645 * NOISE
    (entry8,) = parse_intervals(int8.intervals, int8.targets).sets
    assert entry8.model == "int8" and entry8.n_calibration == len(rows) - len(val)  # the int8 search's rows left out
    assert "left out of this model's quantiles" in int8.intervals["split_choice"]


@pytest.fixture(scope="module")
def calibrated(exported, tmp_path_factory):
    """The exported int8 model calibrated on 12 photos of standards."""
    from edgereg.training.synth import make_dataset

    root = tmp_path_factory.mktemp("standards")
    make_dataset("assay", root / "standards", n=12, seed=3, size=48)
    out = root / "model.cal.onnx"
    assert main(["calibrate", str(exported / "model.int8.onnx"), str(root / "standards"), "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("model", ["uncalibrated", "calibrated"])
def test_a_level_the_calibration_rows_cannot_support_is_refused_and_no_bound_is_nan(model, exported, calibrated,
                                                                                   assay_data, tmp_path, capsys):
    path = exported / "model.int8.onnx" if model == "uncalibrated" else calibrated
    out = tmp_path / "preds.csv"
    code = main(["infer", str(path), str(assay_data / "images"), "--out", str(out), "--confidence", "0.99"])
    assert code == 2 and not out.exists()
    assert "99% intervals need at least 199 calibration rows" in capsys.readouterr().err
    for level in ("0.8", "0.9"):  # 0.8: bounds; 0.9 (the default, 19 rows needed, 16 there): none, with a note
        assert main(["infer", str(path), str(assay_data / "images"), "--out", str(out), "--confidence", level]) == 0
        rows = list(csv.DictReader(open(out)))
        bounds = [float(r[k]) for r in rows for k in ("concentration_lo", "concentration_hi") if k in r]
        assert all(math.isfinite(b) for b in bounds) and (len(bounds) == 2 * len(rows)) == (level == "0.8")
        out.unlink()
    assert "no intervals written: 90% intervals need at least 19" in capsys.readouterr().err
    assert main(["eval", str(path), str(assay_data), "--out", str(tmp_path / "eval")]) == 0
    printed = capsys.readouterr().out
    assert "99% -> 0.0%" not in printed and "99%: not reported: 99% intervals need at least 199" in printed


def test_calibration_carries_an_infinite_bound_as_infinite():
    from edgereg.lab.calibration import TargetCalibration

    for coef, expect in (((10.0, 5.0, 0.0), (-math.inf, math.inf)), ((10.0, -5.0, 0.0), (-math.inf, math.inf)),
                         ((1.0, 2.0, 0.5), (-1.0, math.inf))):  # a parabola's minimum -1 bounds it below
        curve = TargetCalibration("linear" if coef[2] == 0 else "quadratic", coef, ((0.0,) * 3,) * 3, None, 0.1, 1.0,
                                  {0.9: 1.9}, (0.0, 1.0))
        lo, hi = curve.map_interval(np.array([1.0, 1.0]), np.array([-math.inf, 0.5]), np.array([math.inf, math.inf]),
                                    0.9)
        assert not np.isnan(lo).any() and not np.isnan(hi).any()
        assert (lo[0], hi[0]) == expect
        # open above in the reading: open in the curve's direction
        assert (hi[1] if coef[1] > 0 else -lo[1]) == math.inf
