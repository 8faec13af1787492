"""A MobileNetV2-like net: inverted residual blocks with depthwise 3x3 convs."""

from __future__ import annotations

import torch
from torch import nn

from edgereg.training.models.layers import BackboneWithHead, ConvBNReLU
from edgereg.training.models.registry import positive_ints, register_model, require_input_size

# (output channels, stride) of each inverted residual block after the stem.
TINY_BLOCKS = ((16, 1), (24, 2), (24, 1), (40, 2), (40, 1), (64, 2))


class InvertedResidual(nn.Module):
    """1x1 expand, depthwise 3x3 (stride s), 1x1 linear projection; a residual when shapes match.

    ``(B, C_in, H, W) -> (B, C_out, ceil(H/s), ceil(W/s))``.
    """

    def __init__(self, in_channels: int, out_channels: int, *, stride: int, expansion: int):
        super().__init__()
        hidden = in_channels * expansion
        self.block = nn.Sequential(
            ConvBNReLU(in_channels, hidden, kernel_size=1),
            ConvBNReLU(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.residual else out


class MobileNet(BackboneWithHead):
    """Stride-2 stem, inverted residual blocks, a 1x1 conv to ``last_channels``, then a head."""

    def __init__(self, *, in_channels: int, n_outputs: int, kind: str, input_size: tuple[int, int],
                 blocks: tuple[tuple[int, int], ...], expansion: int, last_channels: int,
                 head: str | None):
        layers: list[nn.Module] = [ConvBNReLU(in_channels, 16, stride=2)]
        previous = 16
        for out_channels, stride in blocks:
            layers.append(InvertedResidual(previous, out_channels, stride=stride, expansion=expansion))
            previous = out_channels
        layers.append(ConvBNReLU(previous, last_channels, kernel_size=1))
        super().__init__(layers, in_channels=in_channels, n_outputs=n_outputs, kind=kind, input_size=input_size,
                         head=head)


@register_model(input_size=(64, 64))
def mobilenet_tiny(*, in_channels: int, n_outputs: int, kind: str, input_size: tuple[int, int],
                   expansion: int = 4, last_channels: int = 128, head: str | None = None) -> nn.Module:
    """MobileNetV2-like: depthwise-separable inverted residual blocks, fewest multiply-adds.

    Options:
        expansion: channel expansion inside each inverted residual block.
        last_channels: channels of the final 1x1 conv before the head.
        head: a heads.HEAD_STYLES name to override the kind's default head.
    """
    require_input_size(input_size, 16, model="mobilenet_tiny")
    (expansion,) = positive_ints(expansion, option="expansion", model="mobilenet_tiny")
    (last_channels,) = positive_ints(last_channels, option="last_channels", model="mobilenet_tiny")
    return MobileNet(in_channels=in_channels, n_outputs=n_outputs, kind=kind, input_size=input_size,
                     blocks=TINY_BLOCKS, expansion=expansion, last_channels=last_channels, head=head)
