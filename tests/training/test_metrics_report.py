"""Metrics in physical units, baselines, collapse / memorisation warnings and the report plots."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgereg.data.metrics import circular_difference, compute_metrics, prediction_spread, uv_to_source_pixels
from edgereg.errors import ShapeError
from edgereg.training.reporting.report import (
    baseline_predictions,
    collapse_warnings,
    evaluate_split,
    format_baselines,
    format_table,
    memorisation_warning,
    plot_report,
    thumbnail_features,
)


def test_scalar_metrics_match_their_definitions():
    rng = np.random.default_rng(0)
    truth = rng.uniform(80, 350, (50, 1))
    pred = truth + rng.normal(0, 5, (50, 1))
    m = compute_metrics("scalar", truth, pred, ["concentration"])
    err = (pred - truth)[:, 0]
    t = m["targets"]["concentration"]
    assert m["rmse"] == pytest.approx(np.sqrt(np.mean(err ** 2)))
    assert t["mae"] == pytest.approx(np.mean(np.abs(err)))
    assert t["max_error"] == pytest.approx(np.abs(err).max())
    assert t["bias"] == pytest.approx(err.mean())
    assert t["r2"] == pytest.approx(1 - np.sum(err ** 2) / np.sum((truth - truth.mean()) ** 2))
    json.dumps(m, allow_nan=False)  # plain JSON


def test_r2_of_a_constant_target_is_undefined_not_nan():
    m = compute_metrics("vector", np.ones((4, 2)), np.zeros((4, 2)), ["a", "b"])
    assert m["targets"]["a"]["r2"] is None
    json.dumps(m, allow_nan=False)


def test_angle_errors_wrap_around_the_circle():
    truth = np.array([[359.0], [10.0], [180.0]])
    pred = np.array([[1.0], [350.0], [180.0]])
    m = compute_metrics("angle", truth, pred, ["angle"])
    np.testing.assert_allclose(circular_difference(pred, truth)[:, 0], [2.0, -20.0, 0.0])
    assert m["mae"] == pytest.approx(22.0 / 3)
    assert m["max_error"] == pytest.approx(20.0)
    assert m["targets"]["angle"]["r2"] is None


def test_coords_rmse_is_the_euclidean_pixel_error():
    truth = np.array([[10.0, 20.0], [30.0, 5.0]])
    pred = truth + np.array([[3.0, 4.0], [0.0, 0.0]])  # 5 px off, then exact
    m = compute_metrics("coords", truth, pred, ["x", "y"])
    assert m["rmse"] == pytest.approx(np.sqrt((25 + 0) / 2))
    assert m["mae"] == pytest.approx(2.5)  # mean point distance
    assert m["max_error"] == pytest.approx(5.0)
    assert m["targets"]["x"]["rmse"] == pytest.approx(np.sqrt(9 / 2))


def test_uv_to_source_pixels_follows_the_crop_box():
    boxes = np.array([[0.0, 0.0, 64.0, 64.0], [100.0, 50.0, 200.0, 100.0]])
    uv = np.array([[0.5 / 64, 0.5 / 64], [0.5, 0.5]])
    np.testing.assert_allclose(uv_to_source_pixels(uv, boxes), [[0.0, 0.0], [199.5, 99.5]])
    with pytest.raises(ShapeError):
        uv_to_source_pixels(uv, boxes[:1])


def test_distribution_per_bin_mae_and_per_group_errors():
    truth = np.array([[0.2, 0.8], [0.5, 0.5], [0.9, 0.1]])
    pred = np.array([[0.3, 0.7], [0.5, 0.5], [0.6, 0.4]])
    m = compute_metrics("distribution", truth, pred, ["bin0", "bin1"], groups=np.array(["a", "a", "b"]))
    assert m["targets"]["bin0"]["mae"] == pytest.approx((0.1 + 0 + 0.3) / 3)
    assert m["rmse"] == pytest.approx(np.sqrt(np.mean((pred - truth) ** 2)))
    assert m["groups"]["b"] == {"n": 1, "rmse": pytest.approx(0.3), "mae": pytest.approx(0.3)}
    assert m["groups"]["a"]["n"] == 2


def test_metrics_reject_mismatched_shapes():
    with pytest.raises(ShapeError, match="expected y_true and y_pred"):
        compute_metrics("scalar", np.zeros((3, 1)), np.zeros((4, 1)), ["c"])


def test_baselines_mean_median_and_nearest_training_group_by_image():
    y_train = np.array([[1.0], [2.0], [9.0], [10.0]])
    groups = np.array(["low", "low", "high", "high"])
    dark, bright = np.full((2, 8, 8, 3), 20, np.uint8), np.full((2, 8, 8, 3), 230, np.uint8)
    train_features = thumbnail_features(np.concatenate([dark, bright]))
    eval_features = thumbnail_features(np.stack([np.full((8, 8, 3), 200, np.uint8), np.full((8, 8, 3), 40, np.uint8)]))
    baselines = baseline_predictions("scalar", y_train, 2, train_groups=groups, train_features=train_features,
                                     eval_features=eval_features)
    np.testing.assert_allclose(baselines["zero"], 0.0)
    np.testing.assert_allclose(baselines["train_mean"], 5.5)
    np.testing.assert_allclose(baselines["train_median"], 5.5)
    np.testing.assert_allclose(baselines["nearest_train_group"], [[9.5], [1.5]])  # bright -> high, dark -> low
    assert "nearest_train_group" not in baseline_predictions("scalar", y_train, 2)
    angles = baseline_predictions("angle", np.array([[350.0], [10.0], [20.0]]), 1)
    assert circular_difference(angles["train_mean"], 6.67)[0, 0] == pytest.approx(0.0, abs=0.1)


def _evaluation(truth, pred, y_train, name="test"):
    baselines = baseline_predictions("scalar", y_train, len(truth))
    return evaluate_split(name, "scalar", ["c"], truth, pred, baselines)


def test_collapse_is_flagged_for_a_model_that_predicts_the_mean():
    rng = np.random.default_rng(1)
    truth = rng.uniform(80, 350, (40, 1))
    collapsed = _evaluation(truth, truth.mean() + rng.normal(0, 2, (40, 1)), truth)
    good = _evaluation(truth, truth + rng.normal(0, 3, (40, 1)), truth)
    warnings = collapse_warnings("scalar", ["c"], collapsed)
    assert any("MODEL COLLAPSE" in w for w in warnings)
    assert any("NO BETTER THAN THE MEAN" in w for w in warnings)
    assert collapse_warnings("scalar", ["c"], good) == []
    assert prediction_spread("scalar", truth, good.y_pred)[0] == pytest.approx(1.0, abs=0.1)
    assert "model" in format_baselines(good) and "better" in format_baselines(good)
    assert "WORSE" in format_baselines(_evaluation(truth, truth + 500.0, truth))


def test_memorisation_warning_names_the_ratio():
    rng = np.random.default_rng(2)
    truth = rng.uniform(0, 1, (30, 1))
    held_out = _evaluation(truth, truth + rng.normal(0, 0.3, (30, 1)), truth)
    seen = _evaluation(truth, truth + rng.normal(0, 0.03, (30, 1)), truth, name="seen")
    message = memorisation_warning(held_out, seen)
    ratio = held_out.metrics["rmse"] / seen.metrics["rmse"]
    assert message is not None and f"{ratio:.1f} x the seen-group error" in message
    assert memorisation_warning(seen, held_out) is None


def test_report_plot_and_table(tmp_path):
    rng = np.random.default_rng(3)
    truth = rng.uniform(0, 1, (20, 3))
    truth /= truth.sum(axis=1, keepdims=True)
    pred = np.abs(truth + rng.normal(0, 0.02, truth.shape))
    names = ["bin0", "bin1", "bin2"]
    evaluation = evaluate_split("val", "distribution", names, truth, pred,
                                baseline_predictions("distribution", truth, len(truth)))
    history = [{"epoch": e, "train_loss": 1.0 / e, "val_rmse": 0.1 / e} for e in range(1, 4)]
    path = plot_report(tmp_path / "report.png", kind="distribution", names=names, units=("", "", ""),
                       history=history, evaluation=evaluation)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    table = format_table(names, ("", "", ""), [evaluation])
    assert "bin2" in table and "(overall)" in table


def test_baselines_come_out_in_one_fixed_order_whatever_order_they_were_collected_in():
    """The simple baselines first in BASELINE_ORDER, then the others as given: metrics.json and the
    printed line never depend on a set's order (k-fold merged the folds' names through a set)."""
    from edgereg.training.fitting.fit import merge_scored
    from edgereg.training.reporting.report import BASELINE_ORDER, evaluate_split, format_baselines

    true = np.array([[1.0], [2.0], [3.0]])
    names = ("nearest_train_group", "readout pixels", "zero", "train_median", "train_mean")
    baselines = {name: true + k for k, name in enumerate(names)}
    evaluation = evaluate_split("val", "scalar", ("y",), true, true + 0.5, baselines)
    expected = [*BASELINE_ORDER, "readout pixels"]
    assert list(evaluation.baselines) == expected
    assert list(evaluation.to_dict(("y",), "scalar")["baselines"]) == expected
    line = format_baselines(evaluation)
    assert line.index("zero") < line.index("train mean") < line.index("nearest training group") < line.index("readout")
    fold = (true, true, {name: true for name in reversed(names)}, None)
    other = (true, true, {name: true for name in names}, None)
    assert list(merge_scored([fold, other])[2]) == expected
