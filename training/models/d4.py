"""The dihedral group D4 (the 8 rotations by 90 degrees and flips of a square) as index tables.

Element ``g`` in 0..7 follows edgereg's TTA convention: rotate counter-clockwise as displayed by
``90 * (g % 4)`` degrees (``rot90`` on the last two axes), then, for ``g >= 4``, flip horizontally.
The tables are computed from that definition, not typed in.
"""

from __future__ import annotations

import torch

ORDER = 8
IDENTITY = 0


def transform(array: torch.Tensor, g: int) -> torch.Tensor:
    """Apply element ``g`` to the last two axes (H, W) of ``array`` (any leading shape)."""
    out = torch.rot90(array, g % 4, dims=(-2, -1))
    return out.flip(-1) if g >= 4 else out


def cayley_table() -> list[list[int]]:
    """``table[a][b]`` = the element equal to applying ``b`` first, then ``a``."""
    probe = torch.arange(9.0).reshape(3, 3)  # all values distinct: the 8 images differ
    images = [transform(probe, g) for g in range(ORDER)]

    def index_of(image: torch.Tensor) -> int:
        return next(g for g, candidate in enumerate(images) if torch.equal(candidate, image))

    return [[index_of(transform(transform(probe, b), a)) for b in range(ORDER)] for a in range(ORDER)]


def inverses(table: list[list[int]]) -> list[int]:
    """``inverse[a]`` = the element ``b`` with ``a`` after ``b`` equal to the identity."""
    return [row.index(IDENTITY) for row in table]


def spatial_index(kernel_size: int) -> torch.Tensor:
    """(8, k*k) int64: row g gathers a flattened k x k kernel into its transform by g.

    ``transform(w, g).flatten(-2) == w.flatten(-2)[..., spatial_index(k)[g]]``.
    """
    cells = torch.arange(kernel_size * kernel_size).reshape(kernel_size, kernel_size)
    return torch.stack([transform(cells, g).flatten() for g in range(ORDER)])


def group_conv_index(kernel_size: int) -> torch.Tensor:
    """(8, 8*k*k) int64 gather index building a group conv's filters for each output element.

    For a weight ``psi`` of shape (O, C, 8, k, k), flattened to (O, C, 8*k*k), row ``g`` gathers
    ``psi'[o, c, h] = transform(psi[o, c, g^-1 h], g)`` for every input element ``h``: the
    filter bank rotated/flipped by ``g`` with its group axis permuted by the D4 table. A conv with
    these filters is equivariant: transforming the input by ``t`` transforms each output map by
    ``t`` and moves output element ``g`` to ``t g``.
    """
    table = cayley_table()
    inverse = inverses(table)
    cells = kernel_size * kernel_size
    space = spatial_index(kernel_size)
    rows = []
    for g in range(ORDER):
        source = [table[inverse[g]][h] for h in range(ORDER)]  # g^-1 h, per input element h
        rows.append(torch.cat([source[h] * cells + space[g] for h in range(ORDER)]))
    return torch.stack(rows)
