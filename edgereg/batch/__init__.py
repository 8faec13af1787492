"""Folder scoring on one machine: input sources, the scoring loop and the durable row writers.

Modules: ``sources`` (folders, globs, lists, videos, cameras -> frames), ``scoring`` (decode threads,
batched inference, the row of each image and why it failed), ``writers`` (CSV/JSONL rows written
whole, resume identity). Scoring beyond one machine is :mod:`edgereg.cluster`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgereg._lazy import lazy_exports

if TYPE_CHECKING:  # the names for type checkers and IDEs; at run time __getattr__ imports them
    from edgereg.batch.scoring import output_columns, score_source
    from edgereg.batch.sources import CameraSource, open_source

__all__ = ["CameraSource", "open_source", "output_columns", "score_source"]

_LAZY = {
    "open_source": "edgereg.batch.sources",
    "CameraSource": "edgereg.batch.sources",
    "output_columns": "edgereg.batch.scoring",
    "score_source": "edgereg.batch.scoring",
}

__getattr__ = lazy_exports(__name__, _LAZY)
