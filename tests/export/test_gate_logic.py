"""The int8 gate without training anything: its arithmetic on metric dicts, the user's units, and a
whole quantize-score-decide round on a tiny hand-built ONNX model (seconds, not a training run)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from edgereg.core.card import ModelCard, read_card
from edgereg.errors import EdgeregError
from edgereg.preprocess import CropBox

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from edgereg.export.int8.gate import (  # noqa: E402  (needs onnx)
    EvalSet,
    check_gate,
    eval_set,
    evaluate,
    predict,
    quantize_with_gate,
    rmse_changes,
    to_user_units,
    validate_max_drop,
)


def metrics(rmse: float, **targets: float) -> dict:
    return {"split": "val", "n": 12, "rmse": rmse,
            "targets": {name: {"rmse": value} for name, value in targets.items()}}


def test_gate_passes_up_to_exactly_max_drop_on_every_rmse():
    fp32 = metrics(2.0, a=2.0, b=1.0)
    at_limit = check_gate(fp32, metrics(2.2, a=2.2, b=1.1), max_drop=0.10)
    assert at_limit.passed and at_limit.worst_drop == pytest.approx(0.10)
    assert not check_gate(fp32, metrics(2.2, a=2.2, b=1.1001), max_drop=0.10).passed
    better = check_gate(fp32, metrics(1.5, a=1.5, b=0.5), max_drop=0.0)
    assert better.passed and better.worst == "overall" and better.worst_drop == pytest.approx(-0.25)
    assert check_gate(fp32, metrics(2.0, a=2.0, b=1.0), max_drop=0).passed  # identical: no drop at all


def test_gate_result_names_the_worst_rmse_and_reports_the_split():
    verdict = check_gate(metrics(2.0, a=2.0, b=1.0), metrics(2.1, a=2.3, b=1.0), max_drop=0.2)
    assert verdict.passed and verdict.worst == "a" and verdict.worst_drop == pytest.approx(0.15)
    assert verdict.to_dict() == {"passed": True, "max_drop": 0.2, "split": "val", "n_images": 12, "fp32_rmse": 2.0,
                                 "int8_rmse": 2.1, "worst": "a", "worst_drop": pytest.approx(0.15)}
    assert verdict.summary() == ("int8 gate passed on val (12 images): RMSE 2.1 vs fp32 2; worst a +15.0% "
                                 "(allowed +20.0%)")
    failed = check_gate(metrics(2.0, a=2.0), metrics(3.0, a=3.0), max_drop=0.1)
    assert failed.summary().startswith("int8 gate FAILED on val") and failed.worst == "overall"  # first of equals
    assert isinstance(failed.passed, bool) and isinstance(failed.n_images, int)


def test_an_exact_fp32_target_fails_unless_int8_is_exact_too():
    exact = metrics(1.0, a=1.0, b=0.0)
    verdict = check_gate(exact, metrics(1.0, a=1.0, b=1e-9), max_drop=10.0)
    assert not verdict.passed and verdict.worst == "b" and math.isinf(verdict.worst_drop)
    assert check_gate(exact, metrics(1.0, a=1.0, b=0.0), max_drop=0.0).passed
    assert rmse_changes(exact, metrics(1.2, a=0.9, b=0.5)) == {"overall": pytest.approx(0.2), "a": pytest.approx(-0.1),
                                                               "b": None}


@pytest.mark.parametrize("bad", [-0.1, -1e-9, math.inf, math.nan, "0.1", None])
def test_max_drop_must_be_a_finite_number_from_zero(bad):
    with pytest.raises(EdgeregError) as info:
        validate_max_drop(bad)
    assert str(info.value) == ("--max-drop must be a number >= 0 (0.10 allows int8 RMSE 10% above fp32), "
                               f"got {bad}")
    with pytest.raises(EdgeregError):
        check_gate(metrics(1.0, a=1.0), metrics(1.0, a=1.0), max_drop=bad)


@pytest.mark.parametrize("good", [0, 0.0, 0.1, 5])
def test_max_drop_accepts_zero_and_positive_numbers(good):
    validate_max_drop(good)
    same = check_gate(metrics(1.0, a=1.0), metrics(1.0, a=1.0), max_drop=good)  # no drop passes at any bound
    assert same.passed and same.max_drop == float(good)


def test_user_units_are_source_pixels_for_coords_and_float64_for_the_rest():
    values = np.array([[0.25, 0.5], [1.0, 0.0]], dtype=np.float32)
    scalar = to_user_units("vector", values, None)
    assert scalar.dtype == np.float64 and np.array_equal(scalar, values)
    boxes = np.array([[10.0, 20.0, 40.0, 30.0], [0.0, 0.0, 8.0, 8.0]])
    pixels = to_user_units("coords", values, boxes)
    expected = np.stack([CropBox(*box).to_source(uv) for box, uv in zip(boxes, values)])
    np.testing.assert_allclose(pixels, expected)
    np.testing.assert_allclose(pixels, [[19.5, 34.5], [7.5, -0.5]])
    with pytest.raises(EdgeregError) as info:
        to_user_units("coords", values, None)
    assert str(info.value) == "coords need each image's crop box to be reported in source pixels; got none"


def test_eval_set_takes_the_rows_in_user_units():
    dataset = SimpleNamespace(images=np.arange(5)[:, None, None, None] * np.ones((5, 2, 2, 3), np.uint8),
                              targets=np.array([[0.0, 0.0], [0.5, 0.5], [1.0, 1.0], [0.25, 0.75], [0.1, 0.2]]),
                              crop_boxes=np.array([[0, 0, 4, 4], [0, 0, 8, 8], [2, 2, 4, 4], [1, 1, 2, 2],
                                                   [0, 0, 1, 1]], dtype=np.float32),
                              groups=np.array(["g0", "g1", "g2", "g3", "g4"]))
    coords = eval_set(dataset, [3, 1], kind="coords", split="test")
    assert coords.split == "test" and len(coords) == 2
    assert coords.frames[:, 0, 0, 0].tolist() == [3, 1] and coords.groups.tolist() == ["g3", "g1"]
    assert coords.crop_boxes.dtype == np.float64 and coords.crop_boxes.tolist() == [[1, 1, 2, 2], [0, 0, 8, 8]]
    np.testing.assert_allclose(coords.targets, [[1.0, 2.0], [3.5, 3.5]])  # x0 + u w - 0.5
    vector = eval_set(SimpleNamespace(**{**vars(dataset), "groups": None}), np.array([4]), kind="vector", split="val")
    assert vector.crop_boxes is None and vector.groups is None
    np.testing.assert_array_equal(vector.targets, [[0.1, 0.2]])


# --------------------------------------------------------------------------------------------------
# a whole gate round on a tiny model
# --------------------------------------------------------------------------------------------------

SIZE = 12


def tiny_model(path, card: ModelCard):
    """Conv-ReLU-Conv-ReLU-GlobalAveragePool-Flatten-Gemm: two outputs that depend on the colours."""
    from onnx import TensorProto, helper, numpy_helper

    from edgereg.export.card_io import embed_card

    rng = np.random.default_rng(0)
    arrays = {"w1": rng.normal(size=(8, 3, 3, 3)) * 0.4, "b1": rng.normal(size=8) * 0.1,
              "w2": rng.normal(size=(8, 8, 3, 3)) * 0.2, "b2": rng.normal(size=8) * 0.1,
              "w3": rng.normal(size=(2, 8)), "b3": np.array([5.0, -3.0])}
    nodes = [helper.make_node("Conv", ["image", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("GlobalAveragePool", ["r2"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["flat"]),
             helper.make_node("Gemm", ["flat", "w3", "b3"], ["value"], transB=1, name="head")]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("image", TensorProto.FLOAT,
                                                                            ["N", 3, SIZE, SIZE])],
                              [helper.make_tensor_value_info("value", TensorProto.FLOAT, ["N", 2])],
                              [numpy_helper.from_array(a.astype(np.float32), name) for name, a in arrays.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    embed_card(model, card)
    onnx.save(model, str(path))
    return path


@pytest.fixture
def tiny(tmp_path):
    """(card, fp32 path, frames (N, 12, 12, 3) uint8, its fp32 outputs (N, 2), calibration (N, 3, 12, 12))."""
    import onnxruntime as ort

    from edgereg.preprocess import PreprocessConfig, preprocess_batch

    card = ModelCard(kind="vector", targets=("a", "b"), input_size=(SIZE, SIZE), crop="none", units=("mm", "mm"))
    path = tiny_model(tmp_path / "model.onnx", card)
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (24, SIZE, SIZE, 3), dtype=np.uint8)
    calibration = preprocess_batch(frames, PreprocessConfig.from_card(card))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = session.run(None, {"image": calibration})[0].astype(np.float64)
    return card, path, frames, outputs, calibration


def test_predict_and_evaluate_score_like_the_runtime(tiny):
    card, path, frames, outputs, _ = tiny
    evalset = EvalSet(frames=frames, targets=outputs + 1.0, crop_boxes=None, split="val")
    np.testing.assert_allclose(predict(path, evalset, card=card), outputs, rtol=1e-5, atol=1e-5)
    scored = evaluate(path, evalset, card=card)
    assert scored["split"] == "val" and scored["rmse"] == pytest.approx(1.0, abs=1e-4)
    assert set(scored["targets"]) == {"a", "b"}


def test_gate_round_writes_the_most_accurate_int8_model_with_its_card(tiny, tmp_path):
    card, path, frames, outputs, calibration = tiny
    noise = np.random.default_rng(2).normal(scale=0.5, size=outputs.shape)
    evalset = EvalSet(frames=frames[:16], targets=outputs[:16] + noise[:16], crop_boxes=None, split="val")
    holdout = EvalSet(frames=frames[16:], targets=outputs[16:] + noise[16:], crop_boxes=None, split="test")
    out = tmp_path / "out" / "model.int8.onnx"
    out.parent.mkdir()
    result = quantize_with_gate(path, out, card=card, calibration=calibration, evalset=evalset,
                                methods=("minmax", "percentile"), max_drop=0.5, holdout=holdout,
                                calibration_info={"source": "test frames"}, measure_speed=False)
    assert result.gate.passed and result.path == out and out.is_file()
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.int8.onnx"], "no temporary files left"
    assert set(result.candidates) == {"minmax", "percentile"}
    assert result.method == min(result.candidates, key=result.candidates.get)
    assert result.candidates[result.method] == pytest.approx(result.int8_metrics["rmse"])
    assert result.fp32_metrics["split"] == "val" and result.gate.n_images == 16
    assert result.holdout["fp32"]["split"] == "test" and result.holdout["int8"]["split"] == "test"
    assert result.float_nodes and "conv1" in result.float_nodes and "head" in result.float_nodes
    written = read_card(out)
    assert written == result.card and written.targets == card.targets and written.units == card.units
    q = written.quantization
    assert q["format"] == "QDQ" and q["weights"] == "int8, symmetric, per output channel"
    assert result.activations == "int8"  # without timing, the search keeps int8 activations
    assert q["activations"] == "int8, asymmetric, per tensor" and q["method"] == result.method
    assert q["methods_tried"] == result.candidates
    calibration = dict(q["calibration"])
    plans = calibration.pop("plans")  # each calibrator's time plan (tests/export/test_int8_budget.py)
    assert calibration == {"images": 24, "source": "test frames", "budget_s": 100.0}
    assert set(plans) == {"minmax", "percentile"}
    assert q["float_nodes"] == list(result.float_nodes) and q["speed"] == {"measured": False}
    assert q["int8_layers"] == sum(1 for layer in result.layers if not layer.float) > 0
    assert q["float_layers"] == [{"name": layer.name, "op_type": layer.op_type, "why": layer.why}
                                 for layer in result.layers if layer.float]
    assert q["gate"]["passed"] is True and q["gate"]["split"] == "val" and q["gate"]["max_drop"] == 0.5
    assert q["gate"]["fp32"]["rmse"] == pytest.approx(result.fp32_metrics["rmse"])
    assert set(q["gate"]["int8"]["targets"]) == {"a", "b"} and "max_error" in q["gate"]["int8"]["targets"]["a"]
    assert q["rmse_change"]["overall"] == pytest.approx(result.int8_metrics["rmse"] / result.fp32_metrics["rmse"] - 1)
    assert set(q["rmse_change"]) == {"overall", "a", "b"}


def test_failed_gate_writes_nothing_and_says_why(tiny, tmp_path):
    card, path, frames, outputs, calibration = tiny
    evalset = EvalSet(frames=frames, targets=outputs, crop_boxes=None, split="val")  # fp32 is (nearly) exact
    out = tmp_path / "out" / "model.int8.onnx"
    out.parent.mkdir()
    result = quantize_with_gate(path, out, card=card, calibration=calibration[:4], evalset=evalset,
                                methods=["minmax"], max_drop=0.0, per_channel=False, max_float_layers=0,
                                measure_speed=False)
    assert not result.gate.passed and result.path is None and result.holdout is None
    assert list(out.parent.iterdir()) == [], "nothing written, no temporary files left"
    assert result.card.quantization["weights"] == "int8, symmetric, per tensor"
    assert result.card.quantization["calibration"]["images"] == 4
    assert result.card.quantization["gate"]["passed"] is False
    with pytest.raises(EdgeregError, match="max-drop"):
        quantize_with_gate(path, out, card=card, calibration=calibration, evalset=evalset, max_drop=-1)
    with pytest.raises(EdgeregError) as info:
        quantize_with_gate(path, out, card=card, calibration=calibration, evalset=evalset, max_float_layers=-1)
    assert str(info.value) == "--max-float-layers must be >= 0, got -1"
