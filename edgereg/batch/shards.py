"""``--shard i/n``: split a job's inputs between n independent runs (a job array)."""

from __future__ import annotations

from dataclasses import dataclass

from edgereg.errors import EdgeregError


@dataclass(frozen=True)
class Shard:
    """``--shard i/n``: every input whose 0-based position p satisfies ``p % n == i - 1``.

    Shards are numbered 1..n (shard 1/4 is the first quarter), so the n outputs of a job array
    together hold every input exactly once.
    """

    index: int  # 1-based shard number, 1..count
    count: int  # number of shards n >= 1

    @classmethod
    def parse(cls, text: str) -> Shard:
        """Parse ``"i/n"`` with 1 <= i <= n.

        Raises:
            EdgeregError: anything else, with the fix.
        """
        parts = str(text).split("/")
        if len(parts) == 2 and all(p.strip().isdigit() for p in parts):
            index, count = int(parts[0]), int(parts[1])
            if count >= 1 and 1 <= index <= count:
                return cls(index, count)
        hint = ""
        if len(parts) == 2 and parts[0].strip() == "0":
            hint = "; shards are numbered from 1 — for a 0-based job array id use --shard $((ID + 1))/n"
        raise EdgeregError(f"--shard must be i/n with 1 <= i <= n (e.g. --shard 2/8), got {text!r}{hint}")

    def selects(self, position: int) -> bool:
        return position % self.count == self.index - 1


__all__ = ["Shard"]
