"""int8 export: QDQ with per-channel int8 weights and a float head, and the accuracy gate."""

from __future__ import annotations

import json

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgereg.cli.main import main
from edgereg.core.card import read_card
from edgereg.errors import EdgeregError
from edgereg.export.int8.gate import check_gate
from edgereg.export.int8.quantize import ArrayCalibrationReader, QuantizeOptions, head_nodes, quantize_int8


def _weight_sources(model):
    """{node name: how its weight input is fed}: "dq" (DequantizeLinear) or "float" (an initializer)."""
    initializers = {init.name for init in model.graph.initializer}
    dq_outputs = {node.output[0] for node in model.graph.node if node.op_type == "DequantizeLinear"}
    sources = {}
    for node in model.graph.node:
        if node.op_type in ("Conv", "Gemm", "MatMul") and len(node.input) > 1:
            weight = node.input[1]
            sources[node.name] = "dq" if weight in dq_outputs else "float" if weight in initializers else "other"
    return sources


def _run_data(run_dir):
    from edgereg.training.run import load_run, load_run_dataset

    _, info = load_run(run_dir)
    return info, load_run_dataset(info)


def test_int8_model_is_qdq_with_per_channel_weights_and_a_float_head(exported, assay_run):
    model = onnx.load(str(exported / "model.int8.onnx"))
    onnx.checker.check_model(model)
    initializers = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    per_channel = [node for node in model.graph.node if node.op_type == "DequantizeLinear"
                   and initializers.get(node.input[0], np.zeros(0)).dtype == np.int8
                   and initializers[node.input[1]].size > 1]
    assert per_channel, "expected int8 weights with one scale per output channel"
    card = read_card(exported / "model.int8.onnx")
    float_nodes = set(card.quantization["float_nodes"])
    assert float_nodes, "the head must stay in float"
    sources = _weight_sources(model)
    assert {name for name, source in sources.items() if source == "float"} <= float_nodes
    assert all(sources[name] == "dq" for name in sources if name not in float_nodes), sources
    assert any(sources[name] == "dq" for name in sources), "the body's convolutions must be int8"

    info, _ = _run_data(assay_run)
    calibration = card.quantization["calibration"]
    assert calibration["images"] == min(256, len(info.split.train))
    assert calibration["source"] == "training split" and len(calibration["fingerprint"]) == 16
    assert card.quantization["method"] in ("minmax", "entropy", "percentile")
    assert set(card.quantization["methods_tried"]) == {"minmax", "entropy", "percentile"}
    plans = calibration["plans"]  # the default --int8-budget fits every calibrator of a tiny model in full
    assert set(plans) == {"minmax", "entropy", "percentile"} and calibration["budget_s"] == 100
    assert all(not p["skipped"] and p["images"] == calibration["images"] and p["note"] == "" for p in plans.values())
    assert plans["entropy"]["num_bins"] == 2048 and plans["entropy"]["seconds"] is not None
    assert card.quantization["gate"]["passed"] is True


def test_report_accuracy_matches_an_independent_evaluation(exported, assay_run):
    from edgereg.core.predictor import Predictor

    info, dataset = _run_data(assay_run)
    frames, truth = dataset.images[info.split.val], dataset.targets[info.split.val]
    report = json.loads((exported / "export_report.json").read_text())
    rmse = {}
    for name, file in (("fp32", "model.onnx"), ("int8", "model.int8.onnx")):
        # the gate's own settings (edgereg.export.int8.gate.predict: batch 64, CPU), so the int8 numbers are
        # the same computation on the same machine and may be held to 1e-9
        values = Predictor(exported / file, providers="cpu", tta="none", batch_size=64).predict(frames).values
        rmse[name] = float(np.sqrt(((values - truth) ** 2).mean()))
        assert report["accuracy"][name]["rmse"] == pytest.approx(rmse[name], rel=1e-9)
    assert rmse["int8"] <= 1.10 * rmse["fp32"]
    spread = float(truth.std())
    assert rmse["fp32"] < 0.5 * spread, "the fixture's model must have learned something for the gate tests"


def test_gate_fails_on_black_calibration_images_and_writes_no_int8(assay_run, tmp_path, capsys):
    # Black calibration images give the quantized input a range of one colour; --quantize-first makes
    # the first layer's input int8, so every real image collapses onto that range.
    calib = tmp_path / "black"
    calib.mkdir()
    for i in range(8):
        cv2.imwrite(str(calib / f"{i}.png"), np.zeros((48, 48, 3), np.uint8))
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.int8.onnx").write_bytes(b"stale int8 model of an earlier export")
    code = main(["export", str(assay_run), "--out", str(out), "--int8", "--calib-dir", str(calib), "--no-speed",
                 "--quantize-first", "--max-float-layers", "0"])
    assert code == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "int8 gate FAILED" in err and "leaving out --quantize-first" in err
    assert (out / "model.onnx").is_file()
    assert not (out / "model.int8.onnx").exists()
    report = json.loads((out / "export_report.json").read_text())
    assert report["status"] == "failed" and report["gate"]["passed"] is False
    assert report["models"]["int8"]["written"] is False
    assert report["models"]["int8"]["calibration"]["files"] == 8
    assert sorted(p.name for p in out.iterdir()) == ["export_report.json", "model.onnx"], "no leftovers"


def test_accuracy_control_keeps_the_most_damaging_layer_float_until_the_gate_passes(assay_run, tmp_path):
    # The same broken calibration as above, but with accuracy control on (the default): the search
    # must find that the quantized input does the damage and keep the first layer float.
    calib = tmp_path / "black"
    calib.mkdir()
    for i in range(8):
        cv2.imwrite(str(calib / f"{i}.png"), np.zeros((48, 48, 3), np.uint8))
    out = tmp_path / "out"
    code = main(["export", str(assay_run), "--out", str(out), "--int8", "--calib-dir", str(calib), "--no-speed",
                 "--quantize-first"])
    assert code == 0
    report = json.loads((out / "export_report.json").read_text())
    layers = report["models"]["int8"]["search"]["layers"]
    assert len(layers) >= 3 and all(layer["drop_if_float"] is not None for layer in layers)
    most_damaging = min(layers, key=lambda layer: layer["drop_if_float"])
    assert most_damaging["float"] and most_damaging["why"] == "accuracy"
    assert most_damaging["name"].endswith("Conv") and most_damaging is layers[0], "the first layer reads the input"
    assert report["gate"]["passed"] and report["gate"]["worst_drop"] <= 0.10
    card = read_card(out / "model.int8.onnx")
    assert card.quantization["float_layers"] == [{"name": most_damaging["name"], "op_type": "Conv",
                                                  "why": "accuracy"}]
    assert all(layer["sqnr_db"] is not None for layer in layers if not layer["float"])
    model = onnx.load(str(out / "model.int8.onnx"))
    assert _weight_sources(model)[most_damaging["name"]] == "float"


def test_gate_checks_each_target_not_only_the_overall_rmse():
    fp32 = {"split": "val", "n": 10, "rmse": 1.0, "targets": {"big": {"rmse": 1.0}, "small": {"rmse": 0.01}}}
    int8 = {"rmse": 1.04, "targets": {"big": {"rmse": 1.04}, "small": {"rmse": 0.02}}}
    verdict = check_gate(fp32, int8, max_drop=0.10)
    assert not verdict.passed and verdict.worst == "small" and verdict.worst_drop == pytest.approx(1.0)
    assert check_gate(fp32, int8, max_drop=1.5).passed
    close = {"rmse": 1.05, "targets": {"big": {"rmse": 1.05}, "small": {"rmse": 0.0105}}}
    assert check_gate(fp32, close, max_drop=0.10).passed
    assert not check_gate(fp32, close, max_drop=0.04).passed
    with pytest.raises(EdgeregError, match="max-drop"):
        check_gate(fp32, int8, max_drop=-0.1)


def test_calibration_reader_feeds_every_image_once_in_batches():
    images = np.arange(10 * 1 * 2 * 2, dtype=np.float32).reshape(10, 1, 2, 2)  # (N, C, H, W)
    reader = ArrayCalibrationReader(images, batch_size=4)
    assert len(reader) == 3
    fed = []
    for batch in range(len(reader)):
        reader.set_range(batch, batch + 1)
        while (item := reader.get_next()) is not None:
            fed.append(item["image"])
    assert [len(b) for b in fed] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate(fed), images)


def test_head_nodes_of_a_soft_argmax_head_start_at_the_heatmap_conv():
    grid = np.random.default_rng(0).random((16, 2), dtype=np.float32)
    inits = [numpy_helper.from_array(a, name) for name, a in [
        ("w_body", np.ones((4, 3, 3, 3), np.float32)), ("w_heat", np.ones((1, 4, 1, 1), np.float32)),
        ("flat", np.array([0, 1, 16], np.int64)), ("grid", grid), ("out_shape", np.array([0, 2], np.int64))]]
    nodes = [
        helper.make_node("Conv", ["image", "w_body"], ["body"], name="body_conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["body"], ["act"], name="relu"),
        helper.make_node("Conv", ["act", "w_heat"], ["heat"], name="heatmap_conv"),
        helper.make_node("Reshape", ["heat", "flat"], ["logits"], name="flatten"),  # (N,1,4,4) -> (N,1,16)
        helper.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=2),
        helper.make_node("MatMul", ["probs", "grid"], ["uv"], name="expectation"),
        helper.make_node("Reshape", ["uv", "out_shape"], ["value"], name="to_value"),  # (N,1,2) -> (N,2)
    ]
    graph = helper.make_graph(nodes, "soft_argmax", [helper.make_tensor_value_info("image", TensorProto.FLOAT,
                                                                                   ["N", 3, 4, 4])],
                              [helper.make_tensor_value_info("value", TensorProto.FLOAT, ["N", 2])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    assert head_nodes(model) == ("heatmap_conv", "flatten", "softmax", "expectation", "to_value")


def test_quantize_head_option_puts_the_last_layer_in_int8_too(exported, assay_run, tmp_path):
    from edgereg.preprocess import preprocess_batch

    info, dataset = _run_data(assay_run)
    calibration = preprocess_batch(dataset.images[info.split.train[:16]], info.preprocess)
    kept = quantize_int8(exported / "model.onnx", tmp_path / "kept.onnx", calibration)
    quantized = quantize_int8(exported / "model.onnx", tmp_path / "all.onnx", calibration,
                              options=QuantizeOptions(keep_head_float=False))
    from edgereg.export.int8.quantize import novelty_nodes

    branch = set(novelty_nodes(onnx.load(str(exported / "model.onnx"))))  # the novelty output's own nodes stay float
    own = [n for n in quantized.float_nodes if n not in branch]
    assert len(own) == 1 and own[0].endswith("Conv"), "only the first layer"
    assert set(quantized.float_nodes) < set(kept.float_nodes)
    head = next(n for n in kept.float_nodes if n not in quantized.float_nodes)
    assert _weight_sources(onnx.load(str(kept.path)))[head] == "float"
    assert _weight_sources(onnx.load(str(quantized.path)))[head] == "dq"


def test_first_layer_stays_float_by_default(exported):
    """The network input is never quantized by default: the first Conv reads the float image."""
    import onnx

    model = onnx.load(str(exported / "model.int8.onnx"))
    consumers = [n for n in model.graph.node if "image" in n.input]
    assert consumers and all(n.op_type != "QuantizeLinear" for n in consumers)
    assert any(n.op_type == "QuantizeLinear" for n in model.graph.node), "the rest is still int8"


def test_export_measures_int8_against_fp32_and_records_the_recommendation(exported):
    report = json.loads((exported / "export_report.json").read_text())
    search = report["models"]["int8"]["search"]
    speed = search["speed"]
    assert set(speed["int8_vs_fp32"]) == {"1", "32"} and all(r > 0 for r in speed["int8_vs_fp32"].values())
    faster = speed["int8_vs_fp32"]["32"] > 1.0
    assert speed["recommended"] == ("int8" if faster else "fp32")
    assert report["recommended"]["model"] == ("model.int8.onnx" if faster else "model.onnx")
    assert any(step.startswith("activations: ") for step in search["steps"])
    card = read_card(exported / "model.int8.onnx")
    assert card.quantization["speed"]["recommended"] == speed["recommended"]
    assert card.quantization["activations"].split(",")[0] in ("int8", "uint8")
    timed = [layer for layer in search["layers"] if layer["int8_us"] is not None]
    assert timed, "the profiler's per-layer times must map back to the layers"


def test_quantizable_layers_fuse_activations_and_skip_data_movement():
    from edgereg.export.int8.quantize import quantizable_layers

    inits = [numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w1"),
             numpy_helper.from_array(np.ones((4, 4, 1, 1), np.float32), "w2"),
             numpy_helper.from_array(np.array([0, -1], np.int64), "shape")]
    nodes = [
        helper.make_node("Conv", ["image", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "w2"], ["c2"], name="conv2"),
        helper.make_node("Add", ["c2", "p1"], ["sum"], name="add"),  # the conv's output has two readers
        helper.make_node("Relu", ["sum"], ["r2"], name="relu2"),
        helper.make_node("Reshape", ["r2", "shape"], ["value"], name="flatten"),  # (N,4,2,2) -> (N,16)
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 4, 4])],
                              [helper.make_tensor_value_info("value", TensorProto.FLOAT, ["N", 16])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    layers = quantizable_layers(model)
    assert [(layer.name, layer.nodes, layer.learned) for layer in layers] == [
        ("conv1", ("conv1", "relu1"), True), ("pool", ("pool",), False), ("conv2", ("conv2",), True),
        ("add", ("add",), False), ("relu2", ("relu2",), False)]
    assert layers[0].output == "r1"
    assert [layer.name for layer in quantizable_layers(model, exclude=("conv1",))][:2] == ["relu1", "pool"]
