"""p4m_small: invariant to the 8 rotations/flips of D4 by construction, in torch and in ONNX."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from edgereg.errors import EdgeregError
from edgereg.training.models import create_model, d4
from edgereg.training.models.p4m import P4MConvBNReLU
from edgereg.training.targets.regressor import OutputTransform, Regressor

torch.set_num_threads(1)

STANDARD_OPS = {"Conv", "Relu", "MaxPool", "Reshape", "ReduceMax", "GlobalAveragePool", "Flatten", "Gemm",
                "ReduceMean", "Softmax", "Sigmoid", "Mul", "Add", "Constant"}


def d4_views(images: np.ndarray) -> list[np.ndarray]:
    """The 8 D4 transforms of ``(B, C, H, W)`` images, as edgereg's TTA defines them."""
    views = []
    for g in range(8):
        view = np.rot90(images, g % 4, axes=(2, 3))
        views.append(np.ascontiguousarray(np.flip(view, axis=3) if g >= 4 else view))
    return views


def structured_images(size: int, seed: int = 0) -> np.ndarray:
    """(2, 3, size, size) float32: noise plus a ramp and an off-centre blob, so orientation matters."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:size, 0:size] / size
    ramp = 2.0 * xs - ys  # (H, W)
    blob = 3.0 * np.exp(-((xs - 0.3) ** 2 + (ys - 0.7) ** 2) / 0.01)
    images = rng.normal(size=(2, 3, size, size)) + ramp + blob * rng.uniform(0.5, 1.5, size=(2, 3, 1, 1))
    return images.astype(np.float32)


def onnx_outputs_of_views(regressor: Regressor, path, images: np.ndarray) -> list[np.ndarray]:
    regressor.export_onnx(path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [session.run(["value"], {"image": view})[0] for view in d4_views(images)]


@pytest.mark.parametrize(
    ("kind", "transform", "size"),
    [
        ("vector", OutputTransform("vector", 3, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)), 64),
        ("distribution", OutputTransform("distribution", 5), 28),  # 28 -> 14 -> 7 -> 4: an odd stage
        ("scalar", OutputTransform("scalar", 1, lo=(0.0,), hi=(1.0,)), 30),  # 30 -> 15 -> 8 -> 4
    ],
)
def test_onnx_output_is_invariant_under_all_8_d4_transforms(kind, transform, size, tmp_path, randomize_batchnorm):
    torch.manual_seed(0)
    model = create_model("p4m_small", n_outputs=transform.n_outputs, kind=kind, input_size=(size, size))
    regressor = randomize_batchnorm(Regressor(model, transform))
    images = structured_images(size)
    outputs = onnx_outputs_of_views(regressor, tmp_path / "p4m.onnx", images)
    for output in outputs[1:]:
        np.testing.assert_allclose(output, outputs[0], rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        expected = regressor(torch.from_numpy(images)).numpy()
    np.testing.assert_allclose(outputs[0], expected, rtol=1e-4, atol=1e-5)
    assert np.ptp(outputs[0], axis=0).max() > 1e-3  # different images still give different outputs


def test_non_square_inputs_stay_invariant_to_flips_and_half_turns(randomize_batchnorm):
    transform = OutputTransform("vector", 2, mean=(0.0, 0.0), std=(1.0, 1.0))
    torch.manual_seed(0)
    regressor = randomize_batchnorm(Regressor(create_model("p4m_small", n_outputs=2, kind="vector",
                                                       input_size=(30, 44)), transform))
    images = torch.from_numpy(structured_images(44)[:, :, :30, :])
    with torch.no_grad():
        reference = regressor(images)
        for view in (torch.rot90(images, 2, (2, 3)), images.flip(3), images.flip(2)):
            torch.testing.assert_close(regressor(view), reference, rtol=1e-5, atol=1e-5)


def test_the_invariance_check_catches_a_net_that_is_not_invariant(tmp_path, randomize_batchnorm):
    """Global pooling alone does not make a CNN invariant: the same check fails by far on resnet_tiny."""
    transform = OutputTransform("vector", 3, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    torch.manual_seed(0)
    regressor = randomize_batchnorm(Regressor(create_model("resnet_tiny", n_outputs=3, kind="vector"), transform))
    outputs = onnx_outputs_of_views(regressor, tmp_path / "resnet.onnx", structured_images(64))
    assert max(np.abs(output - outputs[0]).max() for output in outputs[1:]) > 1e-3  # 100x the tolerance


def test_onnx_graph_is_plain_convolutions_with_standard_ops(tmp_path, randomize_batchnorm):
    transform = OutputTransform("vector", 2, mean=(0.0, 0.0), std=(1.0, 1.0))
    regressor = randomize_batchnorm(Regressor(create_model("p4m_small", n_outputs=2, kind="vector"), transform))
    graph = onnx.load(str(regressor.export_onnx(tmp_path / "p4m.onnx"))).graph
    assert {node.domain for node in graph.node} <= {"", "ai.onnx"}
    assert {node.op_type for node in graph.node} <= STANDARD_OPS
    # One Conv per equivariant layer (lifting + 3 group convs): filters and BN are folded constants.
    assert [node.op_type for node in graph.node].count("Conv") == 4


@pytest.mark.parametrize("lifting", [True, False])
def test_layers_are_equivariant_rotating_maps_and_permuting_orientations(lifting):
    torch.manual_seed(0)
    layer = P4MConvBNReLU(2, 3, lifting=lifting).eval()
    channels = 2 if lifting else 2 * 8
    x = torch.randn(1, channels, 9, 9)
    table = d4.cayley_table()
    for t in range(8):
        transformed = d4.transform(x, t)
        if not lifting:  # the input is itself a group feature map: its orientations move too
            transformed = permute_orientations(transformed, table, t)
        expected = permute_orientations(d4.transform(layer(x), t), table, t)
        torch.testing.assert_close(layer(transformed), expected, rtol=1e-4, atol=1e-5)


def permute_orientations(maps: torch.Tensor, table: list[list[int]], t: int) -> torch.Tensor:
    """Move orientation g of each feature to t g: ``(B, C * 8, H, W)`` -> same shape."""
    b, _, h, w = maps.shape
    grouped = maps.reshape(b, -1, 8, h, w)  # (B,C*8,H,W) -> (B,C,8,H,W)
    moved = torch.empty_like(grouped)
    for g in range(8):
        moved[:, :, table[t][g]] = grouped[:, :, g]
    return moved.reshape(b, -1, h, w)  # (B,C,8,H,W) -> (B,C*8,H,W)


def test_folded_batchnorm_matches_training_statistics():
    """With momentum 1 the running statistics are the last batch's: eval (folded) = train output."""
    torch.manual_seed(0)
    layer = P4MConvBNReLU(3, 4, lifting=True)
    layer.bn.momentum = 1.0
    with torch.no_grad():
        layer.bn.weight.uniform_(0.5, 1.5)
        layer.bn.bias.uniform_(-0.5, 0.5)
    x = torch.randn(4, 3, 12, 12)
    training = layer.train()(x)
    folded = layer.eval()(x)
    # running_var is unbiased (N / (N - 1), N = 4 * 8 * 12 * 12), the batch variance biased
    torch.testing.assert_close(folded, training, rtol=1e-3, atol=1e-3)


def test_d4_table_is_the_group_of_the_transforms():
    table = d4.cayley_table()
    inverse = d4.inverses(table)
    probe = torch.randn(5, 5)
    for a in range(8):
        assert table[a][d4.IDENTITY] == table[d4.IDENTITY][a] == a
        assert table[a][inverse[a]] == d4.IDENTITY
        for b in range(8):
            composed = d4.transform(d4.transform(probe, b), a)
            torch.testing.assert_close(composed, d4.transform(probe, table[a][b]))
    assert len({tuple(d4.transform(probe, g).flatten().tolist()) for g in range(8)}) == 8


@pytest.mark.parametrize(
    ("options", "message"),
    [({"kind": "angle", "n_outputs": 2}, "does not support kind 'angle'"),
     ({"kind": "coords", "n_outputs": 2}, "does not support kind 'coords'"),
     ({"kind": "scalar", "n_outputs": 1, "head": "flatten"}, "stays invariant only with a pooled head")],
)
def test_p4m_refuses_what_would_break_its_invariance(options, message):
    with pytest.raises(EdgeregError, match=message):
        create_model("p4m_small", **options)
