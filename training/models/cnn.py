"""The default model: a small plain CNN (conv-BN-ReLU stages, stride-2 downsampling, pooled head)."""

from __future__ import annotations

import torch
from torch import nn

from edgereg.training.models.layers import AddCoords, ConvBNReLU, feature_shape
from edgereg.training.models.registry import positive_ints, register_model, require_input_size
from edgereg.training.targets.heads import make_head


class CompactCNN(nn.Module):
    """A full-resolution stem, then per stage a stride-2 conv and a conv, then a head.

    ``(B, C, H, W) float32 -> (B, n_outputs) float32``; the features are ``ceil(H / 2**S)`` on a side
    for S stages.
    """

    def __init__(self, *, in_channels: int, n_outputs: int, kind: str, input_size: tuple[int, int],
                 widths: tuple[int, ...], coordconv: bool, head: str | None):
        super().__init__()
        self.add_coords = AddCoords(input_size) if coordconv else nn.Identity()
        layers: list[nn.Module] = [ConvBNReLU(in_channels + (2 if coordconv else 0), widths[0])]
        previous = widths[0]
        for width in widths:
            layers += [ConvBNReLU(previous, width, stride=2), ConvBNReLU(width, width)]
            previous = width
        self.features = nn.Sequential(*layers)
        c, h, w = feature_shape(nn.Sequential(self.add_coords, self.features), in_channels, input_size)
        self.head = make_head(kind, c, n_outputs, style=head, feature_size=(h, w))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(self.add_coords(images)))


@register_model(input_size=(64, 64))
def cnn_small(*, in_channels: int, n_outputs: int, kind: str, input_size: tuple[int, int],
              width: int = 16, coordconv: bool = False, head: str | None = None) -> nn.Module:
    """Small plain CNN: 3 conv-BN-ReLU stages (16-32-64 ch), pooled head; coordconv=True adds x,y.

    Options:
        width: channels of the first stage; the stages have (width, 2 width, 4 width).
        coordconv: append x and y coordinate channels to the input (CoordConv).
        head: a heads.HEAD_STYLES name to override the kind's default head.
    """
    require_input_size(input_size, 8, model="cnn_small")
    (width,) = positive_ints(width, option="width", model="cnn_small")
    return CompactCNN(in_channels=in_channels, n_outputs=n_outputs, kind=kind, input_size=input_size,
                      widths=(width, 2 * width, 4 * width), coordconv=coordconv, head=head)
