"""Processing blocks: the readings an engineer of the field tries first, as exportable torch modules.

:mod:`~edgereg.training.blocks.features` holds the fixed feature blocks (moments and order
statistics, colour regions, a filter bank, pixels); :mod:`~edgereg.training.blocks.readout` the
``readout`` model (blocks + a closed-form ridge or a small MLP) and its fitting;
:mod:`~edgereg.training.blocks.race` fits the candidate readouts on a validation plan, so the
trainer ships a CNN only when it beats every one of them on validation.
"""

from edgereg.training.blocks.features import BLOCKS
from edgereg.training.blocks.readout import DEFAULT_BLOCKS, BlockReadout, fit_readout, parse_blocks

__all__ = ["BLOCKS", "DEFAULT_BLOCKS", "BlockReadout", "fit_readout", "parse_blocks"]
