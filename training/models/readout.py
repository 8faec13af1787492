"""The block readout as a registry model (its fitting is closed-form: edgereg.training.blocks)."""

from __future__ import annotations

from torch import nn

from edgereg.training.blocks.readout import DEFAULT_BLOCKS, BlockReadout
from edgereg.training.models.registry import register_model, require_input_size


@register_model(input_size=(64, 64))
def readout(*, in_channels: int, n_outputs: int, kind: str, input_size: tuple[int, int],
            blocks: str = DEFAULT_BLOCKS, hidden: int = 0, quadratic: bool = False) -> nn.Module:
    """Fixed feature blocks + ridge (or MLP) readout, fitted in closed form in seconds.

    Options:
        blocks: comma-separated feature blocks: moments, colour, spectrum, bank, tiles, pixels.
        hidden: 0 for a ridge readout, else the width of a one-hidden-layer MLP readout.
        quadratic: also the squares of the compact blocks' standardized features.
    """
    require_input_size(input_size, 8, model="readout")
    return BlockReadout(in_channels=in_channels, n_outputs=n_outputs, kind=kind, input_size=input_size,
                        blocks=blocks, hidden=int(hidden),
                        quadratic=str(quadratic).lower() in ("1", "true", "yes"))
