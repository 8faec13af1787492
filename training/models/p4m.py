"""p4m: a group-equivariant CNN whose output is invariant to the 8 rotations/flips of D4.

Built in plain PyTorch (Cohen & Welling 2016, no e2cnn/escnn):
* a *lifting* conv uses the 8 rotated/flipped copies of one filter bank, giving 8 orientation
  channels per feature;
* *group* convs build their filters from one shared bank, rotated/flipped and with the orientation
  axis permuted by the D4 table, so features stay equivariant layer after layer;
* BatchNorm shares its statistics over the 8 orientations (folded into the conv in eval mode);
* downsampling uses max pooling whose windows are symmetric under D4 (2x2 on even sizes, 3x3 with
  padding 1 on odd sizes; a strided conv on an even size would break exact invariance);
* a max over the 8 orientations then a pooled head make the output invariant.

Each layer is one ordinary convolution on ``C * 8`` channels, so the ONNX graph holds only standard
ops (Conv, Relu, MaxPool, Reshape, ReduceMax, GlobalAveragePool, Gemm). Invariance is exact (to
float rounding) for square inputs; a non-square input keeps it for the flips and the 180-degree
rotation only.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from edgereg.errors import EdgeregError
from edgereg.training.models import d4
from edgereg.training.models.registry import positive_ints, register_model
from edgereg.training.targets.heads import make_head
from edgereg.training.targets.kind_training import KIND_TRAINING

INVARIANT_KINDS = tuple(name for name, kind in KIND_TRAINING.items() if kind.invariant)  # not locate, orient


class P4MConvBNReLU(nn.Module):
    """An equivariant 3x3 conv + orientation-shared BN + ReLU.

    Lifting: ``(B, C_in, H, W) -> (B, C_out * 8, H, W)``; group: ``(B, C_in * 8, H, W) ->
    (B, C_out * 8, H, W)``. Channel ``o * 8 + g`` holds feature ``o`` at orientation ``g``.
    """

    def __init__(self, in_channels: int, out_channels: int, *, lifting: bool, kernel_size: int = 3):
        super().__init__()
        orientations = 1 if lifting else d4.ORDER
        self.in_channels = in_channels
        self.kernel_size = kernel_size
        shape = (out_channels, in_channels, orientations, kernel_size, kernel_size)
        self.weight = nn.Parameter(torch.empty(shape))
        fan_in = in_channels * orientations * kernel_size * kernel_size
        nn.init.normal_(self.weight, std=math.sqrt(2.0 / fan_in))  # He init for ReLU
        index = d4.spatial_index(kernel_size) if lifting else d4.group_conv_index(kernel_size)
        self.register_buffer("index", index, persistent=False)
        channels = torch.arange(out_channels * d4.ORDER)
        self.register_buffer("feature_of_channel", channels // d4.ORDER, persistent=False)  # o of o*8+g
        self.bn = nn.BatchNorm2d(out_channels)

    def expanded_weight(self, scale: torch.Tensor | None = None) -> torch.Tensor:
        """(C_out * 8, C_in * orientations, k, k) float32: the filters of every output orientation.

        Args:
            scale: optional (C_out,) factor per output feature (the folded BN scale).
        """
        k, out_channels = self.kernel_size, self.weight.shape[0]
        weight = self.weight if scale is None else self.weight * scale.reshape(-1, 1, 1, 1, 1)
        flat = weight.reshape(out_channels, self.in_channels, -1)  # (O,C,n,k,k) -> (O,C,n*k*k)
        gathered = torch.index_select(flat, 2, self.index.reshape(-1))  # -> (O,C,8*n*k*k)
        gathered = gathered.reshape(out_channels, self.in_channels, d4.ORDER, -1)  # -> (O,C,8,n*k*k)
        gathered = gathered.permute(0, 2, 1, 3)  # (O,C,8,n*k*k) -> (O,8,C,n*k*k)
        return gathered.reshape(out_channels * d4.ORDER, -1, k, k)  # -> (O*8,C*n,k,k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        padding = self.kernel_size // 2
        if self.training:
            y = F.conv2d(x, self.expanded_weight(), padding=padding)
            b, _, h, w = y.shape
            y = self.bn(y.reshape(b, -1, d4.ORDER, h * w))  # (B,O*8,H,W) -> (B,O,8,H*W): stats per o
            y = y.reshape(b, -1, h, w)  # (B,O,8,H*W) -> (B,O*8,H,W)
        else:  # BN folded into the conv: the exporter turns all of this into one Conv's constants
            scale = self.bn.weight / torch.sqrt(self.bn.running_var + self.bn.eps)  # (O,)
            shift = self.bn.bias - self.bn.running_mean * scale  # (O,)
            shift = torch.index_select(shift, 0, self.feature_of_channel)  # (O,) -> (O*8,)
            y = F.conv2d(x, self.expanded_weight(scale), shift, padding=padding)
        return torch.relu(y)


class OrientationMaxPool(nn.Module):
    """Max over the 8 orientations: ``(B, C * 8, h, w) -> (B, C, h, w)``, invariant channels.

    The feature size is fixed at construction so the ONNX Reshape has a constant shape.
    """

    def __init__(self, channels: int, feature_size: tuple[int, int]):
        super().__init__()
        self.shape = (-1, channels, d4.ORDER, *feature_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(self.shape).amax(dim=2)  # (B,C*8,h,w) -> (B,C,8,h,w) -> (B,C,h,w)


def symmetric_max_pool(size: tuple[int, int]) -> nn.MaxPool2d:
    """A stride-2 max pool whose windows map onto each other under D4 for an (H, W) input.

    Even side: 2-wide windows tiling [0, n); odd side: 3-wide windows centred on 0, 2, .., n-1.
    Either way the output side is ``ceil(n / 2)``.
    """
    kernel = tuple(2 if n % 2 == 0 else 3 for n in size)
    padding = tuple(0 if n % 2 == 0 else 1 for n in size)
    return nn.MaxPool2d(kernel, stride=2, padding=padding)


class P4MNet(nn.Module):
    """Lifting conv, then per stage a symmetric pool and a group conv, orientation pool, head.

    ``(B, C, H, W) float32 -> (B, n_outputs) float32``, invariant under D4 for H == W (under flips
    and the 180-degree rotation otherwise).
    """

    def __init__(self, *, in_channels: int, n_outputs: int, kind: str, input_size: tuple[int, int],
                 widths: tuple[int, ...], head: str | None):
        super().__init__()
        layers: list[nn.Module] = [P4MConvBNReLU(in_channels, widths[0], lifting=True)]
        size, previous = tuple(input_size), widths[0]
        for width in (*widths[1:], widths[-1]):
            layers.append(symmetric_max_pool(size))
            size = tuple((n + 1) // 2 for n in size)
            layers.append(P4MConvBNReLU(previous, width, lifting=False))
            previous = width
        self.features = nn.Sequential(*layers)
        self.orientation_pool = OrientationMaxPool(previous, size)
        self.head = make_head(kind, previous, n_outputs, style=head, feature_size=size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.orientation_pool(self.features(images)))


@register_model(input_size=(64, 64), kinds=INVARIANT_KINDS)
def p4m_small(*, in_channels: int, n_outputs: int, kind: str, input_size: tuple[int, int],
              widths: tuple[int, ...] = (4, 8, 16), head: str | None = None) -> nn.Module:
    """Invariant to 90-degree rotations and flips by construction (D4 group convs).

    Options:
        widths: features per stage (each carried in 8 orientations); one pool + group conv per
            stage after the lifting conv, plus one more at the end.
        head: "pool" (default) or "location"; other heads would break the invariance.
    """
    if head not in (None, "pool", "location"):
        raise EdgeregError(
            f"p4m_small stays invariant only with a pooled head ('pool' or 'location'), got {head!r}; "
            f"drop the head option"
        )
    return P4MNet(in_channels=in_channels, n_outputs=n_outputs, kind=kind, input_size=input_size,
                  widths=positive_ints(widths, option="widths", model="p4m_small"), head=head)
