"""A full-resolution heatmap net for the soft-argmax (DSNT) coordinates head.

No downsampling and no coordinate inputs: the net is translation-equivariant up to the
soft-argmax, so a box is found where it is, also in a part of the frame never seen in training.
Dilations give a receptive field of ``1 + 2 * sum(dilations)`` pixels with few channels.
"""

from __future__ import annotations

import torch
from torch import nn

from edgereg.training.models.layers import ConvBNReLU
from edgereg.training.models.registry import positive_ints, register_model
from edgereg.training.targets.heads import make_head


class HeatmapNet(nn.Module):
    """Dilated 3x3 conv-BN-ReLU layers at full resolution, then one heatmap per point.

    ``(B, C, H, W) float32 -> (B, 2P) float32``: (x, y) per point in [0, 1] of the input.
    """

    def __init__(self, *, in_channels: int, n_outputs: int, input_size: tuple[int, int],
                 channels: int, dilations: tuple[int, ...]):
        super().__init__()
        layers, previous = [], in_channels
        for dilation in dilations:
            layers.append(ConvBNReLU(previous, channels, dilation=dilation))
            previous = channels
        self.features = nn.Sequential(*layers)
        self.head = make_head("coords", channels, n_outputs, feature_size=input_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


@register_model(input_size=(64, 64), kinds=("coords",))
def heatmap_small(*, in_channels: int, n_outputs: int, kind: str, input_size: tuple[int, int],
                  channels: int = 12, dilations: tuple[int, ...] = (1, 2, 4, 8, 1)) -> nn.Module:
    """Full-resolution dilated convs + soft-argmax (DSNT) heatmap head, for coordinates.

    Options:
        channels: channels of every layer.
        dilations: one 3x3 layer per entry; the receptive field is 1 + 2 * sum(dilations) pixels.
    """
    (channels,) = positive_ints(channels, option="channels", model="heatmap_small")
    dilations = positive_ints(dilations, option="dilations", model="heatmap_small")
    return HeatmapNet(in_channels=in_channels, n_outputs=n_outputs, input_size=input_size,
                      channels=channels, dilations=dilations)
