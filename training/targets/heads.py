"""Heads: the last layers of a model, mapping a feature map to raw outputs ``(B, n_outputs)``.

What a raw output means depends on the target kind (the :class:`~edgereg.training.targets.regressor.
OutputTransform` turns it into physical units):

| kind | raw output | default head |
|---|---|---|
| scalar | pre-sigmoid logit per target | ``pool``: global average pooling + linear |
| vector | standardized value per target | ``pool`` |
| distribution | one logit per bin | ``location``: per-location 1x1 bin logits, then global average |
| coords | (x, y) per point in [0, 1] of the input | ``soft_argmax``: heatmap + spatial softmax (DSNT) |
| angle | (sin, cos) per angle target | ``pool`` |
| count | log of the expected count per target | ``pool`` |

(the default is ``kind_training(kind).head``, :mod:`edgereg.training.targets.kind_training`)

Pooling heads average over locations, so they cannot memorise where in the frame a feature was:
for distributions, per-location logits averaged over the image beat flatten + FC on mixtures never
seen in training (GRAINet; 5.0 vs 8.8 percentage points per bin in the trial quoted in issue 4).
The soft-argmax head keeps the translation equivariance of a fully convolutional net all the way
to the coordinates, so it finds a box in a quadrant never seen in training (flatten + FC and
CoordConv + pooling missed by 11-15 px in the issue's trial). ``flatten`` (flatten + linear) is
kept to reproduce the classic head for comparisons. All heads take and return float32.
"""

from __future__ import annotations

import torch
from torch import nn

from edgereg.core.kinds import target_kind
from edgereg.errors import EdgeregError, did_you_mean
from edgereg.training.targets.kind_training import kind_training

HEAD_STYLES = ("pool", "location", "soft_argmax", "flatten")

class PoolLinearHead(nn.Module):
    """Global average pooling then a linear layer: ``(B, C, h, w) -> (B, n_outputs)``.

    Equivalent to a per-location 1x1 linear map averaged over the image.
    """

    def __init__(self, in_channels: int, n_outputs: int):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(in_channels, n_outputs)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        pooled = self.pool(features).flatten(1)  # (B,C,1,1) -> (B,C)
        return self.linear(pooled)


class LocationLogitsHead(nn.Module):
    """Per-location logits from a 1x1 conv, averaged over the image: ``(B,C,h,w) -> (B,n)``.

    Each location votes for the bins it sees; the average over locations is the image's logits
    (GRAINet-style). ``location_logits`` exposes the per-location map for inspection.
    """

    def __init__(self, in_channels: int, n_outputs: int):
        super().__init__()
        self.classifier = nn.Conv2d(in_channels, n_outputs, kernel_size=1)

    def location_logits(self, features: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) float32 -> (B, n_outputs, h, w) float32 logits per location."""
        return self.classifier(features)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.location_logits(features).mean(dim=(2, 3))  # (B,n,h,w) -> (B,n)


class SoftArgmaxHead(nn.Module):
    """DSNT-style coordinate head: one heatmap per point, spatial softmax, expected position.

    The output for point p is ``(u_p, v_p)``, the probability-weighted mean of the normalized
    centre coordinates ``u = (j + 0.5) / w``, ``v = (i + 0.5) / h`` of the feature map's cells,
    i.e. [0, 1] coordinates of the input when the features cover the input evenly (any stride).
    """

    def __init__(self, in_channels: int, n_outputs: int, *, feature_size: tuple[int, int]):
        super().__init__()
        if n_outputs % 2:
            raise EdgeregError(f"the soft-argmax head needs (x, y) pairs, got n_outputs={n_outputs}")
        h, w = feature_size
        self.heatmaps = nn.Conv2d(in_channels, n_outputs // 2, kernel_size=1)
        self.flat_shape = (-1, n_outputs // 2, h * w)  # constant, so the ONNX Reshape is too
        grid_v, grid_u = torch.meshgrid(
            (torch.arange(h, dtype=torch.float32) + 0.5) / h,
            (torch.arange(w, dtype=torch.float32) + 0.5) / w,
            indexing="ij",
        )
        grid = torch.stack([grid_u.reshape(-1), grid_v.reshape(-1)], dim=1)  # (h*w, 2): (u, v)
        self.register_buffer("grid", grid, persistent=False)

    def heatmap_probabilities(self, features: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) float32 -> (B, P, h*w) float32 spatial softmax per point (rows sum to 1)."""
        logits = self.heatmaps(features).reshape(self.flat_shape)  # (B,P,h,w) -> (B,P,h*w)
        return torch.softmax(logits, dim=2)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        probs = self.heatmap_probabilities(features)
        coords = probs @ self.grid  # (B,P,h*w) @ (h*w,2) -> (B,P,2)
        return coords.reshape(-1, 2 * self.flat_shape[1])  # (B,P,2) -> (B,2P): x then y per point


class FlattenLinearHead(nn.Module):
    """Flatten the whole feature map into a linear layer: ``(B, C, h, w) -> (B, n_outputs)``."""

    def __init__(self, in_channels: int, n_outputs: int, *, feature_size: tuple[int, int]):
        super().__init__()
        self.linear = nn.Linear(in_channels * feature_size[0] * feature_size[1], n_outputs)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(features.flatten(1))  # (B,C,h,w) -> (B,C*h*w)


def make_head(
    kind: str,
    in_channels: int,
    n_outputs: int,
    *,
    style: str | None = None,
    feature_size: tuple[int, int] | None = None,
) -> nn.Module:
    """The head for ``kind``: a module mapping ``(B, in_channels, h, w)`` to ``(B, n_outputs)``.

    Args:
        kind: target kind (see the table in this module's docstring).
        in_channels: channels C of the feature map.
        n_outputs: raw output width (2 per angle target, 2 per coords point).
        style: one of HEAD_STYLES; default ``kind_training(kind).head``.
        feature_size: (h, w) of the feature map; needed by ``soft_argmax`` and ``flatten``.

    Raises:
        EdgeregError: unknown kind or style, a style that does not fit the kind, or a missing
            feature size.
    """
    style = style or kind_training(kind).head
    if style not in HEAD_STYLES:
        raise EdgeregError(
            f"unknown head {style!r}{did_you_mean(style, HEAD_STYLES)}; "
            f"expected one of {', '.join(HEAD_STYLES)}"
        )
    if style == "soft_argmax" and not target_kind(kind).xy_points:
        raise EdgeregError(f"the soft_argmax head predicts coordinates, not kind {kind!r}; use head='pool'")
    if style in ("soft_argmax", "flatten") and feature_size is None:
        raise EdgeregError(f"the {style} head needs the feature map size; pass feature_size=(h, w)")
    if style == "pool":
        head = PoolLinearHead(in_channels, n_outputs)
        init_output_bias(head.linear, kind)
    elif style == "location":
        head = LocationLogitsHead(in_channels, n_outputs)
        init_output_bias(head.classifier, kind)
    elif style == "flatten":
        head = FlattenLinearHead(in_channels, n_outputs, feature_size=feature_size)
        init_output_bias(head.linear, kind)
    else:
        head = SoftArgmaxHead(in_channels, n_outputs, feature_size=feature_size)
    return head


def check_kind(kind: str) -> None:
    """Raise EdgeregError (with a did-you-mean) unless training knows ``kind`` (``kind_training``)."""
    kind_training(kind)


def init_output_bias(layer: nn.Module, kind: str) -> None:
    """Start a linear output layer at the centre of its kind's range.

    Coordinates start at the image centre (0.5) instead of the corner; the other kinds' raw outputs
    are already centred at 0 (logit 0 = mid-range, standardized 0 = mean, uniform bins).
    """
    kind_training(kind).init_bias(layer)
