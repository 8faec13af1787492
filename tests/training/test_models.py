"""The model registry: every registered model runs, stays compact and exports to ONNX that agrees
with torch; the seed models match the seeds; the registry's errors; `edgereg models`."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from edgereg.cli.main import main
from edgereg.errors import EdgeregError, ShapeError
from edgereg.training.models import (
    count_parameters,
    create_model,
    default_model,
    list_models,
    model_entry,
    register_model,
    registry,
)
from edgereg.training.models.layers import DilatedConv2d
from edgereg.training.targets.regressor import OutputTransform, Regressor

torch.set_num_threads(1)

N_TARGETS = {"scalar": 1, "vector": 3, "distribution": 5, "coords": 4, "angle": 2, "count": 2}  # coords: 2 points


def make_transform(kind: str) -> OutputTransform:
    t = N_TARGETS[kind]
    if kind == "scalar":
        return OutputTransform(kind, t, lo=(80.0,), hi=(350.0,))
    if kind == "vector":
        return OutputTransform(kind, t, mean=(1.0, -2.0, 30.0), std=(0.5, 2.0, 10.0))
    if kind == "count":
        return OutputTransform(kind, t, mean=(4.0, 12.0))
    return OutputTransform(kind, t)


def run_onnx(path, images: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["value"], {"image": images})[0]


def assert_outputs_agree(kind: str, got: np.ndarray, expected: np.ndarray) -> None:
    """Relative 1e-4 agreement; angles compared on the circle (359.99999 and 0 are 1e-5 apart)."""
    scale = max(1.0, float(np.abs(expected).max()))
    difference = got - expected
    if kind == "angle":
        difference = (difference + 180.0) % 360.0 - 180.0
    assert np.abs(difference).max() <= 1e-4 * scale, np.abs(difference).max()


CASES = [(name, kind) for name in list_models() for kind in model_entry(name).kinds]


@pytest.mark.parametrize(("name", "kind"), CASES, ids=[f"{n}-{k}" for n, k in CASES])
def test_every_model_runs_and_exports_to_onnx_that_agrees_with_torch(name, kind, tmp_path, randomize_batchnorm):
    torch.manual_seed(0)
    transform = make_transform(kind)
    model = create_model(name, n_outputs=transform.n_outputs, kind=kind)
    regressor = Regressor(model, transform)
    images = torch.randn(3, *model.input_shape)

    raw = regressor.forward_raw(images)  # train mode: BN uses batch statistics
    assert raw.shape == (3, transform.n_outputs)
    assert torch.isfinite(raw).all()
    raw.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)

    randomize_batchnorm(regressor)
    regressor.eval()
    with torch.no_grad():
        expected = regressor(images).numpy()
    assert expected.shape == (3, transform.n_targets)
    assert np.isfinite(expected).all()

    path = regressor.export_onnx(tmp_path / "model.onnx")
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["image"] and [o.name for o in graph.output] == ["value"]
    assert "BatchNormalization" not in {node.op_type for node in graph.node}  # folded
    assert_outputs_agree(kind, run_onnx(path, images.numpy()), expected)
    assert run_onnx(path, images[:1].numpy()).shape == (1, transform.n_targets)  # dynamic batch


@pytest.mark.parametrize("name", list_models())
def test_every_model_is_compact(name):
    entry = model_entry(name)
    kind = "scalar" if "scalar" in entry.kinds else entry.kinds[0]
    model = create_model(name, n_outputs=make_transform(kind).n_outputs, kind=kind)
    assert 0 < count_parameters(model) < 1_000_000


OPTION_CASES = [
    ("cnn_small", "coords", {"coordconv": True, "head": "pool"}),
    ("cnn_small", "scalar", {"head": "flatten", "width": 8}),
    ("cnn_small", "distribution", {"head": "pool", "coordconv": True}),
    ("resnet_tiny", "vector", {"blocks": (2, 1, 1)}),
    ("msd_small", "coords", {"stride": 1, "depth": 4}),
    ("mobilenet_tiny", "angle", {"expansion": 2}),
    ("heatmap_small", "coords", {"channels": 6, "dilations": (1, 3)}),
    ("mlp", "vector", {"hidden": (32,)}),
]


@pytest.mark.parametrize(("name", "kind", "options"), OPTION_CASES,
                         ids=[f"{c[0]}-{c[1]}" for c in OPTION_CASES])
def test_model_options_build_and_export(name, kind, options, tmp_path, randomize_batchnorm):
    transform = make_transform(kind)
    regressor = Regressor(create_model(name, n_outputs=transform.n_outputs, kind=kind, **options), transform)
    randomize_batchnorm(regressor, seed=1)
    images = torch.randn(2, *regressor.input_shape)
    regressor.train()
    path = regressor.export_onnx(tmp_path / "model.onnx")
    assert regressor.training  # export restores the mode
    regressor.eval()
    with torch.no_grad():
        expected = regressor(images).numpy()
    assert_outputs_agree(kind, run_onnx(path, images.numpy()), expected)


def test_models_take_gray_inputs_and_other_sizes():
    model = create_model("cnn_small", n_outputs=1, kind="scalar", in_channels=1, input_size=(40, 56))
    assert model.input_shape == (1, 40, 56)
    assert model(torch.randn(2, 1, 40, 56)).shape == (2, 1)
    model = create_model("vgg_seed000", n_outputs=2, kind="coords", in_channels=1, input_size=(32, 48))
    assert model(torch.randn(2, 1, 32, 48)).shape == (2, 2)


def test_vgg_seed000_has_the_seed_answers_533344_weights():
    # Seed 000's answer counts 9*(3*32 + 2*32*32 + 32*64 + 2*64*64 + 64*128 + 2*128*128) conv weights,
    # 128*128 + 128*32 for the 1x1 convs and 32*32*32 for the dense layer (biases and BN skipped).
    # That dense term is a 32x32x32 map: a 256x256 input through three 2x2 pools.
    answer = 9 * (3 * 32 + 2 * 32 * 32 + 32 * 64 + 2 * 64 * 64 + 64 * 128 + 2 * 128 * 128)
    answer += 128 * 128 + 128 * 32 + 32 * 32 * 32
    model = create_model("vgg_seed000", n_outputs=1, kind="scalar", input_size=(256, 256))
    weights = sum(p.numel() for n, p in model.named_parameters() if n.endswith("weight") and p.ndim > 1)
    assert weights == answer
    assert abs(count_parameters(model) - answer) / answer < 0.01  # + biases and BN: ~533k
    asked = create_model("vgg_seed000", n_outputs=1, kind="scalar")  # the asker's 64x64 input
    assert count_parameters(model) - count_parameters(asked) == 32 * 32 * 32 - 32 * 8 * 8


def test_base_seed004_reproduces_the_papers_depth_sweep():
    counts = {depth: count_parameters(create_model("base_seed004", n_outputs=1, kind="scalar", depth=depth))
              for depth in (0, 1, 2, 3, 4, 5, 10)}
    # "Base" at 28x28: conv 1->6 5x5, pool, conv 6->12 5x5, pool (12x4x4), FC 192 -> 120 -> 60 -> 1.
    assert counts[0] == (6 * 25 + 6) + (12 * 6 * 25 + 12) + (192 * 120 + 120) + (120 * 60 + 60) + (60 + 1)
    per_layer = 12 * 12 * 3 * 3 + 12  # a padded layer keeps 12x4x4, so the FC layers do not change
    assert all(counts[d] - counts[0] == d * per_layer for d in counts)
    deep = create_model("base_seed004", n_outputs=1, kind="scalar", depth=10)
    assert deep(torch.randn(2, 1, 28, 28)).shape == (2, 1)
    with pytest.raises(EdgeregError, match="depth must be a non-negative integer"):
        create_model("base_seed004", n_outputs=1, kind="scalar", depth=-1)


def test_dilated_conv_trains_through_subgrids_with_the_same_result():
    torch.manual_seed(0)
    conv = DilatedConv2d(3, 5, 3, padding=3, dilation=3)
    images = torch.randn(2, 3, 13, 11)  # sides not multiples of the dilation
    training = conv(images)
    conv.eval()
    torch.testing.assert_close(training, conv(images), rtol=1e-5, atol=1e-5)


def test_defaults_and_listing_by_kind():
    for kind in ("scalar", "vector", "distribution", "coords", "angle"):
        assert default_model(kind) in list_models(kind=kind)
    assert default_model("coords") == "heatmap_small"
    assert "p4m_small" not in list_models(kind="angle")
    assert list_models(kind="scalar") == [n for n in list_models() if "scalar" in model_entry(n).kinds]


def test_register_model_keeps_the_models_facts_next_to_it(monkeypatch):
    monkeypatch.setattr(registry, "_MODELS", dict(registry._MODELS))  # leave the real registry alone

    @register_model
    def mean_linear(*, in_channels, n_outputs, kind, input_size, scale: float = 1.0):
        """A linear map of the channel means (a test model).

        More lines that are not the description.
        """
        return torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                   torch.nn.Linear(in_channels, n_outputs))

    @register_model(input_size=(20, 24), channels="gray", kinds=("vector",), description="gray only")
    def gray_linear(*, in_channels, n_outputs, kind, input_size):
        return mean_linear(in_channels=in_channels, n_outputs=n_outputs, kind=kind, input_size=input_size)

    entry = model_entry("mean_linear")
    assert entry.description == "A linear map of the channel means (a test model)."
    assert entry.options == ("scale",) and entry.input_size == (64, 64) and entry.in_channels == 3
    assert list_models()[-2:] == ["mean_linear", "gray_linear"]
    model = create_model("gray_linear", n_outputs=2, kind="vector")
    assert model.input_shape == (1, 20, 24) and model(torch.zeros(3, 1, 20, 24)).shape == (3, 2)
    assert list_models(kind="scalar").count("gray_linear") == 0
    with pytest.raises(ValueError, match="registered twice"):
        register_model(gray_linear)
    with pytest.raises(TypeError, match="keyword-only"):
        register_model(lambda in_channels, n_outputs, kind, input_size: None)


REGISTRY_ERRORS = [  # changes to a valid call of create_model, the error, what its message says
    ({"name": "cnn_smal"}, EdgeregError, "did you mean 'cnn_small'"),
    ({"name": "p4m_small", "kind": "angle", "n_outputs": 2}, EdgeregError, "does not support kind 'angle'"),
    ({"kind": "scalr"}, EdgeregError, "did you mean 'scalar'"),
    ({"widht": 8}, EdgeregError, "did you mean 'width'"),
    ({"width": -3}, EdgeregError, "option 'width' must be a positive integer"),
    ({"name": "resnet_tiny", "blocks": "2,2"}, EdgeregError, "option 'blocks' must be a positive integer"),
    ({"kind": "coords", "n_outputs": 3}, EdgeregError, "even number"),
    ({"n_outputs": 0}, EdgeregError, "positive integer"),
    ({"in_channels": 4}, ShapeError, r"3 \(rgb\) or 1"),
    ({"name": "vgg_seed000", "input_size": (4, 4)}, ShapeError, "at least 8x8"),
    ({"head": "flat"}, EdgeregError, "did you mean 'flatten'"),
    ({"head": "soft_argmax"}, EdgeregError, "predicts coordinates"),
]


@pytest.mark.parametrize(("changes", "error", "message"), REGISTRY_ERRORS)
def test_registry_errors_say_what_and_how_to_fix(changes, error, message):
    arguments = {"name": "cnn_small", "n_outputs": 1, "kind": "scalar", **changes}
    with pytest.raises(error, match=message):
        create_model(arguments.pop("name"), **arguments)


def test_cli_models_lists_every_model_with_its_parameter_count(capsys):
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for name in list_models():
        entry = model_entry(name)
        kind = "scalar" if "scalar" in entry.kinds else entry.kinds[0]
        params = count_parameters(create_model(name, n_outputs=1 if kind == "scalar" else 2, kind=kind))
        row = next(line for line in lines if line.split()[0] == name)
        assert f"{params:,}" in row.split()
        assert entry.description in row


def test_cli_models_filters_by_kind(capsys):
    assert main(["models", "--kind", "coords"]) == 0
    names = {line.split()[0] for line in capsys.readouterr().out.splitlines()[1:] if line.strip()}
    assert "heatmap_small" in names and "p4m_small" not in names
    with pytest.raises(SystemExit) as exit_info:
        main(["models", "--kind", "nope"])
    assert exit_info.value.code == 2


def test_cli_models_without_torch_names_the_extra_to_install(run_without_torch):
    script = """
        from edgereg.cli.main import main
        sys.exit(main(["models"]))
    """
    result = run_without_torch(script)
    assert result.returncode == 2
    assert "pip install 'edgereg[train]'" in result.stderr
