"""Folder scoring on Ray Data: decode tasks -> an actor pool of ONNX Runtime sessions -> the driver.

The pipeline:

1. The driver lists the source (the same classes and order as the local engine), applies
   ``--shard`` and ``--resume``, and hands Ray one small Arrow table per block of inputs: row
   number, key, path and any listing error (:func:`input_blocks`).
2. Decode tasks (:func:`edgereg.cluster.stages.decode_batch`, ``DECODE_TASK_CPUS`` each) read,
   decode, crop/resize and run the numba preprocessing; a bad file becomes its reason, worded as
   the local engine words it.
3. An actor pool (:class:`edgereg.cluster.stages.OnnxScorer`, one ONNX Runtime session each,
   intra-op threads = the actor's CPUs, or one GPU each) runs the model, reduces the TTA views and
   sets the flags. The pool is sized by :func:`edgereg.cluster.plan.plan_resources`.
4. The driver receives the scored blocks (in input order unless ``ordered=False``), drops any
   row it has already received (a retried task can deliver a block twice; each input is written
   once whatever Ray does), and hands rows and errors to a sink: committed parts
   (:class:`PartSink`, exactly once, see ``edgereg.cluster.parts``) or stdout (:class:`StreamSink`).
5. At the end every input must have come back once, as a row or an error: a block lost on the
   way fails the run (:class:`~edgereg.errors.IncompleteRunError`, exit 1) before the merge, with
   what came back committed, so ``--resume`` scores the missing inputs.

Worker processes that die are Ray's to replace: Ray Data restarts dead actors and retries their
tasks, and retries tasks whose worker died; the driver's de-duplication and the parts make the
output exact whatever was retried.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

import numpy as np

from edgereg.batch.encoding import encode_row
from edgereg.batch.scoring import FAILURES_KEPT, ScoreStats
from edgereg.batch.shards import Shard
from edgereg.batch.sources import BatchSource, Entry, VideoSource
from edgereg.batch.writers import RowWriter
from edgereg.cluster.parts import PartStore, error_line
from edgereg.cluster.plan import ResourcePlan
from edgereg.cluster.stages import FLAG_SEPARATOR, OnnxScorer, decode_batch
from edgereg.core.rows import prediction_row, reading_values
from edgereg.errors import EdgeregError, IncompleteRunError
from edgereg.preprocess.decode import DEFAULT_MAX_PIXELS

BLOCK_BYTES = 64 << 20  # target size of one decode task's output (model input, float32)
MAX_BLOCK_ROWS = 1024  # inputs per decode task at most (small blocks pipeline sooner)


@dataclass(frozen=True)
class RayRunConfig:
    """How one ``--engine ray`` run is laid out.

    Attributes:
        batch_size: images per ONNX Runtime call in the actors.
        ordered: deliver rows in input order (Ray Data's ``preserve_order``); False: as they finish.
        commit_rows: rows per committed part (at most this much work is redone after a crash).
        commit_seconds: commit a part at least this often while rows arrive.
        max_pixels: images whose header declares more pixels are failures (``--max-pixels``).
        confidence: the level of the ``_lo``/``_hi`` bounds (None: none; docs/lab-grade.md).
        calibration: apply the card's calibration to standards.
    """

    batch_size: int = 32
    ordered: bool = True
    commit_rows: int = 4096
    commit_seconds: float = 30.0
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    confidence: float | None = 0.9
    calibration: bool = True


class PartSink:
    """Encodes rows and errors as they arrive and commits them as parts of a :class:`PartStore`."""

    def __init__(self, store: PartStore, *, commit_rows: int, commit_seconds: float) -> None:
        self.store = store
        self.commit_rows = commit_rows
        self.commit_seconds = commit_seconds
        self._rows: list[tuple[str, bytes]] = []
        self._errors: list[tuple[str, bytes]] = []
        self._last = time.monotonic()

    def row(self, row: dict) -> None:
        self._rows.append((row["path"], encode_row(row, self.store.fmt)))

    def error(self, key: str, reason: str) -> None:
        self._errors.append((key, error_line(key, reason)))

    def maybe_commit(self) -> None:
        if (len(self._rows) + len(self._errors) >= self.commit_rows
                or time.monotonic() - self._last >= self.commit_seconds):
            self.commit()

    def commit(self) -> None:
        if self._rows or self._errors:
            self.store.commit(self._rows, self._errors)
        self._rows, self._errors, self._last = [], [], time.monotonic()


class StreamSink:
    """Writes rows to a :class:`RowWriter` as they arrive (stdout: nothing to resume)."""

    def __init__(self, rows: RowWriter) -> None:
        self.rows = rows

    def row(self, row: dict) -> None:
        self.rows.write(row)

    def error(self, key: str, reason: str) -> None:
        pass  # the caller's on_error reports it

    def maybe_commit(self) -> None:
        pass

    def commit(self) -> None:
        pass


def make_row(key: str, names: Sequence[str], values: np.ndarray, spread: np.ndarray | None,
             flags: tuple[str, ...], lo: np.ndarray | None = None, hi: np.ndarray | None = None) -> dict:
    """One output row as the local engine lays it out: ``path``, a value per target (followed by its
    ``_lo`` and ``_hi`` bounds with intervals), a spread per target with TTA, ``flags``.

    Args:
        values: (T,) float64 reading in physical units.
        spread: (T,) float64 TTA spread, or None without TTA.
        lo, hi: (T,) float64 interval bounds, or None without intervals.
    """
    return prediction_row(key, reading_values(names, values, spread, lo, hi), flags)


def select_inputs(source: BatchSource, *, skip: Collection[str] = frozenset(),
                  shard: Shard | None = None) -> list[Entry]:
    """The entries this run scores, in input order (``Entry.index`` is the source position).

    Raises:
        EdgeregError: a video source (its frames are decoded in order by one reader).
    """
    if isinstance(source, VideoSource):
        raise EdgeregError("--engine ray scores image files (a folder, a glob, a list of paths); for a video "
                           "use the default --engine local")
    skip = skip if isinstance(skip, (set, frozenset)) else set(skip)
    return list(source.entries(lambda position, key: (shard is None or shard.selects(position)) and key not in skip))


def block_rows(input_size: tuple[int, int], channels: int, views: int, commit_rows: int = MAX_BLOCK_ROWS) -> int:
    """Inputs per decode task: about ``BLOCK_BYTES`` of model input, at most ``MAX_BLOCK_ROWS`` and
    at most ``commit_rows`` (a part then never waits for a block larger than itself).

    (An actor batch larger than a block is gathered from several blocks by Ray Data.)
    """
    per_image = views * channels * input_size[0] * input_size[1] * 4  # float32 bytes of one image's views
    return int(max(1, min(MAX_BLOCK_ROWS, commit_rows, BLOCK_BYTES // per_image)))


def input_blocks(entries: Sequence[Entry], rows: int) -> list:
    """One ``pyarrow.Table`` (index, key, path, error) per ``rows`` entries; keys and paths as bytes."""
    import pyarrow as pa

    tables = []
    for start in range(0, len(entries), rows):
        chunk = entries[start:start + rows]
        tables.append(pa.table({
            "index": pa.array(np.arange(start, start + len(chunk), dtype=np.int64)),
            "key": pa.array([e.key.encode("utf-8", "surrogateescape") for e in chunk], type=pa.binary()),
            "path": pa.array([os.fsencode(e.path) if e.path is not None else b"" for e in chunk], type=pa.binary()),
            "error": pa.array([e.error or "" for e in chunk], type=pa.string()),
        }))
    return tables


def build_dataset(ray, entries: Sequence[Entry], predictor, model_bytes: bytes, *, plan: ResourcePlan,
                  providers: str, config: RayRunConfig):
    """The Ray Data pipeline over ``entries`` (lazy; iterate it to run)."""
    from ray.data import ActorPoolStrategy

    rows = block_rows(predictor.config.input_size, predictor.config.n_channels, predictor.tta.n,
                      config.commit_rows)
    dataset = ray.data.from_arrow(input_blocks(entries, rows))
    dataset = dataset.map_batches(decode_batch, batch_size=None, batch_format="numpy", num_cpus=plan.decode_cpus,
                                  fn_kwargs={"config": predictor.config, "tta": predictor.tta,
                                             "max_pixels": config.max_pixels})
    dataset = dataset.map_batches(
        # whole decode blocks (Ray Data needs an int with GPUs); the actor's Predictor splits each
        # into ONNX Runtime calls of config.batch_size images
        OnnxScorer, batch_size=rows, batch_format="numpy",
        compute=ActorPoolStrategy(min_size=plan.min_actors, max_size=plan.max_actors),
        num_cpus=plan.actor_cpus, num_gpus=plan.actor_gpus or None,
        fn_constructor_kwargs={"model": model_bytes, "card": predictor.card.to_json(), "providers": providers,
                               "tta": str(predictor.tta), "batch_size": config.batch_size,
                               "threads": plan.threads, "confidence": config.confidence,
                               "calibration": config.calibration})
    context = dataset.context  # this dataset's own copy of Ray Data's settings
    context.execution_options.preserve_order = config.ordered
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    context.enable_auto_log_stats = False
    context.op_resource_reservation_enabled = False
    return dataset


def score_on_ray(ray, entries: Sequence[Entry], predictor, model_bytes: bytes, sink, *, plan: ResourcePlan,
                 providers: str = "auto", config: RayRunConfig = RayRunConfig(), fail_fast: bool = False,
                 on_error: Callable[[str, str], None] | None = None,
                 on_progress: Callable[[ScoreStats], None] | None = None) -> tuple[ScoreStats, set[str]]:
    """Score ``entries`` on the connected Ray cluster and hand each row or error to ``sink`` once.

    Args:
        ray: the ``ray`` module, initialised (see ``edgereg.cluster.session.ray_session``).
        entries: from :func:`select_inputs`.
        predictor: a driver-side ``edgereg.Predictor`` of the model (card, names, preprocessing
            and TTA; it runs nothing).
        model_bytes: the model file, shipped to the actors.
        sink: :class:`PartSink` or :class:`StreamSink`.
        plan: the actor pool (``edgereg.cluster.plan.plan_resources``).
        providers: ``--providers`` for the actors' sessions.
        config: batch size, order and commit policy.
        fail_fast: stop at the first failed input (in input order when ordered).
        on_error: called with ``(key, reason)`` for each failure.
        on_progress: called with the running stats after each block.

    Returns:
        (the final ScoreStats, the ONNX Runtime providers the actors used).

    Raises:
        EdgeregError: the Ray run failed (what was scored before is committed).
        IncompleteRunError: the run ended without a row or an error for some inputs (exit 1;
            ``--resume`` scores them).
    """
    stats = ScoreStats(total=len(entries))
    providers_used: set[str] = set()
    started = time.perf_counter()
    if not entries:
        return stats, providers_used
    seen = np.zeros(len(entries), dtype=bool)
    names = predictor.names
    with_spread = predictor.tta.n > 1
    with_interval = predictor.lab.has_intervals
    # prefetch_batches=0: with prefetching, Ray Data holds back the last block that is ready until the
    # next one is, so the rows before a slow input would wait to be committed
    batches = build_dataset(ray, entries, predictor, model_bytes, plan=plan, providers=providers,
                            config=config).iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=0)
    stop = False  # fail_fast stopped the run
    try:
        for batch in batches:
            for i, index in enumerate(batch["index"]):
                if seen[index]:
                    continue  # delivered again by a retried task
                seen[index] = True
                key = entries[index].key
                reason = str(batch["error"][i])
                if reason:
                    sink.error(key, reason)
                    stats.failed += 1
                    if len(stats.first_failures) < FAILURES_KEPT:
                        stats.first_failures.append((key, reason))
                    if on_error:
                        on_error(key, reason)
                    if fail_fast:
                        stop = True
                        break
                    continue
                flags = tuple(f for f in str(batch["flags"][i]).split(FLAG_SEPARATOR) if f)
                bounds = (batch["lo"][i], batch["hi"][i]) if with_interval else (None, None)
                sink.row(make_row(key, names, batch["values"][i], batch["spread"][i] if with_spread else None, flags,
                                  *bounds))
                stats.scored += 1
            providers_used.update(map(str, batch["provider"]))
            sink.maybe_commit()
            stats.elapsed_s = time.perf_counter() - started
            if on_progress:
                on_progress(stats)
            if stop:
                break
    except ray.exceptions.RayError as exc:
        raise EdgeregError(_ray_failure(exc)) from None
    finally:
        sink.commit()  # complete rows are kept whatever stopped the run
        close = getattr(batches, "close", None)
        if close:
            close()
    stats.elapsed_s = time.perf_counter() - started
    if not stop:
        check_every_input_seen(seen, entries)
    return stats, providers_used


def check_every_input_seen(seen: np.ndarray, entries: Sequence[Entry]) -> None:
    """Fail a run that ended without a row or an error for some inputs.

    Args:
        seen: (N,) bool, whether input i (a position in ``entries``) came back, as a row or an error.
        entries: the N inputs of the run.

    Raises:
        IncompleteRunError: some inputs never came back (a block lost by Ray); what came back is
            committed, and ``--resume`` scores the rest.
    """
    missing = np.flatnonzero(~seen)
    if missing.size:
        first = ", ".join(f"'{entries[i].key}'" for i in missing[:3])
        raise IncompleteRunError(f"the Ray run ended without {missing.size} of its {len(entries)} inputs ({first}"
                                 f"{', ...' if missing.size > 3 else ''}): they were neither scored nor reported as "
                                 "failed; what came back is kept, score the rest with --resume")


def _ray_failure(exc: BaseException) -> str:
    """One line for a failed Ray run: an edgereg error raised in a worker keeps its own message."""
    seen = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, EdgeregError):
            return str(cause)
        cause = getattr(cause, "cause", None) or cause.__cause__
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[-1][:300]
    return (f"the Ray run failed ({type(exc).__name__}: {text}); what was scored is kept, finish with --resume "
            "(Ray's logs: `ray logs`, or the session folder under /tmp/ray)")
