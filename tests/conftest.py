"""Shared fixtures: tiny real ONNX models with edgereg cards, built with onnx.helper (no torch)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from edgereg.core.card import ModelCard


def make_onnx_model(path: str | Path, card: ModelCard, *, fn: str = "mean", opset: int = 17) -> Path:
    """Write a small ONNX model whose outputs are exact, known functions of the input.

    fn:
        "mean": ``value = channel_means @ W + b`` with W = ones/C * (j + 1), b = j (T outputs),
            i.e. output j = (j + 1) * mean over pixels and channels + j.
        "softmax": softmax of the "mean" outputs (for distributions).
        "centroid": for coords: the (u, v) centroid in [0, 1] of ``relu(channel 0)`` — bright
            spots on a dark background give their position.
    The input is ``image (N, C, H, W)`` with a dynamic batch axis, the output ``value (N, T)``.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgereg.export.card_io import embed_card

    c = 3 if card.channels == "rgb" else 1
    h, w = card.input_size
    t = len(card.targets)
    nodes, inits = [], []
    if fn in ("mean", "softmax"):
        weight = np.stack([np.full(c, (j + 1) / c) for j in range(t)], axis=1).astype(np.float32)
        bias = np.arange(t, dtype=np.float32)
        inits += [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "B")]
        nodes += [
            helper.make_node("ReduceMean", ["image"], ["m4"], axes=[2, 3], keepdims=0),
            helper.make_node("MatMul", ["m4", "W"], ["mw"]),
            helper.make_node("Add", ["mw", "B"], ["value" if fn == "mean" else "logits"]),
        ]
        if fn == "softmax":
            nodes.append(helper.make_node("Softmax", ["logits"], ["value"], axis=1))
    elif fn == "centroid":
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
        inits += [
            numpy_helper.from_array(((xs + 0.5) / w).reshape(1, h * w), "GX"),
            numpy_helper.from_array(((ys + 0.5) / h).reshape(1, h * w), "GY"),
            numpy_helper.from_array(np.array([0], dtype=np.int64), "zero"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "one"),
            numpy_helper.from_array(np.array([-1, h * w], dtype=np.int64), "flat"),
        ]
        nodes += [
            helper.make_node("Slice", ["image", "zero", "one", "one"], ["ch0"]),  # (N,1,H,W)
            helper.make_node("Relu", ["ch0"], ["pos"]),
            helper.make_node("Reshape", ["pos", "flat"], ["pflat"]),  # (N,1,H,W) -> (N,H*W)
            helper.make_node("ReduceSum", ["pflat", "one"], ["total"], keepdims=1),
            helper.make_node("Mul", ["pflat", "GX"], ["wx"]),
            helper.make_node("Mul", ["pflat", "GY"], ["wy"]),
            helper.make_node("ReduceSum", ["wx", "one"], ["sx"], keepdims=1),
            helper.make_node("ReduceSum", ["wy", "one"], ["sy"], keepdims=1),
            helper.make_node("Div", ["sx", "total"], ["u"]),
            helper.make_node("Div", ["sy", "total"], ["v"]),
            helper.make_node("Concat", ["u", "v"], ["value"], axis=1),
        ]
    else:
        raise ValueError(fn)
    graph = helper.make_graph(
        nodes, "edgereg_test_model",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", c, h, w])],
        [helper.make_tensor_value_info("value", TensorProto.FLOAT, ["N", t])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    embed_card(model, card)
    path = Path(path)
    onnx.save(model, str(path))
    return path


@pytest.fixture
def model_factory(tmp_path):
    """``model_factory(card_kwargs..., fn="mean") -> Path`` of a tiny model in tmp_path."""
    counter = iter(range(10_000))

    def factory(*, fn: str = "mean", **card_kwargs) -> Path:
        defaults = dict(kind="scalar", targets=("value",), input_size=(16, 16))
        defaults.update(card_kwargs)
        return make_onnx_model(tmp_path / f"model{next(counter)}.onnx", ModelCard(**defaults), fn=fn)

    return factory


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


BLOCK_TORCH = """
import sys
class _BlockTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")
sys.meta_path.insert(0, _BlockTorch())
"""


@pytest.fixture
def run_without_torch():
    """``run(script, timeout=120)``: run Python source in a fresh interpreter where ``import torch``
    raises ImportError (as on a machine without the train extra); returns the CompletedProcess
    with text stdout/stderr. ``sys`` is imported for the script."""
    def run(script: str, *, timeout: float = 120) -> subprocess.CompletedProcess:
        source = BLOCK_TORCH + textwrap.dedent(script)
        return subprocess.run([sys.executable, "-c", source], capture_output=True, text=True, timeout=timeout)

    return run
