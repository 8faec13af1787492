"""What a batch-scoring run reports, for both engines (``edgereg infer PATH``, local or ``--engine ray``).

The progress line on stderr (only when stderr is a terminal), the summary line, the exit code
(0 all scored, 3 some failed, 130 interrupted, 141 stdout closed by its reader) and the readings
part of the resume identity. ``edgereg.cli.infer`` (the local engine) and ``edgereg.cli.ray``
import them from here, so both engines say and return the same things.
"""

from __future__ import annotations

import os
import sys
import time

FAILURES_SHOWN = 3  # failures quoted in the summary line


class Progress:
    """Keeps the latest ScoreStats; on a terminal, also shows them as one line rewritten in place:
    ``1,234/5,000  25% | 312 img/s | 2 failed | ETA 0:00:12``."""

    def __init__(self, stream, *, show: bool, every_s: float = 0.25) -> None:
        self.stream = stream
        self.show = show
        self.every_s = every_s
        self.latest = None
        self._last = 0.0
        self._shown = False

    def update(self, stats, *, force: bool = False) -> None:
        self.latest = stats
        now = time.monotonic()
        if not self.show or (now - self._last < self.every_s and not force):
            return
        self._last = now
        rate = stats.images_per_s
        text = f"{stats.done:,}"
        if stats.total:
            text += f"/{stats.total:,} {100 * stats.done / stats.total:3.0f}%"
        text += f" | {rate:,.0f} img/s | {stats.failed:,} failed"
        if stats.total and rate > 0:
            eta = int((stats.total - stats.done) / rate)
            text += f" | ETA {eta // 3600}:{eta // 60 % 60:02d}:{eta % 60:02d}"
        self.stream.write("\r" + text + "\x1b[K")
        self.stream.flush()
        self._shown = True

    def close(self) -> None:
        """Show the final counts and end the line (when the line was shown at all)."""
        if self._shown:
            self.update(self.latest, force=True)
            self.stream.write("\n")
            self.stream.flush()


def readings_identity(predictor) -> str:
    """How the values are made beyond the card, for the resume identity: the level and calibration."""
    level = predictor.lab.level if predictor.lab.has_intervals else None
    calibration = predictor.lab.calibration
    return (f"confidence {'none' if level is None else f'{level:g}'}, "
            f"calibration {calibration.id if calibration else 'none'}")


def batch_summary(stats, *, out, done, shard, source) -> str:
    """``scored 1,998, failed 2 (reasons in preds.errors.csv: 'a.png': empty file; ...); folder 'photos'
    (2,000 images); 312.4 images/s``. The first failures are quoted whatever the verbosity."""
    from edgereg.batch.encoding import errors_path_for

    scored, failed = (stats.scored, stats.failed) if stats else (0, 0)
    summary = f"scored {scored:,}, failed {failed:,}"
    if failed:
        quoted = "; ".join(f"'{key}': {reason}" for key, reason in stats.first_failures[:FAILURES_SHOWN])
        more = f"; {failed - FAILURES_SHOWN:,} more" if failed > FAILURES_SHOWN else ""
        where = f"reasons in {errors_path_for(out)}: " if out is not None else ""
        summary += f" ({where}{quoted}{more})"
    if stats and stats.quality:
        counts = ", ".join(f"{n:,} {reason}" for reason, n in sorted(stats.quality.items()))
        summary += f"; quality gate: {counts} ({'withheld' if stats.withheld else 'flagged'})"
    if done:
        summary += f"; {len(done):,} already in {out}"
    summary += f"; shard {shard.index}/{shard.count} of {source.description}" if shard else f"; {source.description}"
    if stats and stats.elapsed_s > 0:
        summary += f"; {stats.images_per_s:,.1f} images/s"
    return summary


def finish_batch(stats, *, out, done, shard, source, fail_fast: bool, interrupted: bool = False) -> int:
    """Print the summary line on stderr and return the run's exit code.

    Args:
        stats: the run's ``ScoreStats`` (the latest progress when interrupted), or None.
        out: the output file, or None for stdout; done: keys already in it (--resume);
        shard: the ``Shard`` or None; source: the scored source.
        fail_fast: --fail-fast was given (the summary says the run stopped at the first failure).
        interrupted: the run was stopped by Ctrl-C.

    Returns:
        130 interrupted, 3 when some images failed, else 0.
    """
    summary = batch_summary(stats, out=out, done=done, shard=shard, source=source)
    if interrupted:
        print(f"edgereg: interrupted: {summary}" + ("; finish with --resume" if out else ""), file=sys.stderr)
        return 130
    if fail_fast and stats.failed:
        summary += "; stopped at the first failure (--fail-fast)"
    print(f"edgereg: {summary}", file=sys.stderr)
    return 3 if stats.failed else 0


def stdout_closed() -> int:
    """The reader of stdout went away (``| head``, a forwarder that died): stop quietly, exit 141."""
    try:  # later writes, and Python's own flush at exit, go nowhere instead of failing again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass
    print("edgereg: stdout was closed by its reader; stopped", file=sys.stderr)
    return 141  # 128 + SIGPIPE, what a shell reports for a tool stopped by a closed pipe
