"""`edgereg infer MODEL PATH` (batch scoring) and `edgereg infer MODEL --camera SRC` (live readout).

This module parses options and renders output; the work is in ``edgereg.batch.scoring`` (batch),
``edgereg.live.loop`` (camera loop), ``edgereg.batch.sources`` and ``edgereg.batch.writers``.

Progress (``edgereg.cli.reporting``): a one-line progress display on stderr, only when stderr is a
terminal (tqdm is not a runtime dependency, and a plain line is all that is needed); nothing when
piped. The summary line is always printed on stderr.
"""

from __future__ import annotations

import argparse
import sys

from edgereg.cli.common import command_parser
from edgereg.cli.options import (
    MAX_PIXELS_HELP,
    MAX_THREADS,
    add_card_option,
    add_smoothing_options,
    count,
    finite,
    level,
    non_negative,
    pixels,
)
from edgereg.cli.reporting import Progress, finish_batch, readings_identity, stdout_closed
from edgereg.preprocess.decode import DEFAULT_MAX_PIXELS

DESCRIPTION = """\
Read values from images with an edgereg model.

Batch scoring (PATH): an image, a folder (--recursive for sub-folders), a glob, a .txt file
listing paths, or a video (every frame; path column 'video.mp4#frame=N'). One row per image, in
input order: path, one column per target (each followed by <target>_lo and <target>_hi, the
conformal interval at --confidence, when the model card has intervals: `edgereg export` stores
them), the TTA spread per target when TTA is on, and flags (out_of_range, tta_disagreement,
not_finite, and the lab flags below_lob, below_lod, below_loq, below_range, above_range,
extrapolated, uncalibrated, interval_wide). --audit adds the audit trail (model SHA-256,
calibration, version, UTC time, source, frame quality). A file that cannot be read never stops the run:
it goes to <out stem>.errors.csv with the reason. Exit 0 when all were scored, 3 when some failed.
Rows are written whole, so after a crash or kill, --resume scores only what is missing;
<out>.meta.json records the model (SHA-256), TTA, columns, --confidence and calibration, and
--resume refuses another one.
Only regular files are read (a FIFO or device is an error row, never a hang), and images over
--max-pixels (default 50 MP, read from the header) are refused before they are decoded.
A video's frames pass the same quality gate as --camera: black, overexposed, frozen or blurred
frames are flagged in the flags column, or withheld (empty values, flag 'withheld') with --gate.

Live readout (--camera): a device index, a video file or a stream URL. Each frame passes a
quality gate (black, overexposed, frozen, blurred frames give no number, and say why), then the
model; the reading is smoothed over --smooth N frames and marked stable once the smoothed value
has held within tolerance for N frames. A camera that drops out is retried with back-off
(0.5 s, doubling up to 10 s).
"""

EXAMPLES = """\
examples:
  edgereg infer model.onnx photo.jpg
  edgereg infer model.onnx photos/ --recursive --out preds.csv
  edgereg infer model.onnx 'photos/**/*.png' --out preds.jsonl --tta d4 --batch 64
  edgereg infer model.onnx photos/ --out preds.csv --resume          # after a crash or kill
  edgereg infer model.onnx photos/ --out part$ID.csv --shard $ID/16  # job array, IDs 1..16
  edgereg infer model.onnx photos/ --out preds.csv --engine ray     # Ray Data, local or --ray-address
  edgereg infer model.onnx run.mp4 --out frames.csv
  edgereg infer model.onnx --camera 0
  edgereg infer model.onnx --camera 0 --jsonl --smooth 10 | ./forward_to_analyzer
  edgereg infer model.onnx --camera rtsp://10.0.0.5/stream --show
  edgereg infer model.cal.onnx photos/ --out preds.csv --confidence 0.95 --audit
  edgereg infer model.cal.onnx --camera 0 --frames 60 --check-standard 150   # exit 1 on drift
"""

# options that only make sense for one mode, with their defaults (given -> a clear error)
BATCH_ONLY = {"out": None, "recursive": False, "resume": False, "overwrite": False, "fail_fast": False,
              "shard": None, "decode_threads": None, "queue": None, "gate": False,
              "max_pixels": DEFAULT_MAX_PIXELS, "engine": "local", "ray_address": None, "actors": None,
              "unordered": False, "commit_rows": None}
# options of one engine (given with the other -> a clear error)
RAY_ONLY = {"ray_address": None, "actors": None, "unordered": False, "commit_rows": None}
LOCAL_ONLY = {"decode_threads": None, "queue": None, "gate": False}
LIVE_ONLY = {"show": False, "smooth": 5, "smooth_method": "median", "stable_tol": None, "frames": None,
             "max_retries": None, "check_standard": None}


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = command_parser(
        subparsers, "infer", help="score images, folders, videos, or read a camera live",
        description=DESCRIPTION, epilog=EXAMPLES,
    )
    parser.add_argument("model", help="an .onnx model exported by edgereg (fp32 or int8)")
    parser.add_argument("path", nargs="?",
                        help="image, folder, glob ('photos/*.jpg', quoted), .txt list of paths, or video")
    parser.add_argument("--camera", metavar="SRC",
                        help="live readout from a device index (0), a video file or a stream URL")
    parser.add_argument("--jsonl", action="store_true",
                        help="JSON lines on stdout (PATH: one per image; --camera: one per frame)")

    model = parser.add_argument_group("model")
    model.add_argument("--tta", default=None, help="none, d4 or rot:N (default: the model card's)")
    model.add_argument("--batch", type=count(1), default=32, metavar="N", help="images per inference call (default 32)")
    model.add_argument("--providers", default="auto", help="auto, cpu, cuda, tensorrt, or a comma list")
    model.add_argument("--threads", type=count(1, MAX_THREADS), default=None, metavar="N",
                       help="ONNX Runtime intra-op threads (default: half the cores for PATH, "
                            "leaving the rest to the decoders; one per core for --camera)")
    add_card_option(model)

    lab = parser.add_argument_group("lab-grade readings (docs/lab-grade.md)")
    lab.add_argument("--confidence", type=level, default=0.9, metavar="P",
                     help="level of the <target>_lo/_hi intervals: 0.5, 0.8, 0.9 (default), 0.95 or 0.99")
    lab.add_argument("--no-intervals", action="store_true", help="leave out the _lo/_hi columns")
    lab.add_argument("--no-calibration", action="store_true",
                     help="report the network's readings, ignoring the card's calibration to standards")
    lab.add_argument("--audit", action="store_true",
                     help="add model SHA-256, card version, calibration id/date, edgereg version, UTC time, "
                          "source and frame quality to every row / JSON line")

    batch = parser.add_argument_group("batch scoring (PATH)")
    batch.add_argument("--out", metavar="FILE", help="preds.csv or preds.jsonl (default: CSV on stdout)")
    batch.add_argument("--recursive", action="store_true", help="descend into sub-folders of a folder PATH")
    batch.add_argument("--resume", action="store_true",
                       help="skip paths already in --out and append the rest (a missing file is created)")
    batch.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    batch.add_argument("--fail-fast", action="store_true", help="stop at the first file that fails (exit 3)")
    batch.add_argument("--shard", metavar="I/N",
                       help="score inputs whose position p has p %% N == I-1 (I = 1..N); cat the N outputs")
    batch.add_argument("--decode-threads", type=count(1, MAX_THREADS), default=None, metavar="N",
                       help="image decoder threads (default: one per core, at least 2)")
    batch.add_argument("--queue", type=count(1), default=None, metavar="N",
                       help="decoded images allowed to wait for inference (default 2*batch + 4*threads)")
    batch.add_argument("--max-pixels", type=pixels, default=DEFAULT_MAX_PIXELS, metavar="N", help=MAX_PIXELS_HELP)
    batch.add_argument("--gate", action="store_true",
                       help="video: withhold the values of frames the quality gate rejects (default: flag them)")
    batch.add_argument("--engine", choices=("local", "ray"), default="local",
                       help="local (default: threads on this machine) or ray (Ray Data, pip install "
                            "'edgereg[cluster]'; see docs/scoring-a-million-images.md)")

    ray = parser.add_argument_group("--engine ray")
    ray.add_argument("--ray-address", metavar="ADDR",
                     help="join this Ray cluster (host:port, ray://host:10001 or auto; default: start a local Ray)")
    ray.add_argument("--actors", type=count(1), default=None, metavar="N",
                     help="ONNX Runtime actors (default: 1 per GPU, or autoscaled up to half the CPUs; "
                          "--threads sets each actor's threads and CPUs)")
    ray.add_argument("--unordered", action="store_true", help="write rows as they finish, not in input order")
    ray.add_argument("--commit-rows", type=count(1), default=None, metavar="N",
                     help="rows per atomically committed part (default 4096; a crash redoes at most this many)")

    live = parser.add_argument_group("live readout (--camera)")
    add_smoothing_options(live)
    live.add_argument("--show", action="store_true", help="show frames with the reading (needs an OpenCV GUI)")
    live.add_argument("--frames", type=count(1), default=None, metavar="N", help="stop after this many frames")
    live.add_argument("--max-retries", type=count(0), default=None, metavar="N",
                      help="give up after this many failed reads in a row (default: retry forever)")
    quality = parser.add_argument_group("quality gate (--camera, and the frames of a video PATH)")
    quality.add_argument("--no-quality-gate", action="store_true", help="read every frame, whatever its quality")
    quality.add_argument("--blur-threshold", type=non_negative, default=None, metavar="X",
                      help="variance of the Laplacian below which a frame is blurred (default 10; 0: off)")
    live.add_argument("--check-standard", type=finite, default=None, metavar="VALUE",
                      help="a standard of this known value is in view: warn (and exit 1) when stable readings "
                           "drift beyond their interval")
    return parser


def run(args) -> int:
    from edgereg.errors import EdgeregError

    if (args.path is None) == (args.camera is None):
        raise EdgeregError("give either PATH (images to score) or --camera SRC (live readout), not "
                           f"{'both' if args.path else 'neither'}; see `edgereg infer --help`")
    foreign = BATCH_ONLY if args.camera is not None else LIVE_ONLY
    given = [name for name, default in foreign.items() if getattr(args, name) != default]
    if given:
        option = "--" + given[0].replace("_", "-")
        mode = "PATH scoring" if args.camera is not None else "--camera"
        raise EdgeregError(f"{option} applies to {mode} only; remove it or switch mode")
    other = LOCAL_ONLY if args.engine == "ray" else RAY_ONLY
    given = [name for name, default in other.items() if getattr(args, name) != default]
    if given:
        option = "--" + given[0].replace("_", "-")
        engine = "local" if args.engine == "ray" else "ray"
        raise EdgeregError(f"{option} applies to --engine {engine} only; remove it or switch engine")
    return _run_live(args) if args.camera is not None else _run_batch(args)


def _load_predictor(args, *, batch_size: int, threads: int | None):
    # Preprocessing stays on the calling thread: decoder threads already keep every core busy, and a
    # live frame is too small to be worth waking numba's workers.
    from edgereg.cli.options import card_from_option
    from edgereg.core.card import int8_speed_note
    from edgereg.core.predictor import Predictor

    predictor = Predictor(args.model, providers=args.providers, tta=args.tta, batch_size=batch_size,
                          threads=threads, decode_threads=args.decode_threads, preprocess_parallel=False,
                          card=card_from_option(args), confidence=None if args.no_intervals else args.confidence,
                          calibration=not args.no_calibration)
    notes = list(predictor.lab.notes)
    note = int8_speed_note(predictor.card, batch_size)
    if note and predictor.providers[0] == "CPUExecutionProvider":
        notes.append(note)
    for note in notes:
        print(f"edgereg: note: {note}", file=sys.stderr)
    return predictor


def _quality_config(args):
    """The quality gate's thresholds from --no-quality-gate / --blur-threshold (None: no gate)."""
    from edgereg.live.quality import QualityConfig

    if args.no_quality_gate:
        return None
    return QualityConfig() if args.blur_threshold is None else QualityConfig(blur_threshold=args.blur_threshold)


# ---------------------------------------------------------------- batch scoring


def _run_batch(args) -> int:
    from pathlib import Path

    from edgereg.batch.encoding import output_format
    from edgereg.batch.resume import OutputIdentity, check_resume_identity, load_done_keys, write_identity
    from edgereg.batch.scoring import default_inference_threads, output_columns, score_source
    from edgereg.batch.shards import Shard
    from edgereg.batch.sources import open_source
    from edgereg.batch.writers import check_output_target, discard_output, open_errors, open_rows
    from edgereg.errors import EdgeregError

    if args.jsonl and args.out:
        raise EdgeregError("--jsonl writes to stdout and --out to a file; for a JSONL file use --out preds.jsonl")
    if args.resume and args.overwrite:
        raise EdgeregError("--resume keeps the rows in --out and --overwrite replaces them; choose one")
    out = Path(args.out) if args.out and args.out != "-" else None
    fmt = "jsonl" if args.jsonl else (output_format(out) if out else "csv")
    if out is not None:  # before any work: a read-only folder, a missing folder, a folder in the way
        check_output_target(out, resume=args.resume, overwrite=args.overwrite)
    shard = Shard.parse(args.shard) if args.shard else None
    source = open_source(args.path, recursive=args.recursive)
    if args.engine == "ray":
        from edgereg.cli.ray import run_batch_on_ray

        return run_batch_on_ray(args, source=source, out=out, fmt=fmt, shard=shard)
    planned = source.planned_keys()
    # One image: a single intra-op thread (a thread pool costs more to start than one frame's work).
    threads = args.threads or (1 if planned is not None and len(planned) <= 1 else default_inference_threads())
    predictor = _load_predictor(args, batch_size=args.batch, threads=threads)
    columns = output_columns(predictor, audit=args.audit)
    done: set[str] = set()
    if out is not None:
        identity = OutputIdentity.for_model(args.model, tta=str(predictor.tta), columns=columns,
                                            card_json=predictor.card.to_json(), readings=readings_identity(predictor))
        if args.resume:
            check_resume_identity(out, identity)
            done = load_done_keys(out, columns, fmt=fmt)
        if args.overwrite:
            discard_output(out)  # the old rows go before the new identity is written
        write_identity(out, identity)
    elif args.resume:
        raise EdgeregError("--resume needs an output file: add --out preds.csv")
    audit = None
    if args.audit:
        from edgereg.lab.audit import AuditTrail

        audit = AuditTrail.for_predictor(predictor)

    def on_error(key: str, reason: str) -> None:
        if out is None:  # no errors file: say it on stderr
            print(f"edgereg: failed '{key}': {reason}", file=sys.stderr)

    progress = Progress(sys.stderr, show=sys.stderr.isatty())
    rows = open_rows(out, columns, fmt=fmt, resume=args.resume, overwrite=args.overwrite)
    try:
        errors = open_errors(out) if out else None
    except BaseException:
        rows.close()
        raise
    stats = None
    try:
        stats = score_source(source, predictor, rows, errors, skip=done, shard=shard,
                             decode_threads=args.decode_threads, queue_size=args.queue,
                             fail_fast=args.fail_fast, on_error=on_error, on_progress=progress.update,
                             max_pixels=args.max_pixels, quality=_quality_config(args), gate=args.gate,
                             audit=audit)
    except BrokenPipeError:
        return stdout_closed()
    except KeyboardInterrupt:
        return finish_batch(progress.latest, out=out, done=done, shard=shard, source=source,
                            fail_fast=args.fail_fast, interrupted=True)
    finally:
        _close_all(rows, errors, raising=stats is not None)
        progress.close()
    return finish_batch(stats, out=out, done=done, shard=shard, source=source, fail_fast=args.fail_fast)


def _close_all(*writers, raising: bool) -> None:
    """Close every writer; re-raise the first failure only when no other exception is on its way."""
    first = None
    for writer in writers:
        if writer is None:
            continue
        try:
            writer.close()
        except Exception as exc:
            first = first or exc
    if first is not None and raising:
        raise first


# ---------------------------------------------------------------- live readout


def format_reading(reading, units: dict[str, str]) -> str:
    """One human line for a live reading."""
    from edgereg.live.loop import NO_FRAME

    if reading.quality == NO_FRAME:
        return f"no frame: {reading.note}"
    head = f"#{reading.frame:<6}"
    if not reading.ok:
        return f"{head} withheld ({reading.note})"
    parts = []
    for name, value in reading.values.items():
        unit = f" {units[name]}" if units.get(name) else ""
        spread = f" ±{reading.spread[name]:.2g}" if reading.spread else ""
        interval = f" [{reading.lo[name]:.4g}, {reading.hi[name]:.4g}]" if reading.lo else ""
        parts.append(f"{name} {value:.4g}{interval}{spread}{unit} (smoothed {reading.smoothed[name]:.4g})")
    text = f"{head} " + " | ".join(parts) + ("  STABLE" if reading.stable else "  settling")
    text += f"  {{{', '.join(reading.flags)}}}" if reading.flags else ""
    return text + (f"  [{reading.note}]" if reading.note else "")


def _run_live(args) -> int:
    import signal

    from edgereg.batch.sources import CameraSource
    from edgereg.live.loop import NO_FRAME, LiveConfig, LiveStats, check_gui, run_live

    if args.show:
        check_gui()
    quality = _quality_config(args)
    config = LiveConfig(smooth_window=args.smooth, smooth_method=args.smooth_method,
                        stable_tolerance=args.stable_tol, quality=quality, max_retries=args.max_retries,
                        max_frames=args.frames, audit=args.audit)
    source = CameraSource(args.camera)
    predictor = _load_predictor(args, batch_size=1, threads=args.threads)
    check = _standard_check(args, predictor)
    units = predictor.card.unit_of
    stats = LiveStats()
    in_place = not args.jsonl and sys.stdout.isatty()
    code = 0
    print(f"edgereg: reading {source.name} with {args.model} (tta {predictor.tta}, smoothing "
          f"{args.smooth_method} over {args.smooth}); Ctrl-C to stop", file=sys.stderr)

    def on_sigterm(signum, frame):  # a service manager's stop: end as cleanly as Ctrl-C
        raise KeyboardInterrupt

    import cv2

    # OpenCV warns on every failed open; the retry message below says it once, with the fix
    previous_log_level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)

    try:
        previous_handler = signal.signal(signal.SIGTERM, on_sigterm)
    except ValueError:  # not the main thread: leave signals alone
        previous_handler = None
    readings = run_live(source, predictor, config=config)
    try:
        for reading in readings:
            stats.add(reading)
            if check is not None:
                import dataclasses

                verdict, warning = check.update(reading)
                if verdict is not None:
                    reading = dataclasses.replace(reading, standard=verdict)
                if warning:
                    print(f"edgereg: WARNING: {warning}", file=sys.stderr, flush=True)
            if args.jsonl:
                print(reading.to_json(), flush=True)
                if reading.note:
                    print(f"edgereg: {source.name}: {reading.note}", file=sys.stderr)
            elif in_place:
                sys.stdout.write("\r" + format_reading(reading, units) + "\x1b[K")
                sys.stdout.flush()
            else:
                print(format_reading(reading, units), flush=True)
            if args.show and reading.quality != NO_FRAME and reading.image is not None and _show(reading, units):
                break
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:
        code = stdout_closed()
    finally:
        readings.close()  # releases the camera
        cv2.utils.logging.setLogLevel(previous_log_level)
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)
        if in_place:
            sys.stdout.write("\n")
        print(f"edgereg: {stats.summary()}", file=sys.stderr)  # also when giving up on the camera
        if check is not None:
            print(f"edgereg: {check.summary()}", file=sys.stderr)
    if check is not None and check.drifts and code == 0:
        return 1
    return code


def _standard_check(args, predictor):
    """The --check-standard watcher, or None; refuses a model without intervals up front."""
    from edgereg.errors import EdgeregError
    from edgereg.lab.standard_check import StandardCheck

    if args.check_standard is None:
        return None
    if not predictor.lab.has_intervals:
        raise EdgeregError("--check-standard judges drift against each reading's interval, and this run has none: "
                           "re-export the model with `edgereg export` (it stores intervals) and drop --no-intervals")
    return StandardCheck(args.check_standard)


def _show(reading, units) -> bool:
    """Draw the reading over its frame in a window; True when the user pressed q or Esc."""
    import cv2

    from edgereg.live.loop import draw_overlay

    text = format_reading(reading, units)
    lines = [text[i:i + 60] for i in range(0, len(text), 60)]
    cv2.imshow("edgereg", draw_overlay(reading.image, lines, ok=reading.ok))
    return (cv2.waitKey(1) & 0xFF) in (ord("q"), 27)
