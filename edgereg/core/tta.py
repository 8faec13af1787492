"""Test-time augmentation specs: which views an image is read in (each target kind reduces them:
``edgereg.core.kinds``).

View conventions (shared by the numba kernels, the numpy reference and the reductions):

* ``d4`` — 8 exact views. View ``k`` is ``rot90(image, k % 4)`` (counter-clockwise as displayed,
  ``np.rot90`` with axes (0, 1)), then, for ``k >= 4``, a horizontal flip (``np.flip(axis=1)``).
  Needs a square input.
* ``rot:N`` — N views rotated counter-clockwise (as displayed) by ``360 * j / N`` degrees about the
  image centre ``((W-1)/2, (H-1)/2)`` with bilinear sampling; pixels outside the inscribed circle
  are set to the fill value, whatever the card's crop.
* ``none`` — one view.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgereg.errors import TTAError

MAX_ROTATIONS = 64


@dataclass(frozen=True)
class TTASpec:
    """A parsed TTA spec.

    Attributes:
        mode: "none", "d4" or "rot".
        n: number of views (1, 8 or N).
    """

    mode: str
    n: int

    def __str__(self) -> str:
        return {"none": "none", "d4": "d4"}.get(self.mode, f"rot:{self.n}")

    def angles_deg(self) -> np.ndarray:
        """(V,) float64: the counter-clockwise rotation of each view in degrees."""
        if self.mode == "rot":
            return 360.0 * np.arange(self.n) / self.n
        if self.mode == "d4":
            return 90.0 * (np.arange(8) % 4)
        return np.zeros(1)

    def flipped(self) -> np.ndarray:
        """(V,) bool: whether each view is horizontally flipped (after its rotation)."""
        if self.mode == "d4":
            return np.arange(8) >= 4
        return np.zeros(self.n, dtype=bool)


def parse_tta(spec: str | None) -> TTASpec:
    """Parse ``"none"``, ``"d4"`` or ``"rot:N"`` (2 <= N <= 64). ``None`` means none."""
    text = "none" if spec is None else str(spec).strip().lower()
    if text in ("none", "", "off", "0"):
        return TTASpec("none", 1)
    if text == "d4":
        return TTASpec("d4", 8)
    if text.startswith("rot:"):
        count = text[4:]
        if count.isdigit() and 2 <= int(count) <= MAX_ROTATIONS:
            return TTASpec("rot", int(count))
    raise TTAError(
        f"unknown TTA {spec!r}: expected 'none', 'd4' or 'rot:N' with 2 <= N <= {MAX_ROTATIONS}, "
        "e.g. --tta d4"
    )
