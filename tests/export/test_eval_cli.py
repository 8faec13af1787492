"""`edgereg eval MODEL DATASET`: metrics.json, predictions.csv and the plot, for fp32 and int8 models."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import textwrap

import cv2
import numpy as np
import pytest

from edgereg.cli.main import main


def _labels(dataset_dir):
    """(paths, targets (N, 1)) straight from labels.csv."""
    with open(dataset_dir / "labels.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [dataset_dir / r["path"] for r in rows], np.array([[float(r["concentration"])] for r in rows])


@pytest.mark.parametrize("model_file", ["model.onnx", "model.int8.onnx"])
def test_eval_reports_metrics_that_match_the_predictor(exported, assay_data, tmp_path, capsys, model_file):
    from edgereg.core.predictor import Predictor

    out = tmp_path / "eval"
    # the same provider, batch size and machine on both sides: the same computation, held to 1e-6
    assert main(["eval", str(exported / model_file), str(assay_data), "--out", str(out), "--providers", "cpu"]) == 0
    result = json.loads((out / "metrics.json").read_text())
    paths, truth = _labels(assay_data)
    predictions, errors = Predictor(exported / model_file, providers="cpu").predict_paths(paths)
    assert errors == []
    residual = predictions.values - truth
    assert result["n"] == len(paths) and result["skipped"] == 0
    assert result["metrics"]["rmse"] == pytest.approx(float(np.sqrt((residual ** 2).mean())), rel=1e-6)
    assert result["metrics"]["max_error"] == pytest.approx(float(np.abs(residual).max()), rel=1e-6)
    assert set(result["metrics"]["groups"]), "labels.csv has groups: per-group errors expected"
    assert (result["quantization"] is not None) == (model_file == "model.int8.onnx")
    with open(out / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(paths) and float(rows[0]["concentration_true"]) == pytest.approx(truth[0, 0], rel=1e-5)
    plot = cv2.imread(str(out / "pred_vs_true.png"))
    assert plot is not None and plot.shape[0] > 100
    printed = capsys.readouterr().out
    assert "concentration: RMSE" in printed and "mg/L" in printed


def test_eval_without_matplotlib_still_writes_metrics(exported, assay_data, tmp_path):
    out = tmp_path / "eval"
    script = textwrap.dedent(f"""
        import sys
        class BlockMatplotlib:
            def find_spec(self, name, path=None, target=None):
                if name == "matplotlib" or name.startswith("matplotlib."):
                    raise ImportError("matplotlib is blocked in this test")
        sys.meta_path.insert(0, BlockMatplotlib())
        from edgereg.cli.main import main
        sys.exit(main(["eval", {str(exported / "model.onnx")!r}, {str(assay_data)!r}, "--out", {str(out)!r}]))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "edgereg[train]" in done.stdout
    assert json.loads((out / "metrics.json").read_text())["metrics"]["rmse"] > 0
    assert not (out / "pred_vs_true.png").exists()


def test_eval_user_errors_exit_2(tmp_path, assay_data, exported, capsys):
    assert main(["eval", str(tmp_path / "missing.onnx"), str(assay_data)]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["eval", str(exported / "model.onnx"), str(tmp_path / "no_dataset")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
