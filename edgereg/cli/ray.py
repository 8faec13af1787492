"""``edgereg infer MODEL PATH --engine ray``: the batch-scoring command on a Ray cluster.

``edgereg.cli.infer`` parses the options, checks them and opens the source; this module runs the
rest: the output's state (``edgereg.cluster.parts``), the Ray session, the pipeline and the merge,
with the local engine's summary, progress line and exit codes (0 all scored, 3 some failed,
2 user error, 130 interrupted).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from edgereg.cli.reporting import Progress, finish_batch, readings_identity, stdout_closed


def run_batch_on_ray(args, *, source, out: Path | None, fmt: str, shard) -> int:
    from edgereg.batch.resume import OutputIdentity, check_resume_identity, write_identity
    from edgereg.batch.scoring import output_columns
    from edgereg.batch.sources import VideoSource
    from edgereg.batch.writers import open_rows
    from edgereg.cli.options import card_from_option
    from edgereg.cluster.engine import PartSink, RayRunConfig, StreamSink, score_on_ray, select_inputs
    from edgereg.cluster.parts import PartStore
    from edgereg.cluster.plan import GPU_PROVIDERS, ClusterResources, plan_resources
    from edgereg.cluster.session import import_ray, ray_session
    from edgereg.core.predictor import Predictor
    from edgereg.errors import EdgeregError

    import_ray()  # the missing extra is the first thing to say
    if args.audit:
        raise EdgeregError("--audit needs the local engine (the audit trail reads each frame where it is decoded); "
                           "drop --engine ray, or --audit")
    if isinstance(source, VideoSource):
        select_inputs(source)  # raises the one-line refusal
    # The driver's session only reads the card and checks the model and --tta; the actors run it.
    confidence = None if args.no_intervals else args.confidence
    predictor = Predictor(args.model, providers="cpu", tta=args.tta, batch_size=args.batch,
                          card=card_from_option(args), confidence=confidence, calibration=not args.no_calibration)
    columns = output_columns(predictor)
    model_bytes = Path(args.model).read_bytes()
    identity = OutputIdentity.for_model(args.model, tta=str(predictor.tta), columns=columns,
                                        card_json=predictor.card.to_json(), readings=readings_identity(predictor))
    store = None
    if out is not None:
        if args.resume:
            check_resume_identity(out, identity)  # the finished output, as the local engine checks it
        # what the unfinished run's parts must match: the identity, and how the rows are chosen and laid out
        run = {"model_sha256": identity.model_sha256, "card_sha256": identity.card_sha256, "tta": identity.tta,
               "columns": list(columns), "format": fmt, "shard": f"{shard.index}/{shard.count}" if shard else None,
               "ordered": not args.unordered, "readings": identity.readings}
        store = PartStore.open(out, run, columns=columns, fmt=fmt, resume=args.resume, overwrite=args.overwrite)
    rows = open_rows(None, columns, fmt=fmt, resume=args.resume) if out is None else None
    done = store.done_keys() if store else set()
    entries = select_inputs(source, skip=done, shard=shard)
    sink: PartSink | StreamSink
    if store is not None:
        sink = PartSink(store, commit_rows=args.commit_rows or RayRunConfig.commit_rows,
                        commit_seconds=RayRunConfig.commit_seconds)
    else:
        assert rows is not None  # no --out: the rows go to stdout
        sink = StreamSink(rows)
    config = RayRunConfig(batch_size=args.batch, ordered=not args.unordered,
                          commit_rows=args.commit_rows or RayRunConfig.commit_rows, max_pixels=args.max_pixels,
                          confidence=predictor.lab.level, calibration=not args.no_calibration)

    def on_error(key: str, reason: str) -> None:
        if out is None:
            print(f"edgereg: failed '{key}': {reason}", file=sys.stderr)

    progress = Progress(sys.stderr, show=sys.stderr.isatty())
    stats, plan = None, None
    used: set[str] = set()
    interrupted = False
    try:
        started = time.perf_counter()
        ray: Any  # the ray module
        with ray_session(args.ray_address) as ray:
            resources = ClusterResources.from_ray(ray.cluster_resources())
            plan = plan_resources(resources, providers=args.providers, actors=args.actors, threads=args.threads)
            where = f"cluster {args.ray_address}" if args.ray_address else "local"
            note = f" ({plan.note})" if plan.note else ""
            print(f"edgereg: Ray {where}: {resources.cpus:g} CPUs, {resources.gpus:g} GPUs; {plan.describe()}; "
                  f"ready in {time.perf_counter() - started:.1f} s{note}", file=sys.stderr)
            if out is not None:
                write_identity(out, identity)  # before the first part, as the local engine before its first row
            stats, used = score_on_ray(ray, entries, predictor, model_bytes, sink, plan=plan,
                                       providers=args.providers, config=config, fail_fast=args.fail_fast,
                                       on_error=on_error, on_progress=progress.update)
    except KeyboardInterrupt:
        interrupted = True
    except BrokenPipeError:
        return stdout_closed()
    finally:
        progress.close()
        if rows is not None:
            rows.close()
        if store is not None and stats is None and not interrupted and not store.committed_now:
            store.discard_if_new()  # stopped before scoring anything: leave no state behind
    stats = stats or progress.latest
    if plan is not None and plan.uses_gpu and used and not used & GPU_PROVIDERS:
        print(f"edgereg: warning: the GPU actors ran on {', '.join(sorted(used))}: the workers' onnxruntime has "
              "no CUDA; pip install 'edgereg[gpu]' on the GPU nodes", file=sys.stderr)
    if store is not None and out is not None:  # (a store is only opened for --out)
        position_of = None if args.unordered else _positions(source)
        store.merge(out, columns=columns, position_of=position_of)
        store.remove()
    return finish_batch(stats, out=out, done=done, shard=shard, source=source, fail_fast=args.fail_fast,
                        interrupted=interrupted)


def _positions(source) -> dict[str, int]:
    """``{key: first position}`` in the source's current listing (orders the merged rows)."""
    positions: dict[str, int] = {}
    for position, key in enumerate(source.planned_keys() or ()):
        positions.setdefault(key, position)
    return positions
