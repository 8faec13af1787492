"""The novelty output: exported as a second ONNX output with a threshold in the card, flagged
`unfamiliar` by `edgereg infer`, split out by `edgereg eval`; models without it still run."""

from __future__ import annotations

import csv
import json

import cv2
import numpy as np
import pytest

from edgereg.cli.main import main
from edgereg.core.card import read_card


def _outputs(path) -> list[str]:
    import onnxruntime as ort

    return [o.name for o in ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_outputs()]


@pytest.fixture(scope="module")
def strange(tmp_path_factory):
    """Photos unlike any assay well: coloured noise and stripes, with a labels.csv for eval."""
    root = tmp_path_factory.mktemp("strange")
    (root / "images").mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(24):
        image = rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)
        if i % 2:
            image[:, ::4] = (0, 0, 255)
        cv2.imwrite(str(root / "images" / f"{i:02d}.png"), image)
        rows.append({"path": f"images/{i:02d}.png", "concentration": 200.0})
    with open(root / "labels.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "concentration"])
        writer.writeheader()
        writer.writerows(rows)
    return root


def _flags(path) -> list[str]:
    return [row["flags"] for row in csv.DictReader(open(path))]


def test_the_fp32_model_has_a_novelty_output_and_the_int8_model_says_it_has_none(exported):
    assert _outputs(exported / "model.onnx") == ["value", "novelty"]
    novelty = read_card(exported / "model.onnx").novelty
    assert novelty["false_alarm_rate"] == 0.05 and novelty["n_threshold"] >= 20
    assert novelty["threshold"] > 0 and "never trained on" in novelty["threshold_rows"]
    # this version ships the int8 model without the branch (see edgereg/cli/export.py), and says so
    assert _outputs(exported / "model.int8.onnx") == ["value"]
    assert not read_card(exported / "model.int8.onnx").novelty


def test_infer_flags_photos_unlike_the_training_photos(exported, assay_data, strange, tmp_path):
    familiar, unfamiliar = tmp_path / "familiar.csv", tmp_path / "strange.csv"
    model = str(exported / "model.onnx")
    assert main(["infer", model, str(assay_data / "images"), "--out", str(familiar)]) == 0
    assert main(["infer", model, str(strange / "images"), "--out", str(unfamiliar)]) == 0
    seen = [("unfamiliar" in f) for f in _flags(familiar)]
    new = [("unfamiliar" in f) for f in _flags(unfamiliar)]
    assert np.mean(seen) <= 0.15  # about 5% of familiar photos (the training photos among them: fewer)
    assert np.mean(new) >= 0.9


def test_eval_reports_familiar_and_unfamiliar_readings_apart(exported, strange, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["eval", str(exported / "model.onnx"), str(strange), "--out", str(out)]) == 0
    assert "unfamiliar:" in capsys.readouterr().out
    result = json.loads((out / "metrics.json").read_text())["by_familiarity"]
    assert result["familiar"]["n"] + result["unfamiliar"]["n"] == 24 and result["unfamiliar"]["n"] >= 20
    assert "rmse" in result["unfamiliar"] and len(result["novelty"]) == 24


def test_a_model_without_the_novelty_output_loads_and_runs(assay_run, assay_data, tmp_path, capsys):
    """--no-novelty writes what every model exported before the novelty output looks like."""
    out = tmp_path / "plain"
    assert main(["export", str(assay_run), "--out", str(out), "--no-novelty", "--no-speed"]) == 0
    assert _outputs(out / "model.onnx") == ["value"] and read_card(out / "model.onnx").novelty == {}
    preds = tmp_path / "preds.csv"
    assert main(["infer", str(out / "model.onnx"), str(assay_data / "images"), "--out", str(preds)]) == 0
    assert not any("unfamiliar" in f for f in _flags(preds))
    assert main(["eval", str(out / "model.onnx"), str(assay_data), "--out", str(tmp_path / "eval")]) == 0
    assert "this model has no novelty output" in capsys.readouterr().out


def test_the_shrinkage_distance_is_the_ledoit_wolf_mahalanobis_distance():
    from edgereg.export.uncertainty.novelty import fit_shrinkage

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 12)) @ rng.normal(size=(12, 12))
    fit = fit_shrinkage(x)
    c = x - x.mean(axis=0)
    s = c.T @ c / len(x)
    m = np.trace(s) / 12
    precision = np.linalg.inv((1 - fit.shrinkage) * s + fit.shrinkage * m * np.eye(12))
    expected = np.sqrt(np.einsum("ij,jk,ik->i", c, precision, c))
    np.testing.assert_allclose(fit.distance(x), expected, rtol=1e-8)
    assert 0.0 <= fit.shrinkage <= 1.0
