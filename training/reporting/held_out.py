"""RUN/held_out.npz: predictions of rows by models that never saw them (read by export/conformal)."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgereg.training.run import atomic_write_bytes

HELD_OUT_FILE = "held_out.npz"


@dataclass(frozen=True)
class HeldOut:
    """Predictions of rows by models that never saw them, kept when the shipped model was refitted on
    every row (k-fold or holdout + refit): what honest intervals are calibrated on (export/conformal).

    ``rows (N,) int64`` dataset rows, ``folds (N,) int64`` the fold that held each out, ``true`` and
    ``pred (N, T) float64`` in the user's units; ``scored_by`` says which models predicted them.
    """

    rows: np.ndarray
    folds: np.ndarray
    true: np.ndarray
    pred: np.ndarray
    scored_by: str

    def write(self, run_dir: Path) -> None:
        """RUN/held_out.npz, written atomically."""
        buffer = io.BytesIO()
        np.savez(buffer, rows=np.asarray(self.rows, np.int64), folds=np.asarray(self.folds, np.int64),
                 true=np.asarray(self.true, np.float64), pred=np.asarray(self.pred, np.float64),
                 scored_by=np.asarray(self.scored_by))
        atomic_write_bytes(run_dir / HELD_OUT_FILE, buffer.getvalue())

