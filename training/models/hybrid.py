"""A network that learns what a block readout misses: readout + zero-initialized network residual."""

from __future__ import annotations

import torch
from torch import nn

from edgereg.core.card import KINDS
from edgereg.core.kinds import target_kind
from edgereg.errors import EdgeregError
from edgereg.training.blocks.readout import DEFAULT_BLOCKS, BlockReadout
from edgereg.training.models.registry import create_model, register_model, require_input_size


class Hybrid(nn.Module):
    """``raw = readout(x) + trunk(x)``: a fitted, frozen block readout plus a network whose output
    layer starts at zero, so the fit starts exactly at the readout and the network learns the rest.

    ``(B, C, H, W) float32 normalized -> (B, n_outputs) raw``. The readout is fitted in closed form
    on the training rows before the first step (``needs_data_init``; see
    :func:`edgereg.training.blocks.fitting.initialize_from_data`) and its weights never train.
    """

    needs_data_init = True

    def __init__(self, *, in_channels: int, n_outputs: int, kind: str, input_size: tuple[int, int], trunk: str,
                 blocks: str, quadratic: bool):
        super().__init__()
        self.readout = BlockReadout(in_channels=in_channels, n_outputs=n_outputs, kind=kind, input_size=input_size,
                                    blocks=blocks, quadratic=quadratic)
        for parameter in self.readout.parameters():
            parameter.requires_grad_(False)
        self.trunk = create_model(trunk, n_outputs=n_outputs, kind=kind, in_channels=in_channels,
                                  input_size=input_size)
        last = [m for m in self.trunk.modules() if isinstance(m, (nn.Linear, nn.Conv2d))][-1]
        with torch.no_grad():  # the residual starts at zero: the fit starts at the readout
            last.weight.zero_()
            if last.bias is not None:
                last.bias.zero_()
        self.input_shape = (in_channels, *input_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # the readout always in float32, also inside a bf16 autocast step: its logs of band powers and
        # counts of levels are what it was fitted on, and it does not train
        with torch.autocast(device_type=images.device.type, enabled=False):
            base = self.readout(images.float())
        return base + self.trunk(images)


NUMBER_KINDS = tuple(k for k in KINDS if not target_kind(k).xy_points)


@register_model(input_size=(64, 64), kinds=NUMBER_KINDS)
def hybrid(*, in_channels: int, n_outputs: int, kind: str, input_size: tuple[int, int], trunk: str = "cnn_small",
           blocks: str = DEFAULT_BLOCKS, quadratic: bool = False) -> nn.Module:
    """A block readout plus a network (trunk) trained on what the readout misses.

    Options:
        trunk: the registry network that learns the residual (not coords: a soft-argmax head does
            not start at zero).
        blocks: the readout's feature blocks (see the readout model).
        quadratic: the readout also uses the squares of its compact features.
    """
    require_input_size(input_size, 8, model="hybrid")
    if target_kind(kind).xy_points:
        raise EdgeregError("the hybrid model is for numbers, not coordinates (a soft-argmax head does not "
                           "start at zero); use heatmap_small or the readout with blocks=template")
    return Hybrid(in_channels=in_channels, n_outputs=n_outputs, kind=kind, input_size=input_size, trunk=str(trunk),
                  blocks=blocks, quadratic=str(quadratic).lower() in ("1", "true", "yes"))
