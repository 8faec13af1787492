"""A mixed-scale dense (MS-D) net: full-resolution dilated convs, each seeing all earlier maps.

Pelt & Sethian (2018): every layer adds ``growth`` channels computed from the concatenation of the
input and all earlier layers, with dilations cycling through 1..max_dilation, so a few thousand
parameters see both fine and coarse scales. Meant for small datasets.

The original runs every layer at the input's full resolution; on a 2-core CPU that costs ~50 s per
2,000 64x64 images per epoch, so by default a stride-2 conv stem halves the resolution first
(``stride=1`` restores the original layout).
"""

from __future__ import annotations

import torch
from torch import nn

from edgereg.training.models.layers import ConvBNReLU
from edgereg.training.models.registry import positive_ints, register_model
from edgereg.training.targets.heads import make_head


class MixedScaleDense(nn.Module):
    """``(B, C, H, W) -> (B, n_outputs)``.

    A stem (identity for stride 1, else a stride-s conv to ``2 * growth`` channels), then ``depth``
    dilated layers; the head sees the stem's channels plus ``depth * growth``, at ``ceil(H / s)``.
    """

    def __init__(self, *, in_channels: int, n_outputs: int, kind: str, input_size: tuple[int, int],
                 depth: int, growth: int, max_dilation: int, stride: int, head: str | None):
        super().__init__()
        self.stem: nn.Module = nn.Identity()
        stem_channels = in_channels
        if stride > 1:
            stem_channels = 2 * growth
            self.stem = ConvBNReLU(in_channels, stem_channels, stride=stride)
        self.layers = nn.ModuleList(
            ConvBNReLU(stem_channels + i * growth, growth, dilation=i % max_dilation + 1)
            for i in range(depth)
        )
        feature_size = tuple(-(-n // stride) for n in input_size)
        self.head = make_head(kind, stem_channels + depth * growth, n_outputs, style=head,
                              feature_size=feature_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        maps = self.stem(images)
        for layer in self.layers:
            maps = torch.cat([maps, layer(maps)], dim=1)  # (B,C_i,H,W) -> (B,C_i+growth,H,W)
        return self.head(maps)


@register_model(input_size=(64, 64))
def msd_small(*, in_channels: int, n_outputs: int, kind: str, input_size: tuple[int, int],
              depth: int = 12, growth: int = 4, max_dilation: int = 10, stride: int = 2,
              head: str | None = None) -> nn.Module:
    """MS-D-like: densely connected dilated convs after a stride-2 stem, for small datasets.

    Options:
        depth: number of dilated conv layers.
        growth: channels each layer adds.
        max_dilation: dilations cycle through 1..max_dilation.
        stride: stride of the stem conv; 1 = no stem, every layer at full resolution.
        head: a heads.HEAD_STYLES name to override the kind's default head.
    """
    options = {"depth": depth, "growth": growth, "max_dilation": max_dilation, "stride": stride}
    checked = {k: positive_ints(v, option=k, model="msd_small")[0] for k, v in options.items()}
    return MixedScaleDense(in_channels=in_channels, n_outputs=n_outputs, kind=kind,
                           input_size=input_size, head=head, **checked)
