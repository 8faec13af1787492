"""Output transforms (ranges, round trips, the ONNX atan2), heads and losses."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from edgereg.errors import DatasetError, EdgeregError, ShapeError
from edgereg.training.models import create_model, default_model
from edgereg.training.targets.angle_link import atan2
from edgereg.training.targets.heads import HEAD_STYLES, make_head
from edgereg.training.targets.losses import LOSSES, default_loss, loss_kinds, make_loss
from edgereg.training.targets.regressor import OutputTransform, Regressor

torch.set_num_threads(1)


class PassThrough(nn.Module):
    """A stand-in model whose raw output is its input pixels: ``(B, n, 1, 1) -> (B, n)``."""

    def __init__(self, n_outputs: int):
        super().__init__()
        self.input_shape = (n_outputs, 1, 1)
        self.unused = nn.Parameter(torch.zeros(1))  # a device for encode_targets

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.flatten(1)  # (B,n,1,1) -> (B,n)


def physical(transform: OutputTransform, raw: np.ndarray) -> np.ndarray:
    regressor = Regressor(PassThrough(transform.n_outputs), transform).eval()
    with torch.no_grad():
        return regressor(torch.as_tensor(raw, dtype=torch.float32)[:, :, None, None]).numpy()


EXTREME_RAW = np.array([[-1e4], [-30.0], [-1.0], [0.0], [1.0], [30.0], [1e4]], dtype=np.float32)


def test_scalar_output_stays_inside_its_range():
    transform = OutputTransform("scalar", 1, lo=(80.0,), hi=(350.0,))
    values = physical(transform, EXTREME_RAW)
    assert values.min() >= 80.0 and values.max() <= 350.0
    assert values[3, 0] == pytest.approx(215.0)  # logit 0 = mid-range
    assert np.all(np.diff(values[:, 0]) >= 0)


def test_distribution_output_is_a_probability_vector():
    raw = np.random.default_rng(0).normal(scale=20.0, size=(6, 5)).astype(np.float32)
    values = physical(OutputTransform("distribution", 5), raw)
    assert values.min() >= 0.0
    np.testing.assert_allclose(values.sum(axis=1), 1.0, atol=1e-6)


def test_coords_output_stays_in_the_unit_square():
    raw = np.array([[-0.5, 0.25], [1.5, 0.75]], dtype=np.float32)
    np.testing.assert_allclose(physical(OutputTransform("coords", 2), raw), [[0.0, 0.25], [1.0, 0.75]])


def test_angle_output_is_in_0_360_degrees():
    rng = np.random.default_rng(1)
    edges = [[-1e-9, 1.0], [0.0, 1.0], [0.0, -1.0]]  # (sin, cos): just below 0 degrees, 0, 180
    raw = np.concatenate([rng.normal(size=(200, 2)), edges]).astype(np.float32)
    values = physical(OutputTransform("angle", 1), raw)
    assert values.min() >= 0.0 and values.max() < 360.0
    assert values[-2, 0] == 0.0 and values[-1, 0] == pytest.approx(180.0)


@pytest.mark.parametrize(
    ("transform", "targets"),
    [
        (OutputTransform("scalar", 2, lo=(80.0, 0.0), hi=(350.0, 1.0)),
         [[81.0, 0.5], [349.0, 0.01], [200.0, 0.99]]),
        (OutputTransform("vector", 2, mean=(5.0, -1.0), std=(2.0, 0.1)),
         [[5.0, -1.0], [100.0, 3.0], [-7.5, 0.0]]),
        (OutputTransform("distribution", 3), [[0.2, 0.3, 0.5], [0.0, 0.5, 0.5], [0.98, 0.01, 0.01]]),
        (OutputTransform("coords", 2), [[0.1, 0.9], [0.5, 0.5], [0.999, 0.0]]),
        (OutputTransform("angle", 2), [[0.0, 359.5], [90.0, 180.0], [271.25, 45.0]]),
    ],
    ids=lambda v: v.kind if isinstance(v, OutputTransform) else "",
)
def test_forward_inverts_the_target_encoding(transform, targets):
    """A raw output that matches the encoded target exactly decodes to the physical target."""
    targets = np.asarray(targets)
    encoded = transform.encode(targets)
    assert encoded.shape == (len(targets), transform.n_outputs)
    if transform.kind == "scalar":
        raw = torch.logit(encoded.double()).float()
    elif transform.kind == "distribution":
        raw = torch.log(encoded.clamp_min(1e-12))
    else:
        raw = encoded
    decoded = physical(transform, raw.numpy())
    if transform.kind == "angle":
        difference = (decoded - targets + 180.0) % 360.0 - 180.0
        assert np.abs(difference).max() < 1e-3
    else:
        np.testing.assert_allclose(decoded, targets, rtol=1e-4, atol=1e-5)


def test_atan2_matches_numpy_in_every_quadrant_and_on_the_axes():
    rng = np.random.default_rng(2)
    points = [rng.normal(size=(2, 2000)) * 10.0 ** rng.uniform(-6, 6, size=(1, 2000))]
    axes = [[0.0, 1.0], [0.0, -1.0], [1.0, 0.0], [-1.0, 0.0], [3e-7, -2.0], [-4.0, 1e-8],
            [1e-30, -1e-30], [-3e30, -2e30]]  # (y, x); the last two would under/overflow x*x + y*y
    points.append(np.asarray(axes).T)
    y, x = np.concatenate(points, axis=1)
    got = atan2(torch.tensor(y, dtype=torch.float32), torch.tensor(x, dtype=torch.float32)).numpy()
    expected = np.arctan2(y.astype(np.float32), x.astype(np.float32))
    np.testing.assert_allclose(got, expected, atol=2e-6)
    assert float(atan2(torch.tensor([0.0]), torch.tensor([0.0]))[0]) == 0.0


def test_angle_output_is_exported_with_onnx_ops_that_match_numpy(tmp_path):
    rng = np.random.default_rng(3)
    pairs = np.concatenate([rng.normal(size=(500, 2)), [[0.0, 1.0], [1.0, 0.0], [0.0, -1.0], [-1.0, 0.0],
                                                        [-1e-6, -1.0], [1e-6, -1.0]]]).astype(np.float32)
    regressor = Regressor(PassThrough(2), OutputTransform("angle", 1))
    path = regressor.export_onnx(tmp_path / "angle.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(["value"], {"image": pairs[:, :, None, None]})[0][:, 0]
    expected = np.degrees(np.arctan2(pairs[:, 0], pairs[:, 1])) % 360.0
    difference = (got - expected + 180.0) % 360.0 - 180.0
    assert np.abs(difference).max() < 1e-4
    assert got.min() >= 0.0 and got.max() < 360.0


def test_from_targets_fits_the_training_split_and_survives_json():
    targets = np.array([[1.0, 10.0], [3.0, 30.0], [5.0, 20.0]])
    vector = OutputTransform.from_targets("vector", targets)
    np.testing.assert_allclose(vector.mean, targets.mean(axis=0))
    np.testing.assert_allclose(vector.std, targets.std(axis=0))
    scalar = OutputTransform.from_targets("scalar", targets, value_range=[(0.0, 6.0), (5.0, 35.0)])
    assert scalar.lo == (0.0, 5.0) and scalar.hi == (6.0, 35.0)
    assert OutputTransform.from_targets("scalar", targets, value_range=(0, 40)).hi == (40.0, 40.0)
    for transform in (vector, scalar, OutputTransform.from_targets("angle", targets)):
        assert OutputTransform.from_dict(json.loads(json.dumps(transform.to_dict()))) == transform
    assert OutputTransform.from_targets("angle", targets).n_outputs == 4


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: OutputTransform.from_targets("vector", [[1.0], [1.0]]), DatasetError, "constant target"),
        (lambda: OutputTransform.from_targets("scalar", [[1.0], [2.0]]), EdgeregError, "needs value_range"),
        (lambda: OutputTransform("scalar", 1, lo=(5.0,), hi=(5.0,)), EdgeregError, "lo < hi"),
        (lambda: OutputTransform("coords", 3), ShapeError, "even number"),
        (lambda: OutputTransform("vectr", 1), EdgeregError, "did you mean 'vector'"),
        (lambda: OutputTransform("distribution", 2).encode(np.zeros((1, 3))), ShapeError, r"\(N, 2\)"),
        (lambda: OutputTransform("distribution", 2).encode(np.zeros((1, 2))), DatasetError, "sums to 0"),
        (lambda: OutputTransform("coords", 2).encode([[np.nan, 0.5]]), DatasetError, "NaN"),
        (lambda: Regressor(create_model("mlp", n_outputs=1, kind="vector"),
                           OutputTransform("vector", 2, mean=(0, 0), std=(1, 1))), ShapeError, "needs 2"),
    ],
)
def test_transform_errors_say_what_and_how_to_fix(call, error, message):
    with pytest.raises(error, match=message):
        call()


@pytest.mark.parametrize("kind", ["scalar", "vector", "distribution", "coords", "angle"])
@pytest.mark.parametrize("style", HEAD_STYLES)
def test_heads_map_feature_maps_to_raw_outputs(kind, style):
    n_outputs = 4
    if style == "soft_argmax" and kind != "coords":
        with pytest.raises(EdgeregError, match="predicts coordinates"):
            make_head(kind, 6, n_outputs, style=style, feature_size=(5, 7))
        return
    head = make_head(kind, 6, n_outputs, style=style, feature_size=(5, 7))
    out = head(torch.randn(3, 6, 5, 7))
    assert out.shape == (3, n_outputs) and torch.isfinite(out).all()


def test_soft_argmax_head_returns_the_peak_position_in_unit_coordinates():
    head = make_head("coords", 1, 4, feature_size=(8, 12))  # two points
    with torch.no_grad():
        head.heatmaps.weight.copy_(torch.tensor([1.0, -1.0]).reshape(2, 1, 1, 1) * 50.0)
        head.heatmaps.bias.zero_()
    features = torch.zeros(1, 1, 8, 12)
    features[0, 0, 2, 9] = 1.0  # point 0 peaks at row 2, column 9
    point0 = head(features)[0, :2]
    torch.testing.assert_close(point0, torch.tensor([(9 + 0.5) / 12, (2 + 0.5) / 8]), atol=1e-4, rtol=0)
    features = torch.zeros(1, 1, 8, 12)
    features[0, 0, 1, 2] = features[0, 0, 5, 10] = 1.0  # two equal peaks: their midpoint
    torch.testing.assert_close(head(features)[0, :2], torch.tensor([6.5 / 12, 3.5 / 8]), atol=1e-4, rtol=0)


def test_pooled_heads_ignore_where_a_feature_is():
    """GAP heads see what is in the image, not where: a moved feature gives the same output."""
    for style in ("pool", "location"):
        head = make_head("distribution", 3, 5, style=style)
        features = torch.zeros(1, 3, 6, 6)
        moved = features.clone()
        features[0, :, 1, 1] = moved[0, :, 4, 2] = torch.tensor([1.0, -2.0, 0.5])
        torch.testing.assert_close(head(features), head(moved))
    head = make_head("distribution", 3, 5, style="flatten", feature_size=(6, 6))
    assert not torch.allclose(head(features), head(moved))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"style": "flat"}, "did you mean 'flatten'"), ({"style": "flatten"}, "needs the feature map size")],
)
def test_head_errors(kwargs, message):
    with pytest.raises(EdgeregError, match=message):
        make_head("scalar", 4, 1, **kwargs)


def tiny_problem(kind: str, seed: int = 0):
    """One batch of 16 random 1x12x12 images, random targets of ``kind``, the kind's default model."""
    rng = np.random.default_rng(seed)
    n, t = 16, 3
    if kind == "scalar":
        transform = OutputTransform(kind, t, lo=(0.0,) * t, hi=(10.0,) * t)
        targets = rng.uniform(0.5, 9.5, (n, t))
    elif kind == "vector":
        targets = rng.normal(3.0, 2.0, (n, t))
        transform = OutputTransform.from_targets(kind, targets)
    elif kind == "distribution":
        transform, targets = OutputTransform(kind, t), rng.dirichlet(np.ones(t), n)
    elif kind == "coords":
        transform, targets = OutputTransform(kind, 2), rng.uniform(0.05, 0.95, (n, 2))
    elif kind == "count":
        targets = rng.poisson(6.0, (n, t)).astype(np.float64)
        transform = OutputTransform.from_targets(kind, targets)
    else:
        transform, targets = OutputTransform(kind, 1), rng.uniform(0, 360, (n, 1))
    torch.manual_seed(seed)
    model = create_model(default_model(kind), n_outputs=transform.n_outputs, kind=kind, in_channels=1,
                         input_size=(12, 12))
    images = torch.from_numpy(rng.normal(size=(n, 1, 12, 12)).astype(np.float32))
    return Regressor(model, transform), images, targets


LOSS_CASES = [(name, kind) for name in LOSSES for kind in loss_kinds(name)]


@pytest.mark.parametrize(("name", "kind"), LOSS_CASES, ids=[f"{n}-{k}" for n, k in LOSS_CASES])
def test_each_loss_falls_when_fitting_one_batch(name, kind):
    regressor, images, targets = tiny_problem(kind)
    encoded = regressor.encode_targets(targets)
    loss_fn = make_loss(name, kind)
    # Soft-label cross-entropy cannot go below the targets' entropy, the Poisson likelihood not below
    # its value at rate = target (t - t log t); measure the part above that floor.
    floor = 0.0
    if name == "soft_ce":
        floor = float(-(encoded * encoded.clamp_min(1e-12).log()).sum(1).mean())
    elif name == "poisson":
        floor = float((encoded - torch.special.xlogy(encoded, encoded)).mean())
    optimizer = torch.optim.Adam(regressor.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        loss = loss_fn(regressor.forward_raw(images), encoded)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item() - floor)
    assert losses[-1] < 0.5 * losses[0], losses[::10]


def test_losses_are_zero_or_the_entropy_at_a_perfect_prediction():
    targets = np.array([[0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    p = OutputTransform("distribution", 3).encode(targets)
    perfect = torch.log(p)
    entropy = float(-(p * p.log()).sum(1).mean())
    assert float(make_loss("kl", "distribution")(perfect, p)) == pytest.approx(0.0, abs=1e-6)
    assert float(make_loss("soft_ce", "distribution")(perfect, p)) == pytest.approx(entropy, abs=1e-6)
    for name in ("mse", "huber", "mse_logmse"):
        assert float(make_loss(name, "distribution")(perfect, p)) == pytest.approx(0.0, abs=1e-6)
    u = OutputTransform("scalar", 1, lo=(80.0,), hi=(350.0,)).encode([[100.0], [300.0]])
    for name in ("mse", "huber", "mse_logmse"):
        assert float(make_loss(name, "scalar")(torch.logit(u), u)) == pytest.approx(0.0, abs=1e-6)
    wrong = torch.logit(u) + 1.0
    with_log_term = float(make_loss("mse_logmse", "scalar")(wrong, u))
    assert with_log_term > float(make_loss("mse", "scalar")(wrong, u)) > 0
    sin_cos = OutputTransform("angle", 1).encode([[30.0], [300.0]])
    assert float(make_loss(None, "angle")(sin_cos, sin_cos)) == 0.0


def test_default_losses_follow_the_design_table():
    assert default_loss("distribution") == "soft_ce"
    assert {default_loss(k) for k in ("scalar", "vector", "coords", "angle")} == {"mse"}
    assert isinstance(make_loss(None, "distribution"), type(make_loss("soft_ce", "distribution")))


@pytest.mark.parametrize(
    ("name", "kind", "message"),
    [
        ("msa", "scalar", "did you mean 'mse'"),
        ("soft_ce", "scalar", "does not fit kind 'scalar'"),
        ("mse_logmse", "vector", "use one of mse, huber"),
        ("kl", "angle", "does not fit kind 'angle'"),
        ("mse", "scaler", "did you mean 'scalar'"),
    ],
)
def test_loss_errors_say_what_and_how_to_fix(name, kind, message):
    with pytest.raises(EdgeregError, match=message):
        make_loss(name, kind)
