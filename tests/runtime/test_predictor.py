"""Predictor: numbers, TTA reductions, providers and errors, on tiny real ONNX models."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edgereg import Predictor
from edgereg.core.kinds import target_kind
from edgereg.core.reduce import unmap_angles
from edgereg.core.tta import parse_tta
from edgereg.errors import CardError, ModelFileError, ProviderError, ShapeError, TTAError


def expected_mean_model(frames, config_mean=0.5, config_std=0.25, n_targets=1):
    """What the "mean" test model returns for frames already at input size (no mask)."""
    norm = (frames.astype(np.float64) / 255 - config_mean) / config_std
    m = norm.mean(axis=(1, 2, 3))
    return np.stack([(j + 1) * m + j for j in range(n_targets)], axis=1)


def test_predict_scalar_matches_the_math(model_factory, rng):
    path = model_factory(targets=("a", "b"), kind="vector", crop="none", input_size=(16, 16))
    predictor = Predictor(path, batch_size=3)
    frames = rng.integers(0, 256, (7, 16, 16, 3), dtype=np.uint8)
    result = predictor.predict(list(frames))
    assert result.names == ("a", "b") and result.spread is None
    np.testing.assert_allclose(result.values, expected_mean_model(frames, n_targets=2), atol=1e-5)
    rows = list(result.rows())
    assert rows[0].keys() == {"a", "b"}


def test_tta_on_invariant_model_gives_same_value_and_zero_spread(model_factory, rng):
    path = model_factory(crop="circle", input_size=(16, 16))
    frames = rng.integers(0, 256, (4, 40, 30, 3), dtype=np.uint8)
    plain = Predictor(path).predict(frames)
    for tta in ("d4", "rot:6"):
        result = Predictor(path, tta=tta).predict(frames)
        if tta == "d4":  # exact transforms: the masked mean is invariant
            np.testing.assert_allclose(result.values, plain.values, atol=1e-5)
            assert result.spread.max() < 1e-5
        else:  # bilinear rotations: close, with a small measured spread
            np.testing.assert_allclose(result.values, plain.values, atol=0.05)


def spot_frame(size, x, y):
    frame = np.zeros((size[0], size[1], 3), np.uint8)
    cv2.circle(frame, (x, y), 2, (255, 255, 255), -1)
    return frame


@pytest.mark.parametrize("tta", ["none", "d4", "rot:4", "rot:7"])
def test_coords_come_back_in_source_pixels_under_every_tta(model_factory, tta):
    path = model_factory(kind="coords", targets=("x", "y"), crop="center", input_size=(32, 32),
                         fn="centroid", mean=(0.1, 0.1, 0.1), std=(0.5, 0.5, 0.5))
    predictor = Predictor(path, tta=tta)
    # a 64x96 frame: the centre square starts at x0 = 16; a spot at (40, 20) in source pixels
    result = predictor.predict([spot_frame((64, 96), 40, 20), spot_frame((64, 96), 30, 50)])
    np.testing.assert_allclose(result.values, [[40, 20], [30, 50]], atol=0.6)
    if tta != "none":
        assert result.spread.shape == (2, 2)


def test_distribution_tta_mean_of_probabilities(model_factory, rng):
    path = model_factory(kind="distribution", targets=("b0", "b1", "b2"), fn="softmax", crop="circle")
    result = Predictor(path, tta="d4").predict(rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8))
    np.testing.assert_allclose(result.values.sum(axis=1), 1.0, atol=1e-6)


def test_angle_reduction_inverts_views():
    spec = parse_tta("d4")
    true = np.array([30.0, 350.0])
    # what each view sees: rotate by t (adds t), then flip (a -> 180 - a) for views 4..7
    seen = true[:, None] + spec.angles_deg()[None]
    seen = np.where(spec.flipped()[None], 180.0 - seen, seen) % 360
    np.testing.assert_allclose(unmap_angles(seen[..., None], spec)[..., 0] % 360,
                               np.repeat(true[:, None], 8, 1), atol=1e-9)
    values, spread = target_kind("angle").reduce_views(seen[..., None], spec)
    np.testing.assert_allclose(values[:, 0], true, atol=1e-9)
    assert spread.max() < 1e-6


def test_coords_reduction_inverts_d4_views():
    spec = parse_tta("d4")
    u, v = 0.2, 0.7
    views = []
    for k in range(8):  # forward map (u, v) through view k as the kernel transforms the image
        uu, vv = u, v
        for _ in range(k % 4):
            uu, vv = vv, 1 - uu
        if k >= 4:
            uu = 1 - uu
        views.append([uu, vv])
    values, spread = target_kind("coords").reduce_views(np.array([views]), spec)
    np.testing.assert_allclose(values, [[u, v]], atol=1e-12)


def test_predict_paths_skips_bad_files(model_factory, tmp_path, rng):
    path = model_factory(input_size=(8, 8))
    files = []
    for i in range(5):
        f = tmp_path / f"img{i}.png"
        cv2.imwrite(str(f), rng.integers(0, 256, (12, 12, 3), dtype=np.uint8))
        files.append(f)
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    files.insert(2, tmp_path / "bad.jpg")
    result, errors = Predictor(path).predict_paths(files)
    assert list(result.index) == [0, 1, 3, 4, 5]
    assert errors[0][0] == 2 and "decodable" in errors[0][2]


def test_errors_are_typed_and_name_the_fix(model_factory, tmp_path):
    with pytest.raises(ModelFileError, match="not found"):
        Predictor(tmp_path / "nope.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"garbage")
    with pytest.raises(ModelFileError, match="not a loadable ONNX"):
        Predictor(junk)
    path = model_factory(input_size=(8, 12), crop="none")
    with pytest.raises(TTAError, match="square"):
        Predictor(path, tta="d4")
    with pytest.raises(TTAError, match="rot:N"):
        Predictor(path, tta="d5")
    with pytest.raises(ProviderError, match="available: .*CPUExecutionProvider"):
        Predictor(path, providers="cuda")
    with pytest.raises(ShapeError, match="wrap it in a list"):
        Predictor(path).predict(np.zeros((8, 12, 3), np.uint8))
    with pytest.raises(ShapeError, match="uint8"):
        Predictor(path).predict([np.zeros((8, 12, 3), np.float32)])


def test_model_without_card_or_with_wrong_card(tmp_path, model_factory):
    import onnx

    path = model_factory(input_size=(8, 8))
    model = onnx.load(str(path))
    del model.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(model, str(bare))
    with pytest.raises(CardError, match="no edgereg model card"):
        Predictor(bare)
    from edgereg.core.card import ModelCard

    wrong = ModelCard(kind="scalar", targets=("v",), input_size=(16, 16))
    with pytest.raises(ModelFileError, match="card does not belong"):
        Predictor(path, card=wrong)


def test_unknown_graph_optimization_is_a_typed_error_naming_the_choices(model_factory):
    from edgereg.errors import EdgeregError

    path = model_factory()
    with pytest.raises(EdgeregError) as info:
        Predictor(path, graph_optimization="x")
    assert str(info.value) == "graph_optimization is 'x'; expected one of none, basic, extended, all"
    with pytest.raises(EdgeregError, match=r"^graph_optimization is 'basics' \(did you mean 'basic'\?\)"):
        Predictor(path, graph_optimization="basics")
    assert Predictor(path, graph_optimization="basic").predict(np.zeros((1, 8, 8, 3), np.uint8)).values.shape == (1, 1)
