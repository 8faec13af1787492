"""Building blocks shared by the model families (all export to standard ONNX ops)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgereg.training.targets.heads import make_head


class DilatedConv2d(nn.Conv2d):
    """A stride-1 dilated conv with "same" padding that trains several times faster on a CPU.

    PyTorch's CPU backward pass for dilated convs is slow (~7x an undilated conv of the same
    size on this project's machine). A dilation-``d`` conv equals an undilated conv on each of the
    ``d * d`` interleaved sub-grids of the image, so in training mode the image is split into
    sub-grids (zero-padded to a multiple of ``d``, which changes nothing: the border padding is
    zeros too), convolved as one batch and interleaved back. In eval mode, and in the exported
    ONNX graph, it is an ordinary dilated Conv.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = self.dilation[0]
        if not self.training or d == 1:
            return super().forward(x)
        b, c, h, w = x.shape
        hp, wp = -(-h // d) * d, -(-w // d) * d
        x = F.pad(x, (0, wp - w, 0, hp - h))
        x = x.reshape(b, c, hp // d, d, wp // d, d)  # (B,C,Hp,Wp) -> (B,C,Hp/d,d,Wp/d,d)
        x = x.permute(0, 3, 5, 1, 2, 4)  # -> (B,d,d,C,Hp/d,Wp/d): one sub-grid per (row, col) phase
        x = x.reshape(b * d * d, c, hp // d, wp // d)  # -> (B*d*d,C,Hp/d,Wp/d)
        y = F.conv2d(x, self.weight, self.bias, padding=self.kernel_size[0] // 2)
        y = y.reshape(b, d, d, -1, hp // d, wp // d)  # (B*d*d,O,Hp/d,Wp/d) -> (B,d,d,O,Hp/d,Wp/d)
        y = y.permute(0, 3, 4, 1, 5, 2)  # -> (B,O,Hp/d,d,Wp/d,d)
        return y.reshape(b, -1, hp, wp)[:, :, :h, :w]  # -> (B,O,Hp,Wp) -> (B,O,H,W)


class ConvBNReLU(nn.Sequential):
    """``k x k`` conv (no bias: BN has one) + BatchNorm + ReLU; "same" padding for odd ``k``.

    ``(B, C_in, H, W) -> (B, C_out, ceil(H / stride), ceil(W / stride))``. In eval mode the ONNX
    exporter folds the BN into the conv. Dilated stride-1 convs are :class:`DilatedConv2d`.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, *,
                 stride: int = 1, dilation: int = 1, groups: int = 1):
        conv_class = DilatedConv2d if dilation > 1 and stride == 1 and kernel_size % 2 else nn.Conv2d
        super().__init__(
            conv_class(in_channels, out_channels, kernel_size, stride=stride,
                       padding=dilation * (kernel_size // 2), dilation=dilation, groups=groups,
                       bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class AddCoords(nn.Module):
    """CoordConv input: append two channels holding each pixel's x and y, scaled to [-1, 1].

    ``(B, C, H, W) -> (B, C + 2, H, W)``. The grid is built for a fixed ``input_size`` (the card's),
    so the ONNX graph holds it as a constant.
    """

    def __init__(self, input_size: tuple[int, int]):
        super().__init__()
        h, w = input_size
        grid_y, grid_x = torch.meshgrid(
            (torch.arange(h, dtype=torch.float32) + 0.5) / h * 2 - 1,
            (torch.arange(w, dtype=torch.float32) + 0.5) / w * 2 - 1,
            indexing="ij",
        )
        self.register_buffer("grid", torch.stack([grid_x, grid_y])[None], persistent=False)  # (1,2,H,W)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        grid = self.grid.expand(images.shape[0], -1, -1, -1)  # (1,2,H,W) -> (B,2,H,W)
        return torch.cat([images, grid], dim=1)


def feature_shape(features: nn.Module, in_channels: int, input_size: tuple[int, int]) -> tuple[int, int, int]:
    """(C, h, w) of what ``features`` returns for one ``(in_channels, *input_size)`` image.

    Runs one zero image through the module in eval mode (BN statistics are not touched).
    """
    was_training = features.training
    features.eval()
    with torch.no_grad():
        out = features(torch.zeros(1, in_channels, *input_size))
    features.train(was_training)
    return tuple(out.shape[1:])


class BackboneWithHead(nn.Module):
    """``features`` (the given layers in an nn.Sequential), then the kind's head (``make_head``).

    forward: (B, in_channels, *input_size) float32 images -> (B, n_outputs) raw head output.
    The layers are built by the caller first and the head last, so seeded initialization follows
    the order the layers are listed in.
    """

    def __init__(self, layers: list[nn.Module], *, in_channels: int, n_outputs: int, kind: str,
                 input_size: tuple[int, int], head: str | None):
        super().__init__()
        self.features = nn.Sequential(*layers)
        c, h, w = feature_shape(self.features, in_channels, input_size)
        self.head = make_head(kind, c, n_outputs, style=head, feature_size=(h, w))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))
