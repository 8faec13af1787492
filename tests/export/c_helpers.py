"""Helpers of the C generator tests: compile generated code with gcc, run it, and the test models.

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
import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from edgereg.core.card import ModelCard
from edgereg.export.card_io import embed_card

nn = torch.nn
F = torch.nn.functional

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


# test models: plain torch modules using exactly the ops the C generator supports

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


def export_test_models(root: Path, names=None) -> dict:
    """name -> (card, fp32 path, int8 path) for the test models in CASES (all, or ``names``)."""
    torch.set_num_threads(1)
    models = {}
    for name, (cls, card_fields, _) in CASES.items():
        if names is not None and name not in names:
            continue
        torch.manual_seed(0)
        card = ModelCard(input_size=(16, 16), **card_fields)
        fp32 = export(cls(), root / f"{name}.onnx", card)
        models[name] = (card, fp32, quantize(fp32, root / f"{name}.int8.onnx", card))
    return models


def random_inputs(card: ModelCard, n: int, seed: int = 7) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, card.n_channels, *card.input_size)).astype(np.float32)
