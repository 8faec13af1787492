"""A multilayer perceptron on the raw pixels: the seed paper's "None" network (no convolutions)."""

from __future__ import annotations

import torch
from torch import nn

from edgereg.training.models.registry import positive_ints, register_model
from edgereg.training.targets.heads import init_output_bias


class MLP(nn.Module):
    """Flatten, then Linear + ReLU per hidden width, then a linear output.

    ``(B, C, H, W) float32 -> (B, n_outputs) float32``.
    """

    def __init__(self, *, in_features: int, hidden: tuple[int, ...], n_outputs: int, kind: str):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]  # (B,C,H,W) -> (B,C*H*W)
        previous = in_features
        for width in hidden:
            layers += [nn.Linear(previous, width), nn.ReLU(inplace=True)]
            previous = width
        output = nn.Linear(previous, n_outputs)
        init_output_bias(output, kind)
        self.layers = nn.Sequential(*layers, output)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.layers(images)


@register_model(input_size=(28, 28), channels="gray")
def mlp(*, in_channels: int, n_outputs: int, kind: str, input_size: tuple[int, int],
        hidden: tuple[int, ...] = (120, 60)) -> nn.Module:
    """No convolutions (seed 004's "None"): pixels -> 120 -> 60 -> outputs; a baseline.

    Options:
        hidden: widths of the hidden layers.
    """
    hidden = positive_ints(hidden, option="hidden", model="mlp")
    return MLP(in_features=in_channels * input_size[0] * input_size[1], hidden=hidden,
               n_outputs=n_outputs, kind=kind)
