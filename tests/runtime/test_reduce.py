"""TTA reductions by kind, checked against values computed by hand from the views.

Views that agree exactly cannot tell a mean from a first-view pick or a circular mean from an
arithmetic one, so every test here feeds views that disagree.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgereg import Predictor
from edgereg.core.angles import circular_reduce
from edgereg.core.kinds import target_kind
from edgereg.core.tta import parse_tta
from edgereg.preprocess import PreprocessConfig, crop_resize
from edgereg.preprocess.reference import preprocess_batch_ref


def seen_by_views(true_deg: float, spec) -> np.ndarray:
    """What a perfect angle model outputs for each view of an image at ``true_deg``: (1, V, 1)."""
    seen = true_deg + spec.angles_deg()  # a display-CCW rotation by t adds t
    seen = np.where(spec.flipped(), 180.0 - seen, seen)  # then the flip maps a -> 180 - a
    return (seen % 360.0)[None, :, None]


def test_angle_views_either_side_of_zero_reduce_to_zero_not_360():
    # rot:2 views that map back to 350 and 10 degrees: the mean is 0, which must read 0, not 360
    spec = parse_tta("rot:2")
    views = np.array([[[350.0], [190.0]]])  # view 1 is rotated by 180: it sees 10 + 180
    values, spread = target_kind("angle").reduce_views(views, spec)
    assert 0.0 <= values[0, 0] < 360.0
    assert min(values[0, 0], 360.0 - values[0, 0]) < 1e-9
    # the same for every symmetric pair around 0 that rounds to a tiny negative angle
    pairs = np.array([[[-a], [a]] for a in np.linspace(0.5, 89.5, 179)])  # (179, 2, 1)
    means, _ = circular_reduce(pairs)
    assert np.all((means >= 0.0) & (means < 360.0))


def test_angle_views_at_350_and_10_give_0_with_a_10_degree_spread():
    # an arithmetic mean would say 180 with a spread of 170
    values, spread = circular_reduce(np.array([[[350.0], [10.0]]]))
    assert min(values[0, 0], 360.0 - values[0, 0]) == pytest.approx(0.0, abs=1e-9)
    # circular std = sqrt(-2 ln R), R = |mean unit vector| = cos(10 deg)
    assert spread[0, 0] == pytest.approx(np.rad2deg(np.sqrt(-2.0 * np.log(np.cos(np.deg2rad(10.0))))), rel=1e-12)
    assert spread[0, 0] == pytest.approx(10.03, abs=0.01)


@pytest.mark.parametrize("tta", ["d4", "rot:4", "rot:5"])
def test_angle_tta_inverts_each_view_and_averages_on_the_circle(tta):
    spec = parse_tta(tta)
    views = seen_by_views(5.0, spec)
    # views disagree by +-10 degrees around 5 after undoing each view: 5 - 10 = -5 wraps to 355
    views = views + np.where(np.arange(spec.n) % 2 == 0, -10.0, 10.0)[None, :, None]
    values, spread = target_kind("angle").reduce_views(views, spec)
    offsets = np.where(np.arange(spec.n) % 2 == 0, -10.0, 10.0)
    flipped = spec.flipped()
    # undoing a flip negates the error: the unmapped angles are 5 + e (unflipped) or 5 - e (flipped)
    unmapped = np.deg2rad(5.0 + np.where(flipped, -offsets, offsets))
    s, c = np.sin(unmapped).mean(), np.cos(unmapped).mean()
    expected = np.rad2deg(np.arctan2(s, c)) % 360.0
    assert values[0, 0] == pytest.approx(expected, abs=1e-9)
    assert spread[0, 0] == pytest.approx(np.rad2deg(np.sqrt(-2.0 * np.log(np.hypot(s, c)))), rel=1e-9)
    assert 0.0 < spread[0, 0] < 11.0


def test_distribution_tta_is_the_mean_of_the_views_probabilities():
    spec = parse_tta("rot:3")
    views = np.array([[[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.4, 0.4, 0.2]],
                      [[0.2, 0.2, 0.6], [0.3, 0.3, 0.4], [0.1, 0.1, 0.8]]])  # (B=2, V=3, T=3)
    values, spread = target_kind("distribution").reduce_views(views, spec)
    np.testing.assert_allclose(values, [[0.4, 0.4, 0.2], [0.2, 0.2, 0.6]], atol=1e-12)
    np.testing.assert_allclose(spread[0], np.sqrt([[0.06], [0.08 / 3], [2 / 300]]).ravel(), atol=1e-12)


def test_distribution_tta_renormalizes_views_that_do_not_sum_to_one():
    # a quantized model's probabilities sum to 1 only within a step: the reading is renormalized
    spec = parse_tta("rot:2")
    views = np.array([[[0.5, 0.3, 0.3], [0.3, 0.5, 0.3]]])  # each sums to 1.1
    values, _ = target_kind("distribution").reduce_views(views, spec)
    np.testing.assert_allclose(values, [[0.4 / 1.1, 0.4 / 1.1, 0.3 / 1.1]], atol=1e-12)


def test_scalar_tta_is_the_mean_and_std_of_the_views():
    views = np.array([[[1.0, 10.0], [3.0, 10.0], [8.0, 13.0]]])
    values, spread = target_kind("vector").reduce_views(views, parse_tta("rot:3"))
    np.testing.assert_allclose(values, [[4.0, 11.0]], atol=1e-12)
    np.testing.assert_allclose(spread, [[np.sqrt(26 / 3), np.sqrt(2.0)]], atol=1e-12)


def _position_model(path, card):
    """A distribution model whose logits are fixed non-symmetric weightings of channel 0, so the
    views of one image give different probabilities. Returns (path, weights (T, H, W))."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgereg.export.card_io import embed_card

    h, w = card.input_size
    t = len(card.targets)
    weights = np.random.default_rng(3).normal(size=(t, h, w)).astype(np.float32) / (h * w) * 8
    nodes = [
        helper.make_node("Slice", ["image", "zero", "one", "one"], ["ch0"]),  # (N,1,H,W)
        helper.make_node("Reshape", ["ch0", "flat"], ["pixels"]),  # (N,1,H,W) -> (N,H*W)
        helper.make_node("MatMul", ["pixels", "W"], ["logits"]),  # (N,H*W) @ (H*W,T) -> (N,T)
        helper.make_node("Softmax", ["logits"], ["value"], axis=1),
    ]
    inits = [numpy_helper.from_array(np.array([0], np.int64), "zero"),
             numpy_helper.from_array(np.array([1], np.int64), "one"),
             numpy_helper.from_array(np.array([-1, h * w], np.int64), "flat"),
             numpy_helper.from_array(weights.reshape(t, h * w).T.copy(), "W")]
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, h, w])
    graph = helper.make_graph(nodes, "position", [image],
                              [helper.make_tensor_value_info("value", TensorProto.FLOAT, ["N", t])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    embed_card(model, card)
    onnx.save(model, str(path))
    return path, weights


@pytest.mark.parametrize("tta", ["d4", "rot:3"])
def test_predictor_distribution_tta_equals_the_hand_computed_mean_over_views(tmp_path, rng, tta):
    from edgereg.core.card import ModelCard

    card = ModelCard(kind="distribution", targets=("b0", "b1", "b2", "b3"), input_size=(12, 12), crop="circle")
    path, weights = _position_model(tmp_path / "position.onnx", card)
    frames = rng.integers(0, 256, (3, 20, 20, 3), dtype=np.uint8)
    result = Predictor(path, tta=tta).predict(frames)

    config = PreprocessConfig.from_card(card)
    spec = parse_tta(tta)
    prepared = np.stack([crop_resize(frame, config)[0] for frame in frames])
    views = preprocess_batch_ref(prepared, config, spec)[:, 0]  # (B*V, C, H, W) -> channel 0 (B*V, H, W)
    logits = np.einsum("nhw,thw->nt", views.astype(np.float64), weights.astype(np.float64))
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs = (probs / probs.sum(axis=1, keepdims=True)).reshape(len(frames), spec.n, -1)  # (B*V,T) -> (B,V,T)
    assert probs.std(axis=1).max() > 0.01  # the views really disagree
    expected = probs.mean(axis=1)
    np.testing.assert_allclose(result.values, expected / expected.sum(axis=1, keepdims=True), atol=2e-5)
    np.testing.assert_allclose(result.spread, probs.std(axis=1), atol=2e-5)


@pytest.mark.parametrize("n_views", [3, 5, 7])
def test_identical_angle_views_have_no_spread_and_never_nan(n_views):
    # the mean unit vector of identical views comes out a hair longer than 1 in float64 for some
    # angles (e.g. 120 of these 720 with 7 views); the spread must still be ~0, never the square
    # root of a negative number (NaN)
    angles = np.arange(0.0, 360.0, 0.5)  # (720,)
    views = np.repeat(angles[:, None, None], n_views, axis=1)  # (720, V, 1)
    values, spread = circular_reduce(views)
    assert np.all(np.isfinite(spread)) and spread.max() < 1e-5  # one ulp below 1 gives 8.5e-7 degrees
    distance = np.abs((values[:, 0] - angles + 180.0) % 360.0 - 180.0)
    assert distance.max() < 1e-9


def test_views_that_cancel_out_report_the_largest_spread():
    # 0 and 180 degrees have no mean direction: the spread is the documented cap, not inf
    _, spread = circular_reduce(np.array([[[0.0], [180.0]], [[90.0], [270.0]]]))
    cap = np.rad2deg(np.sqrt(-2.0 * np.log(1e-12)))
    np.testing.assert_allclose(spread, cap, rtol=1e-12)
    assert cap == pytest.approx(425.9, abs=0.1)


def test_distribution_views_summing_below_one_are_scaled_up():
    views = np.array([[[0.5, 0.3, 0.1], [0.3, 0.5, 0.1]]])  # each sums to 0.9
    values, _ = target_kind("distribution").reduce_views(views, parse_tta("rot:2"))
    np.testing.assert_allclose(values, [[0.4 / 0.9, 0.4 / 0.9, 0.1 / 0.9]], atol=1e-12)


def test_coords_of_two_points_reduce_per_point_with_a_per_coordinate_spread():
    spec = parse_tta("rot:4")  # rotations by 0, 90, 180, 270: (u, v) -> (v, 1 - u) per quarter turn
    points = [(0.2, 0.7), (0.9, 0.4)]
    views = []
    for k in range(4):
        row = []
        for u, v in points:
            for _ in range(k):
                u, v = v, 1 - u
            row += [u, v]
        views.append(row)
    views = np.array([views])  # (1, 4, 4): two (u, v) points per view
    noise = np.array([[0.01, -0.02, 0.0, 0.03], [-0.01, 0.0, 0.02, 0.0], [0.0, 0.02, -0.02, -0.03],
                      [0.0, 0.0, 0.0, 0.0]])
    # undo each view's rotation on the noise too: what the reduction sees after unmapping
    values, spread = target_kind("coords").reduce_views(views, spec)
    np.testing.assert_allclose(values, [[0.2, 0.7, 0.9, 0.4]], atol=1e-12)
    np.testing.assert_allclose(spread, 0.0, atol=1e-12)
    values, spread = target_kind("coords").reduce_views(views + noise[None], spec)
    assert spread.shape == (1, 4) and np.all(spread[0, :] > 0.0)
    unmapped = []
    for k in range(4):  # the inverse of k quarter turns: (u, v) -> (1 - v, u), k times
        row = []
        for p in range(2):
            u, v = (views + noise[None])[0, k, 2 * p:2 * p + 2]
            for _ in range(k):
                u, v = 1 - v, u
            row += [u, v]
        unmapped.append(row)
    unmapped = np.array(unmapped)  # (V, T)
    np.testing.assert_allclose(values[0], unmapped.mean(axis=0), atol=1e-12)
    np.testing.assert_allclose(spread[0], unmapped.std(axis=0), atol=1e-12)


def test_reduction_errors_name_the_mismatch_and_the_fix():
    from edgereg.errors import EdgeregError, TTAError

    with pytest.raises(TTAError, match=r"^expected 8 views per image for TTA d4, got 3$"):
        target_kind("scalar").reduce_views(np.zeros((2, 3, 5)), parse_tta("d4"))
    with pytest.raises(EdgeregError, match=r"^unknown target kind 'angel' \(did you mean 'angle'\?\); expected one of "
                                          r"scalar, vector, distribution, coords, angle, count$"):
        target_kind("angel")
