"""`edgereg export`: model.onnx (checked, card embedded, agreeing with torch), fp16, the report."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgereg.cli.main import main
from edgereg.core.card import read_card


def _validation_inputs(run_dir):
    """The run's model, its validation inputs (N, C, H, W) float32, and its RunInfo."""
    from edgereg.preprocess import preprocess_batch
    from edgereg.training.run import load_run, load_run_dataset

    regressor, info = load_run(run_dir)
    dataset = load_run_dataset(info)
    return regressor, preprocess_batch(dataset.images[info.split.val], info.preprocess), info


def test_model_onnx_is_a_checked_standard_graph(exported):
    model = onnx.load(str(exported / "model.onnx"))
    onnx.checker.check_model(model, full_check=True)
    opset = max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    assert opset >= 17
    ops = {node.op_type for node in model.graph.node}
    assert "BatchNormalization" not in ops, "BatchNorm must be folded into the convolutions"
    (image,) = model.graph.input
    value, novelty = model.graph.output  # the novelty score is the optional second output
    assert (image.name, value.name, novelty.name) == ("image", "value", "novelty")
    batch_dim = image.type.tensor_type.shape.dim[0]
    assert not batch_dim.HasField("dim_value"), "the batch axis must be dynamic"


def test_onnx_agrees_with_torch_on_validation_images(assay_run, exported):
    import torch

    regressor, inputs, _ = _validation_inputs(assay_run)
    with torch.no_grad():
        expected = regressor(torch.from_numpy(inputs)).numpy()
    session = ort.InferenceSession(str(exported / "model.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {"image": inputs})[0]
    single = np.concatenate([session.run(None, {"image": inputs[i:i + 1]})[0] for i in range(len(inputs))])
    assert got.shape == expected.shape == (len(inputs), 1)
    scale = np.abs(expected).max()
    assert np.abs(got - expected).max() <= 1e-4 * scale
    assert np.abs(single - expected).max() <= 1e-4 * scale
    lo, hi = read_card(exported / "model.onnx").range[0]
    assert np.all((got >= lo) & (got <= hi)), "the sigmoid range transform must be baked in (physical units)"


def test_card_carries_preprocessing_and_provenance(assay_run, exported):
    from edgereg.training.run import load_run

    _, info = load_run(assay_run)
    card = read_card(exported / "model.onnx")
    for field in ("kind", "targets", "units", "range", "input_size", "channels", "crop", "mean", "std", "tta"):
        assert getattr(card, field) == getattr(info.card, field), field
    assert card.provenance["dataset_fingerprint"] == info.card.provenance["dataset_fingerprint"]
    assert card.provenance["seed"] == 0
    assert "val" in card.provenance["metrics"]
    versions = card.provenance["export"]["versions"]
    assert {"edgereg", "torch", "onnx", "onnxruntime"} <= set(versions)
    assert card.quantization == {}


def test_exported_model_runs_in_the_predictor_like_torch(assay_run, exported):
    import torch

    from edgereg.core.predictor import Predictor
    from edgereg.training.run import load_run_dataset

    regressor, inputs, info = _validation_inputs(assay_run)
    frames = load_run_dataset(info).images[info.split.val]
    predictions = Predictor(exported / "model.onnx", providers="cpu", tta="none").predict(frames)
    with torch.no_grad():
        expected = regressor(torch.from_numpy(inputs)).numpy()
    np.testing.assert_allclose(predictions.values, expected, rtol=1e-4)


def test_fp16_model_keeps_float32_io_and_roughly_agrees(exported):
    fp16 = onnx.load(str(exported / "model.fp16.onnx"))
    onnx.checker.check_model(fp16, full_check=True)
    conv_weights = {init.data_type for init in fp16.graph.initializer if len(init.dims) == 4}
    assert onnx.TensorProto.FLOAT16 in conv_weights, "the convolutions must run in float16"
    assert fp16.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert read_card(exported / "model.fp16.onnx").quantization["precision"].startswith("float16")
    rng = np.random.default_rng(0)
    card = read_card(exported / "model.onnx")
    inputs = rng.standard_normal((8, card.n_channels, *card.input_size), dtype=np.float32)
    fp32_out = ort.InferenceSession(str(exported / "model.onnx")).run(None, {"image": inputs})[0]
    fp16_out = ort.InferenceSession(str(exported / "model.fp16.onnx")).run(None, {"image": inputs})[0]
    assert fp16_out.dtype == np.float32
    # float16 keeps 11 significant bits (relative rounding 4.9e-4 per op); a few layers of sums give
    # about 1e-3 of the output's scale on any CPU, so 1e-2 bounds it without depending on the kernels
    assert np.abs(fp16_out - fp32_out).max() <= 1e-2 * np.abs(fp32_out).max()


def test_report_and_summary(exported, assay_run):
    report = json.loads((exported / "export_report.json").read_text())
    assert report["status"] == "passed"
    assert report["models"]["fp32"]["size_bytes"] == (exported / "model.onnx").stat().st_size
    assert report["models"]["fp32"]["torch_vs_onnxruntime"]["passed"] is True
    assert report["accuracy"]["split"] == "val"
    assert report["accuracy"]["holdout"]["fp32"]["split"] == "test"
    for name in ("fp32", "int8"):
        rates = report["speed"][name]["images_per_s"]
        assert set(rates) == {"1", "32"} and all(rate > 0 for rate in rates.values())
        assert report["speed"][name]["peak_rss_mib"] >= report["speed"][name]["baseline_rss_mib"] > 0
    ratios = report["speed"]["int8_vs_fp32"]
    slower = [b for b, r in ratios.items() if r <= 1.0]
    assert len(report["speed"]["notes"]) == len(slower), "every batch where int8 is not faster gets a note"


def test_check_agreement_catches_a_disagreement(exported):
    from edgereg.export.onnx_export import check_agreement

    card = read_card(exported / "model.onnx")
    inputs = np.random.default_rng(1).standard_normal((4, card.n_channels, *card.input_size), dtype=np.float32)
    reference = ort.InferenceSession(str(exported / "model.onnx")).run(None, {"image": inputs})[0]
    assert check_agreement(exported / "model.onnx", inputs, reference, kind=card.kind).passed
    off = check_agreement(exported / "model.onnx", inputs, reference * 1.001, kind=card.kind)
    assert not off.passed and off.max_rel_diff == pytest.approx(1e-3, rel=0.05)


def test_user_errors_exit_2_with_one_line(tmp_path, capsys, assay_run):
    assert main(["export", str(tmp_path / "missing")]) == 2
    assert "edgereg train" in capsys.readouterr().err
    assert main(["export", str(assay_run), "--out", str(tmp_path / "o"), "--opset", "13", "--no-speed"]) == 2
    err = capsys.readouterr().err.strip()
    assert "opset" in err and len(err.splitlines()) == 1
    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(assay_run), "--int8", "--calib-method", "entrpy"])
    assert exit_info.value.code == 2
    assert "did you mean 'entropy'" in capsys.readouterr().err


def test_c_flag_writes_c_sources_for_fp32_and_int8_and_reports_their_cost(assay_run, tmp_path):
    from edgereg.export.c.codegen import generate_c

    out = tmp_path / "with_c"
    assert main(["export", str(assay_run), "--out", str(out), "--int8", "--calib-method", "minmax",
                 "--calib-images", "16", "--c", "--no-speed"]) == 0
    report = json.loads((out / "export_report.json").read_text())
    assert list(report["models"]["int8"]["methods_tried"]) == ["minmax"]
    for name, folder, model in (("fp32", "c", "model.onnx"), ("int8", "c_int8", "model.int8.onnx")):
        assert (out / folder / "model.c").is_file() and (out / folder / "model.h").is_file()
        direct = generate_c(out / model, tmp_path / f"direct_{name}", int8=name == "int8")
        reported = report["c"][name]
        assert (reported["flash_bytes"], reported["ram_bytes"]) == (direct.flash_bytes, direct.ram_bytes)
        assert direct.flash_bytes > 0 and direct.ram_bytes > 0
    assert report["c"]["int8"]["flash_bytes"] < report["c"]["fp32"]["flash_bytes"], "int8 weights take less flash"


def test_batchnorm_left_by_the_exporter_is_folded_without_changing_outputs(tmp_path):
    from onnx import TensorProto, helper, numpy_helper

    from edgereg.export.onnx_export import fold_batchnorm

    rng = np.random.default_rng(0)
    arrays = {"w": rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "scale": rng.random(4, np.float32) + 0.5,
              "bias": rng.standard_normal(4).astype(np.float32), "mean": rng.standard_normal(4).astype(np.float32),
              "var": rng.random(4, np.float32) + 0.1}
    nodes = [helper.make_node("Conv", ["image", "w"], ["conv"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["conv", "scale", "bias", "mean", "var"], ["value"])]
    graph = helper.make_graph(nodes, "conv_bn", [helper.make_tensor_value_info("image", TensorProto.FLOAT,
                                                                               ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("value", TensorProto.FLOAT, ["N", 4, 8, 8])],
                              [numpy_helper.from_array(a, name) for name, a in arrays.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "bn.onnx"))
    folded = fold_batchnorm(tmp_path / "bn.onnx", tmp_path / "folded.onnx")
    assert folded.count == 1
    assert [n.op_type for n in onnx.load(str(folded.path)).graph.node] == ["Conv"]
    x = rng.standard_normal((2, 3, 8, 8), dtype=np.float32)
    before = ort.InferenceSession(str(tmp_path / "bn.onnx")).run(None, {"image": x})[0]
    after = ort.InferenceSession(str(folded.path)).run(None, {"image": x})[0]
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5)
