"""The networks of the seed accounts, rebuilt for comparison with edgereg's own models.

* ``vgg_seed000``: the VGG-like regressor of seed 000 (conv-conv-conv-pool x 3, two 1x1 convs,
  dense). Its answer counts 533,344 weights: 500,576 in the convs plus a 32*32*32 dense layer,
  which is what a 256x256 input gives with "same" padding; at the 64x64 the asker trained on, the
  dense layer has 8*8*32 weights and the net about 505k parameters.
* ``base_seed004``: "Base" of the seed paper "Go Deep or Go Home?" (two 5x5 conv + max-pool
  stages with 6 and 12 channels, no padding, then 120-60-1 fully connected), with ``depth`` extra
  padded 12-channel conv layers, so a depth sweep (0, 1, 2, 3, 4, 5, 10) reproduces the paper.
  The paper gives the extra layer's kernel only in a figure; here it is 3x3 with padding 1.
"""

from __future__ import annotations

import torch
from torch import nn

from edgereg.errors import EdgeregError
from edgereg.training.models.layers import feature_shape
from edgereg.training.models.registry import register_model, require_input_size
from edgereg.training.targets.heads import init_output_bias


class SeedVGG(nn.Module):
    """Seed 000's net. ``(B, C, H, W) float32 -> (B, n_outputs) float32``."""

    def __init__(self, *, in_channels: int, n_outputs: int, kind: str, input_size: tuple[int, int],
                 dropout: float):
        super().__init__()
        layers: list[nn.Module] = []
        previous = in_channels
        for width in (32, 64, 128):
            for _ in range(3):  # biases kept, as in the TensorFlow original
                layers += [nn.Conv2d(previous, width, 3, padding=1), nn.BatchNorm2d(width),
                           nn.ReLU(inplace=True)]
                previous = width
            layers.append(nn.MaxPool2d(2, stride=2))
        for width in (128, 32):
            layers += [nn.Dropout(dropout), nn.Conv2d(previous, width, 1), nn.BatchNorm2d(width),
                       nn.ReLU(inplace=True)]
            previous = width
        self.features = nn.Sequential(*layers)
        c, h, w = feature_shape(self.features, in_channels, input_size)
        self.dense = nn.Linear(c * h * w, n_outputs)
        init_output_bias(self.dense, kind)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.dense(self.features(images).flatten(1))  # (B,32,h,w) -> (B,32*h*w)


class SeedBase(nn.Module):
    """Seed 004's "Base" with ``depth`` extra layers. ``(B, C, H, W) -> (B, n_outputs)``."""

    def __init__(self, *, in_channels: int, n_outputs: int, kind: str, input_size: tuple[int, int],
                 depth: int):
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, 6, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2, stride=2),
            nn.Conv2d(6, 12, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2, stride=2),
        ]
        for _ in range(depth):
            layers += [nn.Conv2d(12, 12, 3, padding=1), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        c, h, w = feature_shape(self.features, in_channels, input_size)
        output = nn.Linear(60, n_outputs)
        init_output_bias(output, kind)
        self.classifier = nn.Sequential(
            nn.Linear(c * h * w, 120), nn.ReLU(inplace=True),
            nn.Linear(120, 60), nn.ReLU(inplace=True),
            output,
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(images).flatten(1))  # (B,12,h,w) -> (B,12*h*w)


@register_model(input_size=(64, 64))
def vgg_seed000(*, in_channels: int, n_outputs: int, kind: str, input_size: tuple[int, int],
                dropout: float = 0.5) -> nn.Module:
    """Seed 000's VGG-like net (3x conv-conv-conv-pool, 1x1 convs, dense), for comparison.

    Options:
        dropout: rate of the two dropout layers before the 1x1 convs (TensorFlow's default 0.5).
    """
    require_input_size(input_size, 8, model="vgg_seed000")
    if not 0.0 <= float(dropout) < 1.0:
        raise EdgeregError(f"dropout must be in [0, 1), got {dropout!r}")
    return SeedVGG(in_channels=in_channels, n_outputs=n_outputs, kind=kind, input_size=input_size,
                   dropout=float(dropout))


@register_model(input_size=(28, 28), channels="gray")
def base_seed004(*, in_channels: int, n_outputs: int, kind: str, input_size: tuple[int, int],
                 depth: int = 0) -> nn.Module:
    """Seed 004's "Base" (5x5 convs 6-12 ch, FC 120-60) with `depth` extra conv layers.

    Options:
        depth: number of extra padded 3x3 12-channel conv layers (the paper's 0..10).
    """
    require_input_size(input_size, 16, model="base_seed004")
    if isinstance(depth, bool) or int(depth) != depth or depth < 0:
        raise EdgeregError(f"depth must be a non-negative integer, got {depth!r}")
    return SeedBase(in_channels=in_channels, n_outputs=n_outputs, kind=kind, input_size=input_size,
                    depth=int(depth))
