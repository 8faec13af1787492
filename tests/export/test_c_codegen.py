"""C code generation: compile the generated model.c with gcc and hold it to ONNX Runtime.

Float C must match ONNX Runtime within 1e-4 (relative, absolute for values below 1); int8 C must
reproduce the QDQ graph's own semantics (ONNX Runtime with basic optimizations, which keeps
QuantizeLinear/DequantizeLinear as the graph says) to within one step of the last quantized tensor
carried through the float tail (:func:`int8_tolerance`: one output step when the output itself is
quantized), and be as accurate against fp32 as the int8 model is, within the export gate's 10 %
margin. No int8 assertion uses an absolute 1e-4: ONNX Runtime's kernels round differently by
instruction set (AVX2, AVX-512, VNNI), and only the quantization step bounds that.
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest

from edgereg.card import ModelCard
from edgereg.errors import EdgeregError, ModelFileError, ShapeError

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
nn = torch.nn
F = torch.nn.functional

from edgereg.export.c_codegen import generate_c  # noqa: E402  (needs onnx)
from edgereg.export.card_io import embed_card  # noqa: E402

CFLAGS = ["-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-pedantic"]
GATE_MAX_DROP = 0.10  # the export gate's default: int8 may be at most 10 % worse

# A test driver: "infer" reads float32 input tensors from stdin and writes the outputs;
# "predict W H C" / "preprocess W H C" read W*H*C-byte frames (RGB888 for C=3, gray for C=1).
DRIVER_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "model.h"

int main(int argc, char **argv)
{
    static float input[EDGEREG_MODEL_INPUT_LENGTH];
    float out[EDGEREG_MODEL_N_OUTPUTS];
    if (argc == 2 && strcmp(argv[1], "infer") == 0) {
        while (fread(input, sizeof(float), EDGEREG_MODEL_INPUT_LENGTH, stdin) == EDGEREG_MODEL_INPUT_LENGTH) {
            if (edgereg_model_infer(input, out) != EDGEREG_MODEL_OK) {
                return 1;
            }
            fwrite(out, sizeof(float), EDGEREG_MODEL_N_OUTPUTS, stdout);
        }
        return 0;
    }
    if (argc != 5) {
        return 2;
    }
    const int width = atoi(argv[2]), height = atoi(argv[3]), channels = atoi(argv[4]);
    const size_t size = (size_t)width * height * channels;
    unsigned char *pixels = malloc(size);
    while (fread(pixels, 1, size, stdin) == size) {
        const int stride = width * channels;
        int status;
        if (strcmp(argv[1], "predict") == 0) {
            status = channels == 3 ? edgereg_model_predict_rgb888(pixels, width, height, stride, out)
                                   : edgereg_model_predict_gray8(pixels, width, height, stride, out);
            fwrite(out, sizeof(float), EDGEREG_MODEL_N_OUTPUTS, stdout);
        } else {
            status = channels == 3 ? edgereg_model_preprocess_rgb888(pixels, width, height, stride, input)
                                   : edgereg_model_preprocess_gray8(pixels, width, height, stride, input);
            fwrite(input, sizeof(float), EDGEREG_MODEL_INPUT_LENGTH, stdout);
        }
        if (status != EDGEREG_MODEL_OK) {
            return 1;
        }
    }
    free(pixels);
    return 0;
}
"""


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------

def _gcc() -> str:
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is not installed; the C code cannot be compiled here")
    return gcc


def compile_driver(model_dir: Path) -> Path:
    """Compile the driver with the generated model; fails the test on any warning."""
    driver = model_dir / "driver.c"
    driver.write_text(DRIVER_C)
    exe = model_dir / "driver"
    result = subprocess.run([_gcc(), *CFLAGS, "-I", str(model_dir), str(driver), str(model_dir / "model.c"),
                             "-lm", "-o", str(exe)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-4000:]
    return exe


def run_driver(exe: Path, args: list[str], data: bytes, n_floats: int) -> np.ndarray:
    result = subprocess.run([str(exe), *args], input=data, capture_output=True, timeout=120)
    assert result.returncode == 0, f"driver {args} exited with {result.returncode}"
    return np.frombuffer(result.stdout, dtype=np.float32).reshape(-1, n_floats)


def ort_run(path: Path, x: np.ndarray, *, level: str = "ORT_ENABLE_ALL") -> np.ndarray:
    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"image": x})[0]


def export(module: nn.Module, path: Path, card: ModelCard) -> Path:
    """torch -> ONNX (TorchScript exporter, opset 17, dynamic batch) with the card embedded."""
    module.eval()
    example = torch.zeros(1, card.n_channels, *card.input_size)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)  # dynamo=False is deliberate
        torch.onnx.export(module, example, str(path), input_names=["image"], output_names=["value"],
                          dynamic_axes={"image": {0: "N"}, "value": {0: "N"}}, dynamo=False, opset_version=17)
    model = onnx.load(str(path))
    embed_card(model, card)
    onnx.save(model, str(path))
    return path


def quantize(src: Path, dst: Path, card: ModelCard, *, n: int = 16) -> Path:
    """onnxruntime static quantization, QDQ, per-channel weights, on random normalized inputs."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    shape = (1, card.n_channels, *card.input_size)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"image": np.random.default_rng(i).normal(size=shape).astype(np.float32)}
                                 for i in range(n)])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True)
    model = onnx.load(str(dst))
    embed_card(model, card)
    onnx.save(model, str(dst))
    return dst


def output_step(path: Path) -> float | None:
    """The scale of the DequantizeLinear that produces `value`, if the output is quantized."""
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.output[0] == "value":
            return float(inits[node.input[1]])
    return None


def int8_tolerance(path: Path, x: np.ndarray) -> np.ndarray:
    """(N, T) how far two correct int8 runtimes may disagree on the outputs of ``x``.

    Where the hardware decides: ONNX Runtime dequantizes, sums in float in an order that depends
    on the instruction set (AVX2, AVX-512, VNNI), and requantizes, so a value that falls within
    rounding of a step boundary may land one step either way. The tolerance is one step in every
    element of the last quantized tensors, carried through the float tail that follows them (the
    head kept in float, the output transform) to first order: the sum over those elements of the
    output change a one-step nudge causes, measured at each input. For a model whose output is
    itself dequantized, the tail is the identity and this is one output step.
    """
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producer = {out: node for node in model.graph.node for out in node.output}
    frontier, stack, seen = {}, ["value"], set()
    while stack:  # walk back from the output through float nodes to the activation DequantizeLinears
        name = stack.pop()
        node = producer.get(name)
        if name in seen or node is None:
            continue
        seen.add(name)
        if node.op_type == "DequantizeLinear" and node.input[0] not in inits:
            frontier[name] = float(np.max(inits[node.input[1]]))
        else:
            stack.extend(i for i in node.input if i and i not in inits)
    names = sorted(frontier)
    model.graph.output.extend(helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None)
                              for n in names if n != "value")
    probe = save_model(model, path.with_name(path.stem + ".probe.onnx"))
    values = dict(zip(["value", *[n for n in names if n != "value"]],
                      ort_session(probe, "ORT_ENABLE_BASIC").run(None, {"image": x})))
    if names == ["value"]:
        return np.full_like(values["value"], frontier["value"], dtype=np.float64)
    tail_nodes = [node for node in model.graph.node if set(node.output) & seen and node.output[0] not in frontier]
    used = {i for node in tail_nodes for i in node.input}
    tail = helper.make_model(helper.make_graph(
        tail_nodes, "tail", [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in names],
        [helper.make_tensor_value_info("value", onnx.TensorProto.FLOAT, None)],
        initializer=[i for i in model.graph.initializer if i.name in used]), opset_imports=model.opset_import)
    tail.ir_version = model.ir_version
    tail_path = save_model(tail, path.with_name(path.stem + ".tail.onnx"))
    session = ort_session(tail_path, "ORT_ENABLE_BASIC")
    tolerance = np.zeros(values["value"].shape, dtype=np.float64)  # (N, T)
    for i in range(len(x)):
        base = {n: values[n][i:i + 1] for n in names}
        for n in names:
            flat = base[n].reshape(-1)  # (1, ...) -> (E,)
            count = flat.size
            nudged = np.repeat(flat[None], 2 * count, axis=0)  # (2E, E): +step then -step per element
            nudged[np.arange(count), np.arange(count)] += frontier[n]
            nudged[count + np.arange(count), np.arange(count)] -= frontier[n]
            feeds = {m: np.repeat(base[m], 2 * count, axis=0) for m in names}
            feeds[n] = nudged.reshape(2 * count, *base[n].shape[1:])  # (2E, E) -> (2E, ...)
            change = np.abs(session.run(None, feeds)[0].astype(np.float64) - values["value"][i])  # (2E, T)
            tolerance[i] += np.maximum(change[:count], change[count:]).sum(axis=0)
    return tolerance


def save_model(model, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


def ort_session(path: Path, level: str):
    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def rmse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a.astype(np.float64) - b) ** 2)))


# --------------------------------------------------------------------------------------------------
# test models: plain torch modules using exactly the ops the C generator supports
# --------------------------------------------------------------------------------------------------

class ConvNet(nn.Module):
    """Conv+BN+ReLU, depthwise strided Conv+BN+ReLU6, residual Add, MaxPool (ceil), AveragePool,
    GlobalAveragePool, Flatten, Gemm, Sigmoid and the affine range transform (Mul, Add)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.depthwise = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8)
        self.bn_dw = nn.BatchNorm2d(8)
        self.pointwise = nn.Conv2d(8, 8, 1)
        self.max_pool = nn.MaxPool2d(2, ceil_mode=True)
        self.avg_pool = nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
        self.fc = nn.Linear(8, 1)
        for bn in (self.bn, self.bn_dw):  # non-trivial statistics, so folding them matters
            bn.running_mean.uniform_(-0.3, 0.3)
            bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x):
        x = F.relu(self.bn(self.conv(x)))
        y = F.relu6(self.bn_dw(self.depthwise(x)))
        y = F.relu(self.pointwise(y) + y)
        y = self.avg_pool(self.max_pool(y))
        y = F.adaptive_avg_pool2d(y, 1).flatten(1)
        return 80.0 + 270.0 * torch.sigmoid(self.fc(y))


class BranchNet(nn.Module):
    """Gray input; dilated and 5x5 branches (HardSwish, LeakyRelu), Concat, per-location 1x1 logits,
    ReduceMean over space, Softmax: a GRAINet-style distribution head."""

    def __init__(self):
        super().__init__()
        self.dilated = nn.Conv2d(1, 6, 3, padding=2, dilation=2)
        self.wide = nn.Conv2d(1, 6, 5, padding=2)
        self.logits = nn.Conv2d(12, 5, 1)

    def forward(self, x):
        y = torch.cat([F.hardswish(self.dilated(x)), F.leaky_relu(self.wide(x), 0.1)], 1)
        return torch.softmax(self.logits(y).mean((2, 3)), 1)


class AngleNet(nn.Module):
    """Unpadded strided Conv, view-flatten (Shape/Gather/Reshape), Linear + standalone BatchNorm1d,
    Tanh, Slice, atan2 (Div/Atan/Where/...) in degrees and remainder 360 (Floor)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2)
        self.fc = nn.Linear(4 * 7 * 7, 8)
        self.bn = nn.BatchNorm1d(8)
        self.out = nn.Linear(8, 2)
        self.bn.running_mean.uniform_(-0.5, 0.5)
        self.bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x):
        y = F.relu(self.conv(x))
        y = y.view(y.size(0), -1)
        sin_cos = self.out(torch.tanh(self.bn(self.fc(y))))
        degrees = torch.atan2(sin_cos[:, 0:1], sin_cos[:, 1:2]) * (180.0 / math.pi)
        return torch.remainder(degrees, 360.0)


class CoordNet(nn.Module):
    """CoordConv input (Concat with a constant grid), a heatmap, and a soft-argmax over it
    (Flatten, Softmax, Mul, ReduceSum, Concat): (u, v) in [0, 1] of the input."""

    def __init__(self, size: int = 16):
        super().__init__()
        ys, xs = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
        self.register_buffer("grid", torch.stack([xs, ys])[None])  # (1,2,H,W)
        self.register_buffer("gx", ((torch.arange(size) + 0.5) / size).repeat(size))
        self.register_buffer("gy", ((torch.arange(size) + 0.5) / size).repeat_interleave(size))
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.heat = nn.Conv2d(4, 1, 1)

    def forward(self, x):
        x = torch.cat([x, self.grid.expand(x.shape[0], -1, -1, -1)], 1)
        p = torch.softmax(3.0 * self.heat(F.relu(self.conv(x))).flatten(1), 1)  # (B,1,H,W) -> (B,H*W)
        return torch.cat([(p * self.gx).sum(1, keepdim=True), (p * self.gy).sum(1, keepdim=True)], 1)


GRAY = dict(channels="gray", mean=(0.5,), std=(0.25,))
CASES = {
    "conv": (ConvNet, dict(kind="scalar", targets=("conc",), units=("mg/L",), range=((80.0, 350.0),)),
             {"Conv", "Relu", "Clip", "Add", "MaxPool", "AveragePool",  # BN: folded by torch's export
              "GlobalAveragePool", "Flatten", "Gemm", "Sigmoid", "Mul"}),
    "branch": (BranchNet, dict(kind="distribution", targets=tuple("abcde"), **GRAY),
               {"Conv", "HardSwish", "LeakyRelu", "Concat", "ReduceMean", "Softmax"}),
    "angle": (AngleNet, dict(kind="angle", targets=("orientation",)),
              {"Conv", "Reshape", "Gemm", "BatchNormalization", "Tanh", "Slice", "Atan", "Where", "Floor"}),
    "coords": (CoordNet, dict(kind="coords", targets=("x", "y"), crop="none", **GRAY),
               {"Concat", "Conv", "Softmax", "Mul", "ReduceSum"}),
}


@pytest.fixture(scope="module")
def exported_models(tmp_path_factory):
    """name -> (card, fp32 path, int8 path) for every test model (exported once per module)."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("c_models")
    models = {}
    for name, (cls, card_fields, _) in CASES.items():
        torch.manual_seed(0)
        card = ModelCard(input_size=(16, 16), **card_fields)
        fp32 = export(cls(), root / f"{name}.onnx", card)
        models[name] = (card, fp32, quantize(fp32, root / f"{name}.int8.onnx", card))
    return models


def random_inputs(card: ModelCard, n: int, seed: int = 7) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, card.n_channels, *card.input_size)).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# the network
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(CASES))
def test_float_c_matches_onnxruntime(name, exported_models, tmp_path):
    card, fp32, _ = exported_models[name]
    report = generate_c(fp32, tmp_path / "c")
    assert not report.quantized
    assert CASES[name][2] <= set(report.ops), f"ops not exercised: {CASES[name][2] - set(report.ops)}"
    exe = compile_driver(tmp_path / "c")
    x = random_inputs(card, 16)
    got = run_driver(exe, ["infer"], x.tobytes(), len(card.targets))
    np.testing.assert_allclose(got, ort_run(fp32, x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", list(CASES))
def test_int8_c_reproduces_the_qdq_model(name, exported_models, tmp_path):
    card, fp32, int8 = exported_models[name]
    report = generate_c(int8, tmp_path / "c", int8=True)
    assert report.quantized
    source = (tmp_path / "c" / "model.c").read_text()
    assert "conv2d_q8(" in source and "static const int8_t conv_weight" in source  # real int8 weights
    assert "conv2d_f32(" not in source  # every Conv of these models runs on integers
    assert report.flash_bytes < generate_c(fp32, tmp_path / "c32").flash_bytes
    exe = compile_driver(tmp_path / "c")
    x = random_inputs(card, 64)
    got = run_driver(exe, ["infer"], x.tobytes(), len(card.targets))
    qdq = ort_run(int8, x, level="ORT_ENABLE_BASIC")  # QuantizeLinear/DequantizeLinear kept as written
    allowed = int8_tolerance(int8, x) * 1.001 + 1e-6 * np.maximum(1.0, np.abs(qdq))
    assert (np.abs(got - qdq) <= allowed).all(), "C int8 differs from the QDQ model by more than one step"
    assert np.mean(np.abs(got - qdq) <= 1e-6 * np.maximum(1.0, np.abs(qdq))) >= 0.9
    reference = ort_run(fp32, x)
    assert rmse(got, reference) <= (1 + GATE_MAX_DROP) * rmse(qdq, reference) + 1e-6


def test_quantized_graph_with_uint8_activations(exported_models, tmp_path):
    """uint8 activations (QUInt8) are stored as int8 shifted by 128 and give the same numbers."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    card, fp32, _ = exported_models["conv"]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"image": x[None]} for x in random_inputs(card, 16, seed=3)])

        def get_next(self):
            return next(self.batches, None)

    uint8 = tmp_path / "conv.uint8.onnx"
    quantize_static(str(fp32), str(uint8), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8)
    model = onnx.load(str(uint8))
    embed_card(model, card)
    onnx.save(model, str(uint8))
    generate_c(uint8, tmp_path / "c", int8=True)
    x = random_inputs(card, 32)
    got = run_driver(compile_driver(tmp_path / "c"), ["infer"], x.tobytes(), 1)
    qdq = ort_run(uint8, x, level="ORT_ENABLE_BASIC")
    assert output_step(uint8) is not None, "the test expects a quantized output"
    assert (np.abs(got - qdq) <= int8_tolerance(uint8, x) * 1.001).all()


def test_arena_reuses_buffers(tmp_path):
    """A chain of layers needs only the largest (input + output) pair of live tensors, not their sum."""
    torch.manual_seed(0)
    chain = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1),
                          nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(16, 1))
    card = ModelCard(kind="vector", targets=("v",), input_size=(16, 16))
    report = generate_c(export(chain, tmp_path / "chain.onnx", card), tmp_path / "c")
    floats = [3 * 16 * 16, 8 * 16 * 16, 16 * 8 * 8, 16 * 8 * 8, 16, 1]  # tensors in order, ReLUs fused
    peak = max(4 * (a + b) for a, b in zip(floats, floats[1:]))
    assert report.ram_bytes == peak
    assert report.ram_bytes < 4 * sum(floats)
    header = (tmp_path / "c" / "model.h").read_text()
    assert f"#define EDGEREG_MODEL_ARENA_BYTES {peak}" in header


def _op_zoo_model(path: Path) -> tuple[Path, set[str]]:
    """An onnx.helper graph that applies every element-wise, data-movement and reduction op the
    generator supports to a (N, 3, 8, 8) image; each result is averaged to one output column."""
    from onnx import TensorProto, helper, numpy_helper

    from edgereg.export.c_lowering import BINARY, UNARY

    nodes, inits, features = [], [], []

    def const(name, values, dtype=np.float32):
        inits.append(numpy_helper.from_array(np.asarray(values, dtype=dtype), name))
        return name

    def node(op, inputs, **attrs):
        out = f"v{len(nodes)}"
        nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    def feature(value, op=None):  # (N, ...) -> (N, 1) mean over everything else
        if op is None:
            op = nodes[-1].op_type
        mean = node("ReduceMean", [value], axes=[1, 2, 3], keepdims=0)
        features.append((node("Unsqueeze", [mean, const(f"ax{len(nodes)}", [1], np.int64)]), op))

    x = "image"
    positive = node("Add", [node("Abs", [x]), const("one", 1.0)])
    for op in sorted(set(UNARY) - {"Not"}):
        feature(node(op, [positive if op in ("Log", "Sqrt", "Reciprocal") else x]))
    channel = const("per_channel", [[[0.5]], [[-1.0]], [[2.0]]])  # (3,1,1): broadcasts over H, W
    row = const("per_column", np.linspace(-1, 1, 8))  # (8,): broadcasts over the last axis
    for op in sorted(set(BINARY) - {"And", "Or", "Xor", "Pow"}):
        result = node(op, [x, channel if op in ("Add", "Mul", "Less", "Equal") else row]) if op != "Div" \
            else node(op, [x, positive])
        feature(node("Cast", [result], to=TensorProto.FLOAT) if result and op in (
            "Less", "Greater", "Equal", "LessOrEqual", "GreaterOrEqual") else result, op)
    negative, bright = node("Less", [x, const("zero", 0.0)]), node("Greater", [x, row])
    for op in ("And", "Or", "Xor"):
        feature(node("Cast", [node(op, [negative, bright])], to=TensorProto.FLOAT), op)
    feature(node("Cast", [node("Not", [negative])], to=TensorProto.FLOAT), "Not")
    feature(node("Pow", [positive, const("power", 1.5)]))
    for op in ("Max", "Min", "Sum", "Mean"):
        feature(node(op, [x, channel, row]))
    feature(node("Where", [negative, x, row]))
    feature(node("Clip", [x, const("lo", -0.5), const("hi", 0.7)]))
    feature(node("LeakyRelu", [x], alpha=0.2))
    feature(node("Elu", [x], alpha=0.7))
    feature(node("HardSigmoid", [x], alpha=0.3, beta=0.4))
    feature(node("Mod", [x, const("modulus", 0.7)], fmod=1))
    # data movement
    nhwc = node("Transpose", [x], perm=[0, 2, 3, 1])  # (N,3,8,8) -> (N,8,8,3)
    first, rest = f"v{len(nodes)}a", f"v{len(nodes)}b"
    nodes.append(helper.make_node("Split", [nhwc, const("split", [1, 2], np.int64)], [first, rest], axis=3))
    feature(node("Gather", [rest, const("picks", [1, 0, 1], np.int64)], axis=3), "Gather")
    feature(first, "Split")
    feature(nhwc, "Transpose")
    tiled = node("Tile", [x, const("reps", [1, 4, 1, 1], np.int64)])  # (N,12,8,8)
    feature(tiled, "Tile")
    feature(node("DepthToSpace", [tiled], blocksize=2, mode="CRD"))  # (N,3,16,16)
    feature(node("SpaceToDepth", [x], blocksize=2))  # (N,12,4,4)
    feature(node("Slice", [x, const("starts", [0, 1], np.int64), const("ends", [8, 8], np.int64),
                           const("axes", [2, 3], np.int64), const("steps", [2, 3], np.int64)]))
    feature(node("Expand", [row, node("Shape", [x])]), "Expand")  # (8,) -> (N,3,8,8) at run time
    squeezed = node("Squeeze", [node("ReduceMax", [x], axes=[1], keepdims=1), const("ax_sq", [1], np.int64)])
    feature(node("Unsqueeze", [squeezed, const("ax_un", [1], np.int64)]), "ReduceMax")
    summed = node("ReduceSum", [x, const("ax_sum", [2], np.int64)], keepdims=1)
    feature(summed, "ReduceSum")
    feature(node("ReduceMin", [x], axes=[3], keepdims=1), "ReduceMin")
    out = helper.make_node("Concat", [f for f, _ in features], ["value"], axis=1)
    graph = helper.make_graph(nodes + [out], "op_zoo",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("value", TensorProto.FLOAT, ["N", len(features)])],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    card = ModelCard(kind="vector", targets=tuple(f"f{i}" for i in range(len(features))), input_size=(8, 8))
    embed_card(model, card)
    onnx.save(model, str(path))
    return path, {op for _, op in features}


def test_every_elementwise_and_data_movement_op_matches_onnxruntime(tmp_path):
    from edgereg.export.c_lowering import BINARY, UNARY

    path, exercised = _op_zoo_model(tmp_path / "zoo.onnx")
    assert exercised >= set(UNARY) | set(BINARY) | {"Transpose", "Split", "Gather", "Tile", "DepthToSpace",
                                                    "SpaceToDepth", "Slice", "Expand", "Where", "Mod"}
    report = generate_c(path, tmp_path / "c")
    x = np.random.default_rng(3).normal(size=(8, 3, 8, 8)).astype(np.float32)
    got = run_driver(compile_driver(tmp_path / "c"), ["infer"], x.tobytes(), report_outputs(path))
    np.testing.assert_allclose(got, ort_run(path, x), rtol=1e-4, atol=1e-5)


def report_outputs(path: Path) -> int:
    return int(onnx.load(str(path)).graph.output[0].type.tensor_type.shape.dim[1].dim_value)


# --------------------------------------------------------------------------------------------------
# preprocessing and the frame entry points
# --------------------------------------------------------------------------------------------------

PREPROCESS_CASES = {
    "center_shrink": (dict(crop="center"), (37, 50)),  # non-integer INTER_AREA factor
    "circle_fill": (dict(crop="circle", fill=-1.5), (64, 48)),
    "gray": (dict(crop="center", channels="gray", mean=(0.4,), std=(0.2,)), (45, 45)),
    "roi_past_border": (dict(roi=(40.3, 10.0, 17.5)), (60, 80)),  # the ROI square pads with black
    "none_non_square": (dict(crop="none"), (30, 40)),
    "enlarge": (dict(crop="center"), (10, 12)),  # bilinear (INTER_LINEAR)
}


@pytest.mark.parametrize("case", list(PREPROCESS_CASES))
def test_c_preprocessing_matches_runtime(case, model_factory, tmp_path):
    """Shrinking (INTER_AREA) matches edgereg.preprocess to float rounding; enlarging (bilinear; OpenCV
    uses fixed-point weights there) to one pixel level."""
    from edgereg.card import read_card
    from edgereg.preprocess import PreprocessConfig, prepare_frames, preprocess_batch

    fields, (height, width) = PREPROCESS_CASES[case]
    model = model_factory(input_size=(16, 16), **fields)
    card = read_card(model)
    generate_c(model, tmp_path / "c")
    exe = compile_driver(tmp_path / "c")
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(4, height, width, 3), dtype=np.uint8)
    ramp = np.linspace(0, 255, width)[None, None, :, None] + rng.normal(0, 20, (2, height, width, 3))
    frames[2:] = np.clip(ramp, 0, 255).astype(np.uint8)  # smooth frames too, not only noise
    config = PreprocessConfig.from_card(card)
    expected = preprocess_batch(prepare_frames(list(frames), config)[0], config)
    rgb = np.ascontiguousarray(frames[..., ::-1])  # BGR (OpenCV) -> RGB888 (camera)
    got = run_driver(exe, ["preprocess", str(width), str(height), "3"], rgb.tobytes(),
                     card.n_channels * 16 * 16).reshape(expected.shape)
    level = 1.0 / (255.0 * min(card.std))
    tolerance = level + 1e-5 if case == "enlarge" else 1e-5
    assert np.abs(got - expected).max() <= tolerance


def test_predict_rgb888_matches_predictor(model_factory, tmp_path):
    """The frame entry point end to end: crop, normalize, network, output transform."""
    from edgereg.predictor import Predictor

    model = model_factory(kind="vector", targets=("a", "b"), input_size=(16, 16), crop="circle", fill=0.5)
    generate_c(model, tmp_path / "c")
    exe = compile_driver(tmp_path / "c")
    frames = np.random.default_rng(1).integers(0, 256, size=(5, 16, 24, 3), dtype=np.uint8)  # crop 16x16
    got = run_driver(exe, ["predict", "24", "16", "3"], np.ascontiguousarray(frames[..., ::-1]).tobytes(), 2)
    expected = Predictor(model, tta=None).predict(list(frames)).values
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_predict_coords_are_mapped_to_frame_pixels(model_factory, tmp_path):
    """Coordinates come back in frame pixels through the crop box, as the Predictor returns them."""
    from edgereg.predictor import Predictor

    model = model_factory(fn="centroid", kind="coords", targets=("x", "y"), input_size=(16, 16),
                          channels="gray", mean=(0.5,), std=(0.25,))
    generate_c(model, tmp_path / "c")
    exe = compile_driver(tmp_path / "c")
    frames = np.zeros((3, 16, 40, 3), dtype=np.uint8)  # centre square: columns 12..27
    for i, (x, y) in enumerate([(14, 3), (20, 8), (26, 12)]):
        frames[i, y - 1:y + 2, x - 1:x + 2] = 255
    gray = np.ascontiguousarray(frames[..., 0])
    got = run_driver(exe, ["predict", "40", "16", "1"], gray.tobytes(), 2)
    expected = Predictor(model, tta=None).predict(list(frames)).values
    np.testing.assert_allclose(got, expected, atol=1e-3)
    np.testing.assert_allclose(got, [[14, 3], [20, 8], [26, 12]], atol=0.05)  # the spots' centres


def test_two_models_link_into_one_firmware(model_factory, tmp_path):
    """Prefixes keep the symbols of two generated models apart."""
    first = model_factory(input_size=(16, 16))
    second = model_factory(kind="vector", targets=("a", "b"), input_size=(8, 8), channels="gray",
                           mean=(0.5,), std=(0.25,))
    generate_c(first, tmp_path / "a", prefix="model_a")
    generate_c(second, tmp_path / "b", prefix="model_b")
    main = tmp_path / "main.c"
    main.write_text(r"""
#include <stdio.h>
#include "a/model.h"
#include "b/model.h"
int main(void)
{
    static uint8_t frame[32 * 32 * 3];
    float a[MODEL_A_N_OUTPUTS], b[MODEL_B_N_OUTPUTS];
    for (int i = 0; i < 32 * 32 * 3; ++i) frame[i] = (uint8_t)(i % 251);
    if (model_a_predict_rgb888(frame, 32, 32, 96, a) || model_b_predict_gray8(frame, 32, 32, 96, b)) return 1;
    if (model_a_predict_rgb888(NULL, 32, 32, 96, a) != MODEL_A_ERR_NULL) return 1;
    if (model_b_predict_gray8(frame, 32, 32, 31, b) != MODEL_B_ERR_SIZE) return 1;
    printf("%s %.6f %s %.6f %.6f\n", model_a_output_names[0], a[0], model_b_kind, b[0], b[1]);
    return 0;
}
""")
    exe = tmp_path / "main"
    result = subprocess.run([_gcc(), *CFLAGS, "-I", str(tmp_path), str(main), str(tmp_path / "a" / "model.c"),
                             str(tmp_path / "b" / "model.c"), "-lm", "-o", str(exe)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    name, a, kind, b0, b1 = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.split()
    assert (name, kind) == ("value", "vector")
    # the "mean" test model: output j = (j + 1) * (mean of the normalized input) + j
    assert float(b1) - 1.0 == pytest.approx(2.0 * float(b0), abs=1e-4)
    assert float(a) != float(b0)  # two different networks ran


# --------------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------------

def test_unsupported_op_is_a_clear_error(tmp_path):
    from onnx import TensorProto, helper

    node = helper.make_node("LRN", ["image"], ["norm"], size=3, name="lrn_1")
    pool = helper.make_node("GlobalAveragePool", ["norm"], ["pooled"])
    flat = helper.make_node("Flatten", ["pooled"], ["value"])
    graph = helper.make_graph([node, pool, flat], "g",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("value", TensorProto.FLOAT, ["N", 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    embed_card(model, ModelCard(kind="vector", targets=("r", "g", "b"), input_size=(8, 8)))
    path = tmp_path / "lrn.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ModelFileError, match=r"LRN node 'lrn_1': op 'LRN' is not supported by the C generator"):
        generate_c(path, tmp_path / "c")
    assert not (tmp_path / "c").exists()


def test_mismatched_expectations_are_clear_errors(exported_models, model_factory, tmp_path):
    card, fp32, int8 = exported_models["conv"]
    with pytest.raises(ModelFileError, match="expected an int8 QDQ model"):
        generate_c(fp32, tmp_path / "c", int8=True)
    with pytest.raises(ModelFileError, match="expected a float model"):
        generate_c(int8, tmp_path / "c", int8=False)
    with pytest.raises(ModelFileError, match="the card does not belong to this model"):
        generate_c(fp32, tmp_path / "c", card=card.with_(input_size=(32, 32)))
    with pytest.raises(EdgeregError, match="not a C identifier"):
        generate_c(fp32, tmp_path / "c", prefix="my-model")
    with pytest.raises(ModelFileError, match="model file not found"):
        generate_c(tmp_path / "missing.onnx", tmp_path / "c")


# --------------------------------------------------------------------------------------------------
# the registry's real models and the export CLI
# --------------------------------------------------------------------------------------------------

def _transform(kind: str):
    from edgereg.training.regressor import OutputTransform

    n = {"scalar": 1, "vector": 2, "distribution": 3, "coords": 2, "angle": 1}[kind]
    if kind == "scalar":
        return OutputTransform(kind, n, lo=(80.0,), hi=(350.0,))
    if kind == "vector":
        return OutputTransform(kind, n, mean=(0.0, 1.0), std=(1.0, 2.0))
    return OutputTransform(kind, n)


def _registry():
    try:
        from edgereg.training.models import list_models
    except ImportError:
        return []
    return list_models()


@pytest.mark.parametrize("model_name", _registry())
def test_registered_model_compiles_and_matches(model_name, tmp_path):
    """Every registered model: its Regressor export (output transform included) in C, fp32 and int8."""
    from edgereg.training.models import create_model, model_entry
    from edgereg.training.regressor import Regressor

    torch.set_num_threads(1)
    torch.manual_seed(0)
    entry = model_entry(model_name)
    kind = entry.kinds[0]
    transform = _transform(kind)
    targets = tuple(f"t{i}" for i in range(transform.n_targets))
    c, (h, w) = entry.in_channels, (min(32, entry.input_size[0]), min(32, entry.input_size[1]))  # fast
    try:
        model = create_model(model_name, n_outputs=transform.n_outputs, kind=kind, input_size=(h, w))
    except ShapeError:  # a model that needs its own size
        (h, w) = entry.input_size
        model = create_model(model_name, n_outputs=transform.n_outputs, kind=kind, input_size=(h, w))
    path = Regressor(model, transform).export_onnx(tmp_path / "model.onnx")
    card = ModelCard(kind=kind, targets=targets, input_size=(h, w), channels=entry.channels, mean=(0.5,) * c,
                     std=(0.25,) * c, range=((80.0, 350.0),) if kind == "scalar" else None)
    model_proto = onnx.load(str(path))
    embed_card(model_proto, card)
    onnx.save(model_proto, str(path))
    x = random_inputs(card, 1)
    for precision, source in (("fp32", path), ("int8", quantize(path, tmp_path / "model.int8.onnx", card, n=4))):
        try:
            generate_c(source, tmp_path / precision)
        except ModelFileError as exc:
            assert "not supported by the C generator" in str(exc)
            pytest.xfail(f"{model_name} {precision}: {exc}")
        got = run_driver(compile_driver(tmp_path / precision), ["infer"], x.tobytes(), len(targets))
        level = "ORT_ENABLE_ALL" if precision == "fp32" else "ORT_ENABLE_BASIC"
        expected = ort_run(source, x, level=level)
        # float: the same sums in another order; int8: one step where the hardware rounds (int8_tolerance)
        slack = 0.0 if precision == "fp32" else int8_tolerance(source, x) * 1.001
        assert (np.abs(got - expected) <= slack + 1e-4 * np.maximum(1.0, np.abs(expected))).all(), \
            f"{model_name} {precision}: {got} vs {expected}"


@pytest.mark.slow
def test_export_cli_c_flag_writes_code_that_compiles_and_agrees(assay_run, assay_data, tmp_path):
    """`edgereg export RUN --int8 --c` on a real trained run: the generated C of each written model
    compiles and reads the dataset's own photos (crop, resize, mask, network) as the Predictor does."""
    from edgereg.card import read_card
    from edgereg.cli.main import main
    from edgereg.predictor import Predictor
    from edgereg.preprocess import prepare_frames, preprocess_batch, read_image

    out = tmp_path / "models"
    code = main(["export", str(assay_run), "--out", str(out), "--int8", "--c", "--calib-method", "minmax",
                 "--calib-images", "32", "--no-speed"])
    assert code in (0, 1)  # 1: the int8 gate refused the int8 model, and only the fp32 C exists
    frames = [read_image(p) for p in sorted(assay_data.rglob("*.png"))[:4]]
    written = [(c_dir, name) for c_dir, name in (("c", "model.onnx"), ("c_int8", "model.int8.onnx"))
               if (out / name).exists()]
    assert written and written[0][1] == "model.onnx"
    for c_dir, name in written:
        exe = compile_driver(out / c_dir)
        card = read_card(out / name)
        lo, hi = card.range[0]
        # int8: the QDQ graph as written (basic optimizations); see the module docstring
        predictor = Predictor(out / name, tta="none", graph_optimization="all" if c_dir == "c" else "basic")
        for frame in frames:
            height, width = frame.shape[:2]
            rgb = np.ascontiguousarray(frame[..., ::-1]).tobytes()
            got = run_driver(exe, ["predict", str(width), str(height), "3"], rgb, len(card.targets))
            expected = predictor.predict([frame]).values
            allowed = 1e-4 * (hi - lo)  # float: preprocessing and sums in another order
            if c_dir == "c_int8":  # plus one step of the last int8 tensor, where the CPU rounds it
                x = preprocess_batch(prepare_frames([frame], predictor.config)[0], predictor.config)
                allowed = allowed + int8_tolerance(out / name, x) * 1.001
            assert (np.abs(got - expected) <= allowed).all(), f"{c_dir}: {got} vs {expected} (allowed {allowed})"
