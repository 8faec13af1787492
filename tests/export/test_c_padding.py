"""C code for padded convolutions and pools, and the int8 rounding rule, held to ONNX Runtime.

The registry's models pad symmetrically, so these graphs are built by hand with ``onnx.helper``:
asymmetric ``pads`` (ONNX order ``[top, left, bottom, right]``), ``auto_pad=SAME_UPPER`` /
``SAME_LOWER`` with strides that make the padding odd (the extra row goes after for UPPER, before
for LOWER), non-square inputs and kernels. Each is compiled with gcc and run on random inputs.

Float C must match ONNX Runtime to float rounding (rtol 1e-4); int8 C must match the QDQ graph
run by ONNX Runtime within one step of the output quantization. ONNX Runtime refuses dilated
convolutions with ``auto_pad=SAME_*``; for those the reference is onnx's own ``ReferenceEvaluator``.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edgereg.core.card import ModelCard

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from edgereg.export.c.codegen import generate_c  # noqa: E402  (needs onnx)
from edgereg.export.card_io import embed_card  # noqa: E402

CFLAGS = ["-std=c99", "-O1", "-Wall", "-Wextra", "-Werror", "-pedantic"]

# Reads float32 input tensors from stdin, writes the model's outputs to stdout.
DRIVER_C = r"""
#include <stdio.h>
#include "model.h"

int main(void)
{
    static float input[EDGEREG_MODEL_INPUT_LENGTH];
    float out[EDGEREG_MODEL_N_OUTPUTS];
    while (fread(input, sizeof(float), EDGEREG_MODEL_INPUT_LENGTH, stdin) == EDGEREG_MODEL_INPUT_LENGTH) {
        if (edgereg_model_infer(input, out) != EDGEREG_MODEL_OK) {
            return 1;
        }
        fwrite(out, sizeof(float), EDGEREG_MODEL_N_OUTPUTS, stdout);
    }
    return 0;
}
"""


def run_c(model_path: Path, x: np.ndarray, work: Path) -> np.ndarray:
    """Generate C for ``model_path``, compile it and run it on ``x: (N, C, H, W) float32`` -> (N, T)."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is not installed; the C code cannot be compiled here")
    generate_c(model_path, work)
    (work / "driver.c").write_text(DRIVER_C)
    exe = work / "driver"
    built = subprocess.run([gcc, *CFLAGS, "-I", str(work), str(work / "driver.c"), str(work / "model.c"), "-lm",
                            "-o", str(exe)], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-3000:]
    done = subprocess.run([str(exe)], input=np.ascontiguousarray(x, np.float32).tobytes(), capture_output=True,
                          timeout=60)
    assert done.returncode == 0
    return np.frombuffer(done.stdout, dtype=np.float32).reshape(len(x), -1)


def ort_run(model_path: Path, x: np.ndarray, level: str = "ORT_ENABLE_ALL") -> np.ndarray:
    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    options.log_severity_level = 3
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"image": x})[0]


def save_model(path: Path, nodes: list, inits: list, in_shape: tuple[int, int, int]) -> Path:
    """An edgereg-shaped model: ``image (N, C, H, W)`` -> ``value (N, T)``, with a vector card."""
    c, h, w = in_shape
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", c, h, w])
    graph = helper.make_graph(nodes, "padding", [image],
                              [helper.make_tensor_value_info("value", TensorProto.FLOAT, None)], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    n_out = onnx.shape_inference.infer_shapes(model).graph.output[0].type.tensor_type.shape.dim[1].dim_value
    if not n_out:  # shape inference cannot always see through Flatten: ask the runtime instead
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        n_out = session.run(None, {"image": np.zeros((1, c, h, w), np.float32)})[0].shape[1]
    card = ModelCard(kind="vector", targets=tuple(f"t{i}" for i in range(n_out)), input_size=(h, w), crop="none",
                     channels="rgb" if c == 3 else "gray", mean=(0.5,) * c, std=(0.25,) * c)
    embed_card(model, card)
    onnx.save(model, str(path))
    return path


def conv_model(path: Path, attrs: dict, *, in_shape=(3, 8, 8), kernel=(3, 3), out_channels=4) -> Path:
    """Conv (random weights and bias) -> Flatten."""
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(out_channels, in_shape[0], *kernel)).astype(np.float32)
    bias = rng.normal(size=out_channels).astype(np.float32)
    nodes = [helper.make_node("Conv", ["image", "w", "b"], ["y"], **attrs),
             helper.make_node("Flatten", ["y"], ["value"])]
    return save_model(path, nodes, [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")], in_shape)


def inputs(in_shape, n: int = 3, seed: int = 7) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, *in_shape)).astype(np.float32)


CONV_CASES = {
    # bottom/right padding only: the case that exposes a top pad read from the bottom entry
    "pads_bottom_right": (dict(pads=[0, 0, 1, 1]), (3, 8, 8), (3, 3)),
    "pads_top_left": (dict(pads=[1, 1, 0, 0]), (3, 8, 8), (3, 3)),
    "pads_all_different": (dict(pads=[2, 0, 1, 3]), (3, 8, 9), (3, 3)),
    "pads_strided": (dict(pads=[2, 0, 0, 1], strides=[2, 3]), (3, 9, 11), (3, 3)),
    "pads_dilated": (dict(pads=[0, 2, 2, 1], dilations=[2, 1]), (3, 8, 8), (3, 3)),
    # 8 rows, stride 2, kernel 3: 4 outputs need 9 rows, one row of padding: after (UPPER), before (LOWER)
    "same_upper_stride2": (dict(auto_pad="SAME_UPPER", strides=[2, 2]), (3, 8, 8), (3, 3)),
    "same_lower_stride2": (dict(auto_pad="SAME_LOWER", strides=[2, 2]), (3, 8, 8), (3, 3)),
    "same_upper_even_kernel": (dict(auto_pad="SAME_UPPER"), (3, 8, 11), (2, 4)),
    "same_lower_even_kernel": (dict(auto_pad="SAME_LOWER"), (3, 11, 8), (4, 2)),
    "same_upper_stride3": (dict(auto_pad="SAME_UPPER", strides=[3, 2]), (1, 10, 9), (3, 3)),
    "valid": (dict(auto_pad="VALID", strides=[2, 2]), (3, 9, 8), (3, 3)),
}


@pytest.mark.parametrize("case", list(CONV_CASES))
def test_float_conv_padding_matches_onnxruntime(case, tmp_path):
    attrs, in_shape, kernel = CONV_CASES[case]
    path = conv_model(tmp_path / "conv.onnx", attrs, in_shape=in_shape, kernel=kernel)
    x = inputs(in_shape)
    expected = ort_run(path, x)
    got = run_c(path, x, tmp_path / "c")
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mode", ["SAME_UPPER", "SAME_LOWER"])
def test_dilated_same_conv_matches_the_onnx_reference(mode, tmp_path):
    from onnx.reference import ReferenceEvaluator

    path = conv_model(tmp_path / "conv.onnx", dict(auto_pad=mode, strides=[2, 1], dilations=[2, 3]), in_shape=(1, 8, 9))
    x = inputs((1, 8, 9))
    expected = ReferenceEvaluator(onnx.load(str(path))).run(None, {"image": x})[0]
    np.testing.assert_allclose(run_c(path, x, tmp_path / "c"), expected, rtol=1e-4, atol=1e-4)


def quantize(src: Path, dst: Path, in_shape) -> Path:
    """ONNX Runtime static QDQ quantization (per-channel weights) calibrated on random inputs."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"image": inputs(in_shape, n=1, seed=s)} for s in range(8)])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True)
    model = onnx.load(str(dst))
    embed_card(model, ModelCard.from_json(onnx.load(str(src)).metadata_props[0].value))
    onnx.save(model, str(dst))
    return dst


def output_step(path: Path) -> float:
    """The scale of the DequantizeLinear that produces the model's last quantized tensor."""
    model = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    scales = [float(inits[n.input[1]]) for n in model.graph.node
              if n.op_type == "DequantizeLinear" and inits[n.input[1]].size == 1]
    return scales[-1]


@pytest.mark.parametrize("case", ["pads_bottom_right", "same_upper_stride2", "same_lower_even_kernel"])
def test_int8_conv_padding_reproduces_the_qdq_model(case, tmp_path):
    attrs, in_shape, kernel = CONV_CASES[case]
    fp32 = conv_model(tmp_path / "conv.onnx", attrs, in_shape=in_shape, kernel=kernel, out_channels=8)
    int8 = quantize(fp32, tmp_path / "conv.int8.onnx", in_shape)
    x = inputs(in_shape)
    expected = ort_run(int8, x, "ORT_ENABLE_BASIC")  # keeps the graph's Q/DQ semantics
    got = run_c(int8, x, tmp_path / "c")
    step = output_step(int8)
    assert np.abs(got - expected).max() <= step * 1.001
    assert np.mean(np.abs(got - expected) > step / 2) < 0.02  # almost all outputs identical


POOL_CASES = {
    "max_pads_bottom_right": ("MaxPool", dict(kernel_shape=[3, 3], pads=[0, 0, 1, 1], strides=[2, 2])),
    "max_same_upper": ("MaxPool", dict(kernel_shape=[3, 2], auto_pad="SAME_UPPER", strides=[2, 2])),
    "avg_pads_exclude": ("AveragePool", dict(kernel_shape=[3, 3], pads=[1, 0, 0, 2], count_include_pad=0)),
    "avg_pads_include": ("AveragePool", dict(kernel_shape=[3, 3], pads=[1, 0, 0, 2], count_include_pad=1)),
    "avg_same_lower": ("AveragePool", dict(kernel_shape=[2, 3], auto_pad="SAME_LOWER", strides=[2, 2],
                                           count_include_pad=1)),
}


@pytest.mark.parametrize("case", list(POOL_CASES))
def test_float_pool_padding_matches_onnxruntime(case, tmp_path):
    op, attrs = POOL_CASES[case]
    # Conv first, so the pool reads a computed tensor (negative values too: padding must not win a max)
    weight = np.random.default_rng(1).normal(size=(3, 3, 1, 1)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["image", "w"], ["c"]), helper.make_node(op, ["c"], ["p"], **attrs),
             helper.make_node("Flatten", ["p"], ["value"])]
    path = save_model(tmp_path / "pool.onnx", nodes, [numpy_helper.from_array(weight, "w")], (3, 8, 9))
    x = inputs((3, 8, 9)) - 2.0
    np.testing.assert_allclose(run_c(path, x, tmp_path / "c"), ort_run(path, x), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------------
# rounding at exact .5 ties
# ---------------------------------------------------------------------------------------------------

def test_quantize_rounds_exact_ties_half_to_even_like_onnxruntime(tmp_path):
    """QuantizeLinear with scale 0.5: x = 0.25 + k / 2 is exactly k + 0.5 steps, a tie every time.

    ONNX defines QuantizeLinear's rounding as round half to even (0.5 -> 0, 1.5 -> 2, -2.5 -> -2);
    half away from zero or half up would move half of these by one step.
    """
    nodes = [helper.make_node("QuantizeLinear", ["image", "s", "zp"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["dq"]),
             helper.make_node("Flatten", ["dq"], ["value"])]
    inits = [numpy_helper.from_array(np.array(0.5, np.float32), "s"),
             numpy_helper.from_array(np.array(3, np.int8), "zp")]
    path = save_model(tmp_path / "ties.onnx", nodes, inits, (1, 8, 40))
    steps = np.arange(-160, 160) + 0.5  # ties from -159.5 to 159.5 steps, past both saturation ends
    x = (steps * 0.5).astype(np.float32).reshape(1, 1, 8, 40)
    assert np.array_equal(x.astype(np.float64) / 0.5, steps.reshape(1, 1, 8, 40))  # exact ties in float32
    expected = ort_run(path, x, "ORT_ENABLE_BASIC")
    got = run_c(path, x, tmp_path / "c")
    np.testing.assert_array_equal(got, expected)
    levels = np.clip(np.round(steps) + 3, -128, 127)  # numpy rounds half to even, as ONNX
    np.testing.assert_array_equal(got.reshape(-1), ((levels - 3) * 0.5).astype(np.float32))


def test_int8_average_pool_rounds_ties_half_to_even_like_onnxruntime(tmp_path):
    """A 2x2 int8 average of integers is a multiple of 0.25: every odd sum of two leaves a .5 tie
    that the integer kernel must round as QuantizeLinear does."""
    nodes = [helper.make_node("QuantizeLinear", ["image", "s", "zp"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["dq"]),
             helper.make_node("AveragePool", ["dq"], ["avg"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("QuantizeLinear", ["avg", "s", "zp"], ["q2"]),
             helper.make_node("DequantizeLinear", ["q2", "s", "zp"], ["dq2"]),
             helper.make_node("Flatten", ["dq2"], ["value"])]
    inits = [numpy_helper.from_array(np.array(1.0, np.float32), "s"),
             numpy_helper.from_array(np.array(-5, np.int8), "zp")]
    path = save_model(tmp_path / "avg.onnx", nodes, inits, (1, 8, 8))
    x = np.random.default_rng(5).integers(-60, 60, size=(16, 1, 8, 8)).astype(np.float32)
    windows = x.reshape(16, 1, 4, 2, 4, 2).mean(axis=(3, 5))  # (N,1,8,8) -> 2x2 window means (N,1,4,4)
    assert np.mean(windows % 1 == 0.5) > 0.2  # plenty of ties
    expected = ort_run(path, x, "ORT_ENABLE_BASIC")
    got = run_c(path, x, tmp_path / "c")
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(got, np.round(windows).reshape(16, -1))
