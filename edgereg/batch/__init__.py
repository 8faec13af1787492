"""Folder scoring on one machine: input sources, the scoring loop and the durable row writers.

Modules: ``sources`` (folders, globs, lists, videos, cameras -> frames), ``scoring`` (decode threads,
batched inference, the row of each image and why it failed), ``writers`` (CSV/JSONL rows written
whole, resume identity). Scoring beyond one machine is :mod:`edgereg.cluster`.
"""

from __future__ import annotations

__all__ = ["CameraSource", "open_source", "output_columns", "score_source"]

_LAZY = {
    "open_source": "edgereg.batch.sources",
    "CameraSource": "edgereg.batch.sources",
    "output_columns": "edgereg.batch.scoring",
    "score_source": "edgereg.batch.scoring",
}


def __getattr__(name: str):
    """Import a public name's module on first use (keeps `import edgereg.batch` cheap and cycle-free)."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
