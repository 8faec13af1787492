"""The int8 calibrators' time plan: subsample or skip what would not fit the --int8-budget."""

from __future__ import annotations

import json
from itertools import count

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization.calibrate import load_tensors_data

from edgereg.cli.main import main
from edgereg.export.int8.calib_budget import (
    CalibrationPlan,
    coarsen_histogram,
    entropy_search_work,
    merge_bounded,
    plan_calibrator,
)
from edgereg.export.int8.quantize import QuantizeOptions, Quantizer


def _entropy_plan(seconds_left, *, per_image=0.01, per_tensor_512=0.04, tensors=20, available=256, collected=16):
    def search(bins):
        return tensors * per_tensor_512 * entropy_search_work(bins) / entropy_search_work(512)

    return plan_calibrator("entropy", available=available, collected=collected, seconds_per_image=per_image,
                           threshold_seconds=search, seconds_left=seconds_left)


def test_a_calibrator_that_fits_runs_in_full():
    plan = _entropy_plan(100.0)
    assert (plan.images, plan.num_bins, plan.skipped, plan.note) == (256, 2048, False, "")
    search = 20 * 0.04 * entropy_search_work(2048) / entropy_search_work(512)
    assert plan.predicted_s == pytest.approx(240 * 0.01 + search)


def test_bins_are_cut_to_512_before_images_are():
    plan = _entropy_plan(4.0)  # 2.4 s to collect; the search takes 5.3 s at 2048 bins, 2.1 s at 1024, 0.8 s at 512
    assert (plan.images, plan.num_bins) == (256, 512)
    assert plan.note.startswith("subsampled to 512 histogram bins instead of 2048")
    assert _entropy_plan(None, per_image=1e6).images == 256, "no budget: the full plan"


def test_slow_collection_is_subsampled_to_the_images_that_fit():
    plan = _entropy_plan(2.0, per_image=0.02)  # 256 images would take 4.8 s + 0.8 s of search
    assert not plan.skipped and plan.num_bins == 512
    assert plan.images == 16 + int((2.0 - 0.8) // 0.02)  # 2048 and 1024 bins did not fit with every image
    assert plan.predicted_s <= 2.0
    assert f"subsampled to {plan.images} of 256 images" in plan.note and "2.0 s left" in plan.note


def test_a_slow_threshold_search_gets_fewer_than_512_bins_before_fewer_than_64_images():
    plan = _entropy_plan(1.2, per_image=0.005, per_tensor_512=0.05)  # search alone: 1.0 s at 512 bins
    assert plan.num_bins == 256 and plan.images >= 64
    assert plan.predicted_s <= 1.2
    assert "256 histogram bins instead of 2048" in plan.note


def test_a_calibrator_that_cannot_fit_is_skipped_with_the_reason():
    plan = _entropy_plan(0.5, per_tensor_512=1.0)  # 20 tensors: even 256 bins take ~6 s
    assert plan.skipped and plan.images == 0
    assert plan.note.startswith("skipped: predicted") and "0.5 s left of the budget" in plan.note
    def percentile(seconds_left):
        return plan_calibrator("percentile", available=256, collected=16, seconds_per_image=1.0,
                               threshold_seconds=None, seconds_left=seconds_left)

    assert percentile(10.0).images == 26, "the pilot's 16 images and 10 more at 1 s each"
    assert percentile(-0.5).skipped, "the pilot alone overran the budget"
    assert CalibrationPlan("minmax", 8, 8).to_dict()["skipped"] is False


def test_coarsened_histogram_keeps_counts_and_zero_in_the_middle():
    rng = np.random.default_rng(0)
    data = np.maximum(rng.standard_normal(10_000), 0).astype(np.float32)
    threshold = np.float32(np.abs(data).max())
    hist, edges = np.histogram(data, 20_002, range=(-threshold, threshold))
    coarse, coarse_edges, low, high, wider = coarsen_histogram(
        (hist, edges.astype(np.float32), data.min(), data.max(), threshold), 512)
    assert len(coarse) <= 512 and len(coarse) % 2 == 0 and len(coarse_edges) == len(coarse) + 1
    assert coarse.sum() == hist.sum()
    assert coarse_edges[0] == pytest.approx(-coarse_edges[-1]) and wider >= threshold
    assert wider - threshold < 2 * wider / len(coarse), "widened by less than one coarse bin"
    assert (low, high) == (data.min(), data.max())
    small = (hist[:100], edges[:101], 0.0, 1.0, threshold)
    assert coarsen_histogram(small, 512) is small


def test_bounded_merge_moves_old_counts_onto_a_coarser_grid_instead_of_millions_of_bins():
    rng = np.random.default_rng(0)
    quiet = (rng.standard_normal(1000) * 1e-4).astype(np.float32)
    threshold = np.float32(np.abs(quiet).max())
    hist, edges = np.histogram(quiet, 512, range=(-threshold, threshold))
    old = (hist, edges.astype(np.float32), quiet.min(), quiet.max(), np.array(threshold))
    loud = (rng.standard_normal(1000) * 10).astype(np.float32)
    loud_threshold = np.float32(np.abs(loud).max())
    merged, merged_edges, low, high, wider = merge_bounded(old, loud, loud.min(), loud.max(), loud_threshold,
                                                           max_bins=2048)
    assert len(merged) == 2048 and merged.sum() == 2000
    assert merged[1023] + merged[1024] >= 1000, "the quiet values land in the bins around zero"
    assert merged_edges[0] == pytest.approx(-loud_threshold) and wider == loud_threshold
    assert (low, high) == (min(quiet.min(), loud.min()), max(quiet.max(), loud.max()))
    assert merge_bounded(old, quiet * 1.5, quiet.min(), quiet.max(), threshold * 1.5, max_bins=2048) is None, \
        "a histogram that stays small is left to ONNX Runtime's own merge"


def _conv_relu_model(path):
    """image (N, 1, 8, 8) -> Conv 3x3 (2 channels) -> Relu -> Conv 1x1 -> value (N, 1, 8, 8)."""
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal((2, 1, 3, 3)).astype(np.float32), "w1"),
               numpy_helper.from_array(rng.standard_normal((1, 2, 1, 1)).astype(np.float32), "w2")]
    nodes = [helper.make_node("Conv", ["image", "w1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["value"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, 8, 8])],
                              [helper.make_tensor_value_info("value", TensorProto.FLOAT, ["N", 1, 8, 8])], weights)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _quiet_then_loud(n=96, loud=(40,)):
    """Images of amplitude 1e-4 except a few of amplitude 10: every histogram the collector starts
    on a quiet batch grows ~10^5-fold (millions of bins) when the loud image arrives."""
    images = np.random.default_rng(1).standard_normal((n, 1, 8, 8)).astype(np.float32) * 1e-4
    images[list(loud)] *= 1e5
    return images


def test_entropy_search_sees_at_most_the_planned_bins_however_the_histograms_grew(tmp_path):
    model = _conv_relu_model(tmp_path / "m.onnx")
    quantizer = Quantizer(model, _quiet_then_loud(), workdir=tmp_path,
                          options=QuantizeOptions(keep_first_float=False, keep_head_float=False))
    plan = quantizer.calibrate("entropy")  # unbounded by time, bounded by bins
    assert (plan.images, plan.num_bins, plan.skipped) == (96, 2048, False)
    ranges = load_tensors_data(quantizer.ranges("entropy"))
    assert len(ranges.keys()) >= 3
    for data in ranges.values():
        assert len(data.hist) <= 2048
        low, high = data.range_value
        assert np.isfinite(low) and np.isfinite(high) and low <= high


def test_quantizer_subsamples_or_skips_by_its_clock(tmp_path):
    """A fake clock that moves 1 s per reading: the pilot batch 'takes' 1 s (1/16 s an image)."""
    model = _conv_relu_model(tmp_path / "m.onnx")
    images = np.random.default_rng(0).standard_normal((96, 1, 8, 8)).astype(np.float32)
    options = QuantizeOptions(keep_first_float=False, keep_head_float=False)

    def plan(method, seconds, folder):
        (tmp_path / folder).mkdir()
        quantizer = Quantizer(model, images, workdir=tmp_path / folder, options=options)
        ticks = count()
        return quantizer.calibrate(method, seconds=seconds, clock=lambda: float(next(ticks)))

    full = plan("percentile", 1000.0, "full")
    assert (full.images, full.skipped, full.note) == (96, False, "")
    cut = plan("percentile", 4.0, "cut")  # 80 more images would 'take' 5 s
    assert not cut.skipped and 16 <= cut.images < 96 and "subsampled" in cut.note
    skipped = plan("entropy", 0.5, "skipped")
    assert skipped.skipped and skipped.note.startswith("skipped")
    none_left = plan("entropy", 0.0, "none_left")
    assert none_left.skipped and "no time left" in none_left.note


def test_a_histogram_calibrator_that_fails_on_the_activations_is_skipped_not_fatal(tmp_path):
    # value = 1000 + 1e-3 * image: a range of ~100 float32 steps, which numpy cannot cut into 2048 bins
    nodes = [helper.make_node("Mul", ["image", "tiny"], ["scaled"]),
             helper.make_node("Add", ["scaled", "big"], ["value"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, 8, 8])],
                              [helper.make_tensor_value_info("value", TensorProto.FLOAT, ["N", 1, 8, 8])],
                              [numpy_helper.from_array(np.array(1e-3, np.float32), "tiny"),
                               numpy_helper.from_array(np.array(1000.0, np.float32), "big")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "m.onnx"))
    images = np.random.default_rng(0).standard_normal((32, 1, 8, 8)).astype(np.float32)
    quantizer = Quantizer(tmp_path / "m.onnx", images, workdir=tmp_path)
    plan = quantizer.calibrate("percentile")
    assert plan.skipped and "percentile calibrator failed" in plan.note
    assert not quantizer.calibrate("minmax").skipped


def test_export_with_no_budget_left_runs_minmax_only_and_says_why(assay_run, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["export", str(assay_run), "--out", str(out), "--int8", "--int8-budget", "0", "--no-speed",
                 "--intervals", "none"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "calibration entropy: skipped" in printed and "calibration percentile: skipped" in printed
    report = json.loads((out / "export_report.json").read_text())
    int8 = report["models"]["int8"]
    assert report["gate"]["passed"] and int8["written"] and int8["method"] == "minmax"
    assert list(int8["methods_tried"]) == ["minmax"]
    plans = int8["calibration"]["plans"]
    assert plans["minmax"]["skipped"] is False and plans["minmax"]["images"] == int8["calibration"]["images"]
    assert plans["entropy"]["skipped"] and plans["percentile"]["skipped"]
    assert int8["calibration"]["budget_s"] == 0


def test_int8_budget_must_be_a_number_of_seconds(assay_run, tmp_path, capsys):
    assert main(["export", str(assay_run), "--out", str(tmp_path / "o"), "--int8", "--int8-budget", "-1"]) == 2
    assert "--int8-budget must be" in capsys.readouterr().err


def test_the_cli_default_budget_is_the_library_default():
    from edgereg.cli.export import CALIBRATION_BUDGET_S as cli_default
    from edgereg.export.int8.search import CALIBRATION_BUDGET_S

    assert cli_default == CALIBRATION_BUDGET_S
