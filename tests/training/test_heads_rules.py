"""Heads, rule by rule: the output bias each kind starts from, the per-location map's shape, what a
checkpoint stores, and the exact errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgereg.errors import EdgeregError
from edgereg.training.targets.heads import LocationLogitsHead, check_kind, init_output_bias, make_head


@pytest.mark.parametrize("style, layer", [("pool", "linear"), ("flatten", "linear"), ("location", "classifier")])
def test_coordinate_heads_start_at_the_image_centre(style, layer):
    torch.manual_seed(0)
    head = make_head("coords", 8, 4, style=style, feature_size=(3, 5))
    assert torch.equal(getattr(head, layer).bias, torch.full((4,), 0.5))


@pytest.mark.parametrize("kind", ["scalar", "vector", "distribution", "angle"])
def test_other_kinds_keep_the_default_random_bias(kind):
    torch.manual_seed(0)
    head = make_head(kind, 8, 4, style="pool")
    bias = head.linear.bias
    assert bias.abs().max() < 1 / 8 ** 0.5 + 1e-6 and not torch.all(bias == 0.5)


def test_output_bias_init_skips_layers_without_a_bias():
    no_bias = nn.Linear(4, 2, bias=False)
    init_output_bias(no_bias, "coords")  # nothing to set, no error
    assert no_bias.bias is None
    init_output_bias(nn.Identity(), "coords")  # no bias attribute at all
    with_bias = nn.Linear(4, 2)
    init_output_bias(with_bias, "coords")
    assert torch.equal(with_bias.bias, torch.full((2,), 0.5))


def test_location_logits_keep_the_feature_map_size():
    head = LocationLogitsHead(6, 3)
    features = torch.randn(2, 6, 5, 7)
    logits = head.location_logits(features)
    assert logits.shape == (2, 3, 5, 7)
    torch.testing.assert_close(head(features), logits.mean(dim=(2, 3)))


def test_soft_argmax_grid_is_not_stored_in_checkpoints():
    head = make_head("coords", 4, 2, feature_size=(3, 4))
    assert "grid" not in head.state_dict() and set(head.state_dict()) == {"heatmaps.weight", "heatmaps.bias"}
    assert head.grid.dtype == torch.float32 and head.grid.shape == (12, 2)
    torch.testing.assert_close(head.grid[:5], torch.tensor([[0.125, 1 / 6], [0.375, 1 / 6], [0.625, 1 / 6],
                                                            [0.875, 1 / 6], [0.125, 0.5]]))


@pytest.mark.parametrize("call, message", [
    (lambda: make_head("coords", 4, 3, feature_size=(2, 2)),
     "the soft-argmax head needs (x, y) pairs, got n_outputs=3"),
    (lambda: make_head("coords", 4, 2), "the soft_argmax head needs the feature map size; pass feature_size=(h, w)"),
    (lambda: make_head("scalar", 4, 1, style="flatten"),
     "the flatten head needs the feature map size; pass feature_size=(h, w)"),
    (lambda: make_head("scalar", 4, 1, style="pooling"),
     "unknown head 'pooling' (did you mean 'pool'?); expected one of pool, location, soft_argmax, flatten"),
    (lambda: make_head("angle", 4, 2, style="soft_argmax", feature_size=(2, 2)),
     "the soft_argmax head predicts coordinates, not kind 'angle'; use head='pool'"),
    (lambda: check_kind("vectors"),
     "unknown kind 'vectors' (did you mean 'vector'?); "
     "expected one of scalar, vector, distribution, coords, angle, count"),
])
def test_head_errors_are_exact(call, message):
    with pytest.raises(EdgeregError) as info:
        call()
    assert str(info.value) == message
