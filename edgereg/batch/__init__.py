"""Folder scoring on one machine: input sources, the scoring loop and the durable row writers.

Modules: ``sources`` (folders, globs, lists, videos, cameras -> frames), ``scoring`` (decode threads,
batched inference, the scoring loop), ``shards`` (``--shard i/n``), ``flags`` (the flags of a
reading), ``failures`` (why an input failed, in one line), ``encoding`` (a row as a CSV or JSONL
line), ``writers`` (rows and errors appended whole, ``--overwrite``), ``resume`` (the rows already
written and the identity record ``--resume`` checks). The columns and the row of a reading are
:mod:`edgereg.core.rows`; atomic whole-file writes are :mod:`edgereg.files`. Scoring beyond one
machine is :mod:`edgereg.cluster`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgereg._lazy import lazy_exports

if TYPE_CHECKING:  # the names for type checkers and IDEs; at run time __getattr__ imports them
    from edgereg.batch.resume import OutputIdentity, load_done_keys
    from edgereg.batch.scoring import output_columns, score_source
    from edgereg.batch.shards import Shard
    from edgereg.batch.sources import CameraSource, open_source
    from edgereg.batch.writers import open_errors, open_rows

__all__ = ["CameraSource", "OutputIdentity", "Shard", "load_done_keys", "open_errors", "open_rows", "open_source",
           "output_columns", "score_source"]

_LAZY = {
    "open_source": "edgereg.batch.sources",
    "CameraSource": "edgereg.batch.sources",
    "output_columns": "edgereg.batch.scoring",
    "score_source": "edgereg.batch.scoring",
    "Shard": "edgereg.batch.shards",
    "open_rows": "edgereg.batch.writers",
    "open_errors": "edgereg.batch.writers",
    "OutputIdentity": "edgereg.batch.resume",
    "load_done_keys": "edgereg.batch.resume",
}

__getattr__ = lazy_exports(__name__, _LAZY)
