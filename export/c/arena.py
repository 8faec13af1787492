"""The static activation arena of generated C: where every tensor of a lowered program lives.

A tensor is live from the op that writes it to the last op that reads it. Element-wise ops may write
over an input that dies with them; the rest is placed greedy-by-size (largest first, at the lowest
offset clear of every block whose lifetime overlaps). :func:`plan_arena` returns the byte offsets and
the arena's size, which is the generated code's whole RAM for activations.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgereg.export.c.lowering import Program
from edgereg.export.c.ops import Tensor

ARENA_ALIGNMENT = 4  # bytes; every tensor starts on a float boundary


@dataclass(frozen=True)
class ArenaPlan:
    """Where every tensor lives in the static arena."""

    offsets: dict[int, int]  # id(storage representative) -> byte offset
    storage: dict[int, Tensor]  # id(tensor root) -> the representative it shares bytes with
    size: int  # arena bytes

    def offset(self, tensor: Tensor) -> int:
        return self.offsets[id(self.storage[id(tensor.root)])]


def plan_arena(program: Program) -> ArenaPlan:
    """Place tensors in one arena: in-place element-wise ops first, then greedy by size.

    A tensor is live from the op that writes it to the last op that reads it (the input from the
    start, the output to the end). Blocks are placed largest first at the lowest offset that does
    not overlap any placed block whose lifetime intersects (the "greedy by size" planner).
    """
    roots = {}  # id(root) -> root: every buffer a tensor view (reshape, slice of nothing) stands for
    for op in program.ops:
        for t in op.reads() + op.writes():
            roots[id(t.root)] = t.root
    roots[id(program.input.root)] = program.input.root
    roots[id(program.output.root)] = program.output.root
    storage = dict(roots)  # id(root) -> the root whose bytes it uses (itself, or an input it overwrites)

    def lifetimes() -> dict[int, list[int]]:
        """id(storage) -> [first op, last op] touching it (inclusive; the input from -1, the output to the end)."""
        spans: dict[int, list[int]] = {}
        for k, op in enumerate(program.ops):
            for t in op.writes() + op.reads():
                span = spans.setdefault(id(storage[id(t.root)]), [k, k])
                span[0], span[1] = min(span[0], k), max(span[1], k)
        spans.setdefault(id(storage[id(program.input.root)]), [-1, -1])[0] = -1
        spans.setdefault(id(storage[id(program.output.root)]), [len(program.ops)] * 2)[1] = len(program.ops)
        return spans

    # In place: an element-wise op may write over an input that nothing reads after it, when every
    # element is read and written at the same index (same shape, same element size).
    for k, op in enumerate(program.ops):
        candidate = op.in_place_input()
        if candidate is None:
            continue
        target = storage[id(candidate.root)]
        (out,) = op.writes()
        same_bytes_other_shape = [t for t in op.reads() if t is not candidate
                                  and storage[id(t.root)] is target and t.shape != candidate.shape]
        if (lifetimes()[id(target)][1] == k and not same_bytes_other_shape
                and storage[id(out.root)] is out.root and target.nbytes >= out.nbytes):
            for key, rep in storage.items():
                if rep is out.root:
                    storage[key] = target

    # Greedy by size: the largest buffers first, each at the lowest offset clear of every placed
    # buffer whose lifetime overlaps its own.
    spans = lifetimes()
    sizes: dict[int, int] = {}
    for key, rep in storage.items():
        sizes[id(rep)] = max(sizes.get(id(rep), 0), roots[key].nbytes)
    offsets: dict[int, int] = {}
    for key in sorted(sizes, key=lambda key: (-sizes[key], spans[key][0])):
        start, end = spans[key]
        busy = sorted((offsets[other], offsets[other] + sizes[other]) for other in offsets
                      if spans[other][0] <= end and start <= spans[other][1])
        offset = 0
        for lo, hi in busy:
            if offset + sizes[key] <= lo:
                break  # fits in the gap before this block
            offset = max(offset, _align(hi))
        offsets[key] = offset
    size = max((offsets[k] + sizes[k] for k in offsets), default=0)
    return ArenaPlan(offsets, storage, _align(size))


def _align(n: int) -> int:
    return -(-n // ARENA_ALIGNMENT) * ARENA_ALIGNMENT
