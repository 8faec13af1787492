"""`edgereg export` stores conformal intervals in every model's card from its own held-out residuals;
plain `edgereg infer` writes the bounds; `edgereg eval` prints the observed coverage."""

from __future__ import annotations

import csv
import json
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from edgereg.cli.main import main
from edgereg.core.card import read_card
from edgereg.export.uncertainty.conformal import MIN_CALIBRATION, MIN_FIT, held_out_parts
from edgereg.lab.intervals import parse_intervals


def test_every_exported_model_has_its_own_intervals(exported, assay_run):
    from edgereg.training.run import read_run_info

    split = read_run_info(assay_run).split
    specs = {}
    for name in ("model.onnx", "model.int8.onnx", "model.fp16.onnx"):
        card = read_card(exported / name)
        specs[name] = parse_intervals(card.intervals, card.targets)
        assert {0.8, 0.9, 0.95} <= set(specs[name].levels)
        (entry,) = specs[name].sets  # the fixture's card has no TTA by default: one set
        assert entry.tta == "none" and entry.n_calibration == len(split.test)  # test only: nothing chose from it
        assert "guaranteed" in card.intervals["guarantee"] and "edgereg eval" in card.intervals["guarantee"]
    assert specs["model.int8.onnx"].sets[0].model == "int8"  # the int8 model's own residuals
    assert specs["model.onnx"].sets[0].model == specs["model.fp16.onnx"].sets[0].model == "fp32"
    report = json.loads((exported / "export_report.json").read_text())
    assert set(report["intervals"]) == {"fp32", "int8"}
    assert "split_choice" in report["intervals"]["int8"]


def test_plain_infer_writes_bounds_that_cover_like_the_card_says(exported, assay_data, tmp_path):
    out = tmp_path / "preds.csv"  # 16 test images: enough for 80% intervals (9 a side), not for 90% (19)
    assert main(["infer", str(exported / "model.int8.onnx"), str(assay_data / "images"), "--out", str(out),
                 "--confidence", "0.8"]) == 0
    rows = list(csv.DictReader(open(out)))
    assert list(rows[0])[:4] == ["path", "concentration", "concentration_lo", "concentration_hi"]
    lo = np.array([float(r["concentration_lo"]) for r in rows])
    hi = np.array([float(r["concentration_hi"]) for r in rows])
    value = np.array([float(r["concentration"]) for r in rows])
    assert np.all(hi - lo > 0) and np.mean((lo <= value) & (value <= hi)) > 0.5  # mostly around the reading


def test_eval_prints_the_observed_coverage(exported, assay_data, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["eval", str(exported / "model.int8.onnx"), str(assay_data), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "interval coverage (nominal -> observed)" in printed and "guaranteed only" in printed
    coverage = json.loads((out / "metrics.json").read_text())["interval_coverage"]
    level = coverage["levels"]["0.8"]
    assert 0.0 <= level["coverage"] <= 1.0 and sum(b["n"] for b in level["bins"]["concentration"]) == 96
    assert coverage["levels"]["0.5"]["mean_width"]["concentration"] <= level["mean_width"]["concentration"]
    # 16 calibration images cannot give 90% bounds (19 needed a side): said, never "0.0%" coverage
    assert coverage["levels"]["0.9"] == {"unsupported": coverage["levels"]["0.9"]["unsupported"], "needs_rows": 19}
    assert "90%: not reported: 90% intervals need at least 19 calibration rows" in printed


def _dataset(n: int):
    rng = np.random.default_rng(0)
    return SimpleNamespace(images=np.zeros((n, 8, 8, 3), np.uint8), targets=rng.uniform(0, 1, (n, 1)),
                           crop_boxes=np.zeros((n, 4)), groups=None)


def test_difficulty_from_val_and_quantiles_from_test_only():
    n = MIN_FIT + MIN_CALIBRATION + 10
    split = SimpleNamespace(val=np.arange(MIN_FIT), test=np.arange(MIN_FIT, MIN_FIT + MIN_CALIBRATION), train=[])
    parts = held_out_parts(_dataset(n), split, kind="scalar")
    found = (parts.fit.split, len(parts.fit), parts.cal.split, len(parts.cal))
    assert found == ("val", MIN_FIT, "test", MIN_CALIBRATION)
    assert "used for nothing else" in parts.note
    small = SimpleNamespace(val=np.arange(10), test=np.arange(10, 30), train=[])
    parts = held_out_parts(_dataset(n), small, kind="scalar")  # never pooled with val, which chose the epoch
    assert parts.fit is None and (parts.cal.split, len(parts.cal)) == ("test", 20)
    no_test = SimpleNamespace(val=np.arange(50), test=np.arange(0), train=np.arange(50, n))
    parts = held_out_parts(_dataset(n), no_test, kind="scalar")
    assert parts.cal is None and "no test split" in parts.none_reason


def test_export_without_intervals(assay_run, tmp_path):
    out = tmp_path / "plain"
    assert main(["export", str(assay_run), "--out", str(out), "--intervals", "none", "--no-speed"]) == 0
    assert read_card(out / "model.onnx").intervals == {}
    with pytest.raises(SystemExit):
        main(["export", str(assay_run), "--intervals", "magic"])


def test_coordinate_intervals_scale_with_each_frames_crop(model_factory):
    """Scores are fractions of the crop side, so one quantile serves every frame size."""
    from edgereg.core.predictor import Predictor
    from edgereg.export.int8.gate import EvalSet
    from edgereg.export.readings import ReadingCache
    from edgereg.export.uncertainty.conformal import ConformalParts, add_intervals
    from edgereg.preprocess import PreprocessConfig, crop_resize

    fields = dict(kind="coords", targets=("x", "y"), input_size=(16, 16), channels="gray", mean=(0.5,), std=(0.25,))
    model = model_factory(fn="centroid", **fields)
    rng = np.random.default_rng(0)
    frames, truth, boxes = [], [], []
    config = PreprocessConfig.from_card(read_card(model))
    for _ in range(200):
        frame = np.zeros((32, 32, 3), np.uint8)
        x, y = rng.integers(4, 28, 2)
        frame[y - 1:y + 2, x - 1:x + 2] = 255
        crop, box = crop_resize(frame, config)
        frames.append(crop)
        boxes.append((box.x0, box.y0, box.w, box.h))
        truth.append((x + rng.normal(0, 0.8), y + rng.normal(0, 0.8)))  # labels a little off: residuals
    evalset = EvalSet(frames=np.stack(frames), targets=np.array(truth), crop_boxes=np.array(boxes), split="test")
    parts = ConformalParts(None, evalset, np.zeros(0, np.int64), np.arange(len(evalset)), None, None, None, "test")
    stored = read_card(model)
    card, _ = add_intervals(stored, parts, ReadingCache().part_readings(model, parts, card=stored), model="fp32")
    predictor = Predictor(model, card=card, confidence=0.9)
    spot = np.zeros((32, 32, 3), np.uint8)
    spot[15:18, 15:18] = 255
    big = cv2.resize(spot, (64, 64), interpolation=cv2.INTER_NEAREST)  # the same scene at twice the pixels
    small_result, big_result = predictor.predict([spot]), predictor.predict([big])
    small_width = small_result.hi - small_result.lo
    np.testing.assert_allclose(big_result.hi - big_result.lo, 2 * small_width, rtol=1e-6)
    np.testing.assert_allclose(big_result.values, 2 * small_result.values + 0.5, atol=0.05)  # pixel centres
    assert np.all(small_width > 1.0) and np.all(small_width < 8.0)  # 90% of N(0, 0.8) noise: about +-1.3 px


def test_readings_are_made_once_per_model_images_and_tta(model_factory):
    """Two EvalSets of the same images share one reading; the intervals need no model file, only
    the readings (the export feeds them what the gate already read)."""
    from edgereg.export.int8.gate import EvalSet, evaluate
    from edgereg.export.readings import ReadingCache, images_key
    from edgereg.export.uncertainty.conformal import ConformalParts, add_intervals, reading_modes

    model = model_factory(fn="mean", kind="scalar", targets=("y",), input_size=(8, 8), channels="gray",
                          mean=(0.5,), std=(0.25,))
    card = read_card(model)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (60, 8, 8, 3), dtype=np.uint8)
    truth = frames.mean(axis=(1, 2, 3))[:, None] / 255.0 + rng.normal(0, 0.05, (60, 1))
    first = EvalSet(frames=frames, targets=truth, crop_boxes=None, split="test")
    again = EvalSet(frames=frames.copy(), targets=truth.copy(), crop_boxes=None, split="test")
    assert images_key(first) == images_key(again)
    assert images_key(first) != images_key(EvalSet(frames=frames, targets=truth, crop_boxes=None, split="val"))
    cache = ReadingCache()
    metrics = cache.metrics(model, first, card=card)
    assert metrics == evaluate(model, first, card=card)  # the gate's numbers, from the shared readings
    parts = ConformalParts(None, again, np.zeros(0, np.int64), np.arange(60), None, None, None, "test")
    readings = cache.part_readings(model, parts, card=card)
    assert list(readings) == reading_modes(card, parts) == ["none"]
    assert cache.reads == 1 and readings["none"].cal is cache.read(model, first, card=card)
    with_intervals, report = add_intervals(card, parts, readings, model="fp32")
    assert with_intervals.intervals["sets"][0]["n_calibration"] == 60 and report["split_choice"] == "test"
