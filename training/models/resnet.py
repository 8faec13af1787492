"""A small ResNet: basic residual blocks (two 3x3 convs and an identity or 1x1 shortcut)."""

from __future__ import annotations

import torch
from torch import nn

from edgereg.training.models.layers import BackboneWithHead, ConvBNReLU
from edgereg.training.models.registry import positive_ints, register_model, require_input_size


class BasicBlock(nn.Module):
    """``relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))``: ``(B, C_in, H, W) -> (B, C_out, H/s, W/s)``."""

    def __init__(self, in_channels: int, out_channels: int, *, stride: int):
        super().__init__()
        self.conv1 = ConvBNReLU(in_channels, out_channels, stride=stride)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn2(self.conv2(self.conv1(x))) + self.shortcut(x))


class ResNet(BackboneWithHead):
    """Stem conv, then stages of basic blocks (the first of each stage strides by 2), then a head."""

    def __init__(self, *, in_channels: int, n_outputs: int, kind: str, input_size: tuple[int, int],
                 widths: tuple[int, ...], blocks: tuple[int, ...], head: str | None):
        layers: list[nn.Module] = [ConvBNReLU(in_channels, widths[0])]
        previous = widths[0]
        for width, n_blocks in zip(widths, blocks):
            for i in range(n_blocks):
                layers.append(BasicBlock(previous, width, stride=2 if i == 0 else 1))
                previous = width
        super().__init__(layers, in_channels=in_channels, n_outputs=n_outputs, kind=kind, input_size=input_size,
                         head=head)


@register_model(input_size=(64, 64))
def resnet_tiny(*, in_channels: int, n_outputs: int, kind: str, input_size: tuple[int, int],
                width: int = 16, blocks: tuple[int, ...] = (1, 1, 1), head: str | None = None) -> nn.Module:
    """Small ResNet: 3 stages of basic residual blocks (16-32-64 ch), pooled head.

    Options:
        width: channels of the first stage; stage i has width * 2**i.
        blocks: basic blocks per stage, e.g. (2, 2, 2) for a deeper net.
        head: a heads.HEAD_STYLES name to override the kind's default head.
    """
    require_input_size(input_size, 8, model="resnet_tiny")
    (width,) = positive_ints(width, option="width", model="resnet_tiny")
    blocks = positive_ints(blocks, option="blocks", model="resnet_tiny")
    return ResNet(in_channels=in_channels, n_outputs=n_outputs, kind=kind, input_size=input_size,
                  widths=tuple(width * 2**i for i in range(len(blocks))), blocks=blocks, head=head)
