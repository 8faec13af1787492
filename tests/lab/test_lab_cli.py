"""From photos of standards to a validated, calibrated model through the CLI, and a reading traced
back to the exact model file and calibration that made it (--audit); live --check-standard.

The test model reads a uniform gray frame g as x = 4 g / 255 - 2 (tests/conftest.py, "mean"); the
standards' reference values are 10 + 5 x of their nominal gray level, so calibration must find
reference = 10 + 5 reading.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("scipy")
pytest.importorskip("onnx")

from lab_cards import lab_sections

from edgereg.cli.main import main
from edgereg.core.card import read_card
from edgereg.lab.audit import AUDIT_COLUMNS, files_digest
from edgereg.lab.readout import LAB_FLAGS


def reading_of(gray: float) -> float:
    return 4 * gray / 255 - 2


def write_standards(folder: Path, levels: dict[float, int], *, jitter=(-1, 0, 1)) -> Path:
    """labels.csv + uniform gray photos: ``levels`` maps nominal gray -> replicates (gray +- jitter)."""
    (folder / "images").mkdir(parents=True)
    rows = []
    for gray, count in levels.items():
        for k in range(count):
            level = min(255, abs(int(gray + jitter[k % len(jitter)])))  # blanks: 0..3
            name = f"images/g{int(gray):03d}_{k}.png"
            cv2.imwrite(str(folder / name), np.full((20, 20, 3), level, np.uint8))
            reference = 0.0 if gray == 0 else 10 + 5 * reading_of(gray)
            rows.append((name, reference))
    with open(folder / "labels.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "conc"])
        writer.writerows(rows)
    return folder


@pytest.fixture
def uncalibrated(model_factory):
    return model_factory(kind="scalar", targets=("conc",), input_size=(16, 16), crop="none", units=("mg/L",),
                         intervals=lab_sections()["intervals"])


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_standards_to_a_validated_calibrated_model_and_a_traceable_reading(uncalibrated, tmp_path, capsys):
    standards = write_standards(tmp_path / "standards", {60: 3, 128: 3, 200: 3})
    calibrated = tmp_path / "model.cal.onnx"
    assert main(["calibrate", str(uncalibrated), str(standards), "--out", str(calibrated)]) == 0
    card = read_card(calibrated)
    section = card.calibration
    curve = section["targets"]["conc"]
    assert curve["fit"] == "linear" and curve["coef"] == pytest.approx([10.0, 5.0], abs=0.05)
    assert section["standards"]["sha256"] == files_digest(standards, ["labels.csv", *sorted(
        p.relative_to(standards).as_posix() for p in (standards / "images").iterdir())])
    assert section["standards"]["n"] == 9 and section["model_sha256"] == sha256(uncalibrated)
    assert dt.datetime.fromisoformat(section["date"].replace("Z", "+00:00")).tzinfo is not None
    assert curve["slope_ci95"][0] < 5.0 < curve["slope_ci95"][1] and curve["residual_sd"] > 0
    assert (tmp_path / "model.cal.calibration.json").is_file()
    assert not read_card(uncalibrated).calibration  # the input model is left as it was

    validation = write_standards(tmp_path / "validation", {0: 6, 40: 4, 90: 3, 160: 3, 230: 3},
                                 jitter=(-2, -1, 0, 1, 2, 3))
    report = tmp_path / "report"
    assert main(["validate", str(calibrated), str(validation), "--out", str(report), "--c", str(tmp_path / "c")]) == 0
    assert "LAB_HAS_LIMITS 1" in (tmp_path / "c" / "model.c").read_text()  # the C flags against the limits
    figures = json.loads((report / "validation.json").read_text())
    assert (report / "validation.png").stat().st_size > 10_000
    limits = read_card(calibrated).validation
    assert limits["calibration_id"] == section["id"]
    lob = limits["targets"]["conc"]["lob"]
    assert lob == pytest.approx(figures["figures"]["conc"]["blank"]["lob"])
    assert figures["figures"]["conc"]["linearity"]["slope"] == pytest.approx(1.0, abs=0.02)

    capsys.readouterr()
    assert main(["info", str(calibrated)]) == 0
    info = capsys.readouterr().out
    assert f"calibration {section['id']}" in info and f"validation {limits['id']}" in info

    photos = write_standards(tmp_path / "photos", {2: 1, 100: 1, 250: 1}, jitter=(0,))
    out = tmp_path / "preds.csv"
    assert main(["infer", str(calibrated), str(photos / "images"), "--out", str(out), "--audit"]) == 0
    rows = list(csv.DictReader(open(out)))
    assert list(rows[0])[:4] == ["path", "conc", "conc_lo", "conc_hi"] and list(rows[0])[-len(AUDIT_COLUMNS):] == \
        list(AUDIT_COLUMNS)
    values = [float(r["conc"]) for r in rows]
    np.testing.assert_allclose(values, [10 + 5 * reading_of(g) for g in (2, 100, 250)], atol=0.1)
    assert "below_lob" in rows[0]["flags"] and "extrapolated" in rows[0]["flags"] and rows[1]["flags"] == ""
    assert all(float(r["conc_lo"]) < float(r["conc"]) < float(r["conc_hi"]) for r in rows)

    # Trace the first reading back: which of the model files made it, with which calibration and standards.
    row = rows[0]
    candidates = {sha256(p): p for p in (uncalibrated, calibrated)}
    made_by = candidates[row["model_sha256"]]
    assert made_by == calibrated
    made_card = read_card(made_by)
    assert row["calibration_id"] == made_card.calibration["id"] == section["id"]
    assert row["calibration_date"] == made_card.calibration["date"]
    assert row["validation_id"] == made_card.validation["id"]
    assert made_card.calibration["standards"]["sha256"] == section["standards"]["sha256"]
    assert row["source"] == str((photos / "images" / "g002_0.png").resolve())
    assert row["timestamp"].endswith("Z") and dt.datetime.fromisoformat(row["timestamp"][:-1])
    assert row["confidence"] == "0.9" and float(row["quality_brightness"]) == pytest.approx(2.0)


def test_calibration_user_errors_are_one_line(uncalibrated, tmp_path, capsys):
    standards = write_standards(tmp_path / "standards", {60: 3, 200: 3})
    (standards / "labels.csv").write_text((standards / "labels.csv").read_text().replace("conc", "concentration"))
    assert main(["calibrate", str(uncalibrated), str(standards)]) == 2
    assert "no column for any of the model's targets" in capsys.readouterr().err
    few = write_standards(tmp_path / "few", {60: 1, 200: 1}, jitter=(0,))
    assert main(["calibrate", str(uncalibrated), str(few)]) == 2
    assert "needs at least 3 standards" in capsys.readouterr().err
    assert main(["calibrate", str(uncalibrated), str(write_standards(tmp_path / "ok", {60: 2, 200: 2})),
                 "--out", str(uncalibrated)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_infer_confidence_and_no_intervals_change_the_columns(uncalibrated, tmp_path, capsys):
    photos = write_standards(tmp_path / "photos", {60: 1, 200: 1}, jitter=(0,))
    for argv, expect in ((["--confidence", "0.95"], True), (["--no-intervals"], False)):
        out = tmp_path / f"{argv[0]}.jsonl"
        assert main(["infer", str(uncalibrated), str(photos / "images"), "--out", str(out), *argv]) == 0
        first = json.loads(out.read_text().splitlines()[0])
        assert ("conc_lo" in first) == expect
    assert main(["infer", str(uncalibrated), str(photos / "images"), "--confidence", "0.97"]) == 2
    assert "not one of the levels" in capsys.readouterr().err


def textured(rng, level):
    blocks = np.clip(rng.normal(level, 30, (12, 16, 3)), 0, 255).astype(np.uint8)
    return cv2.resize(blocks, (64, 48), interpolation=cv2.INTER_NEAREST)


@pytest.mark.slow
def test_live_check_standard_warns_and_exits_1_on_drift(model_factory, tmp_path, capsys):
    """A video of one standard: its value inside the readings' intervals passes, another drifts."""
    model = model_factory(**{**dict(kind="scalar", targets=("conc",), input_size=(16, 16), crop="none"),
                             **lab_sections()})
    rng = np.random.default_rng(0)
    scene = textured(rng, 128)
    video = tmp_path / "standard.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 30, (64, 48))
    for _ in range(12):
        writer.write(np.clip(scene.astype(int) + rng.integers(-2, 3, scene.shape), 0, 255).astype(np.uint8))
    writer.release()
    base = ["infer", str(model), "--camera", str(video), "--jsonl", "--smooth", "3", "--stable-tol", "0.5", "--audit"]
    assert main(base + ["--check-standard", "1000"]) == 1
    captured = capsys.readouterr()
    lines = [json.loads(line) for line in captured.out.splitlines()]
    judged = [line for line in lines if "standard" in line]
    assert judged and not judged[-1]["standard"]["inside"] and judged[-1]["standard"]["drift"]
    assert "standard drift" in captured.err and set(lines[0]["flags"]) <= set(LAB_FLAGS)
    assert lines[0]["lo"]["conc"] < lines[0]["value"]["conc"] < lines[0]["hi"]["conc"]
    assert lines[0]["audit"]["source"].endswith("#frame=0") and len(lines[0]["audit"]["model_sha256"]) == 64
    value = judged[-1]["standard"]["reading"]
    assert main(base + ["--check-standard", f"{value:.6f}"]) == 0
    assert "no drift" in capsys.readouterr().err


@pytest.mark.slow
def test_calibrate_and_validate_run_where_torch_cannot_be_imported(uncalibrated, tmp_path, run_without_torch):
    """An analyzer has the runtime and edgereg[lab], not the training stack."""
    standards = write_standards(tmp_path / "standards", {60: 3, 128: 3, 200: 3})
    validation = write_standards(tmp_path / "validation", {0: 4, 60: 3, 128: 3, 200: 3})
    calibrated = tmp_path / "model.cal.onnx"
    script = f"""
        from edgereg.cli.main import main
        assert main(["calibrate", {str(uncalibrated)!r}, {str(standards)!r}, "--out", {str(calibrated)!r}]) == 0
        assert main(["validate", {str(calibrated)!r}, {str(validation)!r}]) == 0
        assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules), "torch imported"
        print("OK")
    """
    result = run_without_torch(script, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "OK" in result.stdout and read_card(calibrated).validation


def test_resume_refuses_another_confidence_or_calibration_choice(uncalibrated, tmp_path, capsys):
    photos = write_standards(tmp_path / "photos", {60: 1, 200: 1}, jitter=(0,))
    out = tmp_path / "preds.csv"
    assert main(["infer", str(uncalibrated), str(photos / "images"), "--out", str(out)]) == 0
    assert main(["infer", str(uncalibrated), str(photos / "images"), "--out", str(out), "--resume",
                 "--confidence", "0.95"]) == 2
    assert "the --confidence or --no-calibration" in capsys.readouterr().err
    assert main(["infer", str(uncalibrated), str(photos / "images"), "--out", str(out), "--resume"]) == 0
