"""Hostile datasets: constant targets, duplicate and escaping paths, skipped rows under --quiet
(defects 5, 6, 7, 9)."""

from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pytest
from hostile_helpers import assert_one_line_error

from edgereg.cli.main import main
from edgereg.data.dataset import load_dataset
from edgereg.errors import DatasetError
from edgereg.preprocess import PreprocessConfig

CONFIG = PreprocessConfig(input_size=(16, 16), crop="center")


def make_dataset(root, values, *, extra_rows=(), seed=0):
    """Grey images whose level encodes ``values`` (one per image) and labels.csv listing them."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lines = ["path,conc"]
    for i, value in enumerate(values):
        level = int(np.clip(40 + 2 * float(value) + rng.normal(0, 2), 0, 255))
        cv2.imwrite(str(root / f"im{i}.png"), np.full((20, 20, 3), level, np.uint8))
        lines.append(f"im{i}.png,{value}")
    lines += list(extra_rows)
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root


# ------------------------------------------------------------------------- defect 5: constant targets


def test_constant_targets_are_refused_before_training_and_leave_no_out(tmp_path, capsys):
    pytest.importorskip("torch")
    data = make_dataset(tmp_path / "eq", [100] * 24)
    out = tmp_path / "run"
    assert main(["train", str(data), "--out", str(out), "--epochs", "1"]) == 2
    assert_one_line_error(capsys.readouterr().err, "conc", "constant over all 24 rows", "conc = 100")
    assert not out.exists(), "a failed train leaves no empty --out"
    near = make_dataset(tmp_path / "near", [100 + 1e-9 * i for i in range(24)])
    assert main(["train", str(near), "--out", str(out), "--epochs", "1"]) == 2
    assert_one_line_error(capsys.readouterr().err, "nearly constant")


def test_a_failure_after_training_starts_marks_run_json_failed(tmp_path):
    pytest.importorskip("torch")
    from edgereg.training.config import TrainConfig
    from edgereg.training.trainer import train

    data = make_dataset(tmp_path / "ds", np.linspace(0, 50, 24))

    def log(message):
        if message.startswith("model "):  # logged once run.json says "training"
            raise RuntimeError("the machine went away")

    with pytest.raises(RuntimeError):
        train(data, tmp_path / "run", TrainConfig(epochs=1, model="mlp", batch_size=8), progress=False, log=log)
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["status"] == "failed" and record["failure"] == "RuntimeError: the machine went away"


def test_report_of_an_exact_baseline_has_no_zero_division():
    from edgereg.training.reporting.report import evaluate_split, format_baselines

    truth = np.full((6, 1), 100.0)
    evaluation = evaluate_split("test", "scalar", ["conc"], truth, truth + 0.5, {"train_mean": truth})
    assert "the baseline is exact" in format_baselines(evaluation)


# ------------------------------------------------------------------------- defect 6: duplicate paths


def test_duplicate_paths_are_reported_and_fatal_with_strict(tmp_path):
    data = make_dataset(tmp_path / "ds", [1.0, 2.0, 3.0],
                        extra_rows=["im0.png,9.0", "./im1.png,2.0", "sub/../im2.png,3.0"])
    loaded = load_dataset(data, config=CONFIG, cache=False)
    assert list(loaded.paths) == ["im0.png", "im1.png", "im2.png"]
    assert loaded.targets[:, 0].tolist() == [1.0, 2.0, 3.0]  # the first row wins
    reasons = {line: reason for line, _, reason in loaded.skipped}
    assert reasons[5] == ("duplicate of line 2 (the same image with other targets); the first row is kept: "
                          "remove or fix the repeat")
    assert reasons[6].startswith("duplicate of line 3 (the same image)") and 7 in reasons
    with pytest.raises(DatasetError, match=r"labels.csv line 5, 'im0.png': duplicate of line 2"):
        load_dataset(data, config=CONFIG, cache=False, strict=True)


# ------------------------------------------------------------------------- defect 7: escaping paths


def test_paths_escaping_the_dataset_folder_are_not_opened_without_allow_outside(tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    cv2.imwrite(str(outside / "x.png"), np.full((20, 20, 3), 90, np.uint8))
    data = make_dataset(tmp_path / "ds", [1.0, 2.0])
    os.symlink(outside / "x.png", data / "link.png")
    rows = ["../elsewhere/x.png,5.0", f"{outside / 'x.png'},6.0", "link.png,7.0", "/etc/passwd,8.0"]
    with open(data / "labels.csv", "a") as handle:
        handle.write("\n".join(rows) + "\n")
    loaded = load_dataset(data, config=CONFIG, cache=False)
    assert list(loaded.paths) == ["im0.png", "im1.png"]
    assert len(loaded.skipped) == 4 and all("outside the dataset folder" in r and "--allow-outside" in r
                                            for _, _, r in loaded.skipped)
    with pytest.raises(DatasetError, match="outside the dataset folder"):
        load_dataset(data, config=CONFIG, cache=False, strict=True)
    allowed = load_dataset(data, config=CONFIG, cache=False, allow_outside=True)
    assert list(allowed.paths) == ["im0.png", "im1.png", "../elsewhere/x.png"]
    reasons = {line: reason for line, _, reason in allowed.skipped}
    assert reasons[5].startswith("duplicate of line 4") and reasons[6].startswith("duplicate of line 4")
    assert "duplicate" not in reasons[7] and "outside" not in reasons[7]  # /etc/passwd: opened, not an image


def test_eval_confines_dataset_paths_too(tiny_model, tmp_path, capsys):
    data = make_dataset(tmp_path / "ds", [0.1, 0.2, 0.3], extra_rows=["/etc/hostname,0.5"])
    assert main(["eval", str(tiny_model), str(data), "--out", str(tmp_path / "e")]) == 0
    captured = capsys.readouterr()
    assert "(1 rows skipped)" in captured.out
    assert "skipped 1 row of labels.csv: line 5 '/etc/hostname': outside the dataset folder" in captured.err


# ------------------------------------------------------------------------- defect 9: --quiet


def test_quiet_training_still_prints_the_skipped_rows(tmp_path, capsys):
    pytest.importorskip("torch")
    data = make_dataset(tmp_path / "ds", np.linspace(0, 50, 24), extra_rows=["missing.png,3.0", "im1.png,x"])
    assert main(["train", str(data), "--out", str(tmp_path / "run"), "--quiet", "--epochs", "1", "--model", "mlp",
                 "--batch-size", "8"]) == 0
    err = capsys.readouterr().err
    assert ("skipped 2 rows of labels.csv: line 26 'missing.png': file not found; line 27 'im1.png': "
            "non-numeric target 'conc': 'x'") in err
