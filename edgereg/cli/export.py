"""`edgereg export RUN_DIR [--int8] [--fp16] [--c]`: a trained run -> deployable ONNX models + a report."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from edgereg.cli.common import command_parser

CALIBRATION_CHOICES = ("auto", "minmax", "entropy", "percentile")
CALIBRATION_BUDGET_S = 100.0  # = edgereg.export.int8.search.CALIBRATION_BUDGET_S (not imported: keeps --help light)

EPILOG = """examples:
  edgereg export runs/assay                       # model.onnx (fp32) with its card
  edgereg export runs/assay --int8                # + model.int8.onnx if it stays within 10% RMSE
  edgereg export runs/assay --int8 --max-drop 0.05 --calib-method entropy
  edgereg export runs/assay --int8 --calib-dir camera_frames/   # calibrate on deployment images
  edgereg export runs/assay --int8 --int8-budget 30       # calibrators within 30 s (minmax always runs)
  edgereg export runs/assay --fp16                # + model.fp16.onnx for CUDA/TensorRT (Jetson)
  edgereg export runs/assay --int8 --c            # + C99 sources for a microcontroller
  edgereg export runs/assay --int8 --interval-bins 1      # intervals without per-range-bin quantiles

exit codes: 0 exported; 1 the int8 gate failed (report written, no model.int8.onnx); 2 user error
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = command_parser(
        subparsers, "export", help="export a trained run to ONNX (fp32, int8 with an accuracy gate, fp16, C)",
        description="Export a training run to model.onnx: opset >= 17, dynamic batch, output transforms baked\n"
                    "in (physical units out), BatchNorm folded, the model card embedded; checked with\n"
                    "onnx.checker and against torch (relative 1e-4) on the validation images.\n\n"
                    "--int8 adds an ONNX Runtime static QDQ quantization (per-channel int8 weights, calibrated\n"
                    "on training images through edgereg's preprocessing), kept only when its RMSE on the\n"
                    "held-out split, overall and per target, stays within --max-drop of fp32's. Layers\n"
                    "that int8 damages most stay float until it does (accuracy control), layers that run\n"
                    "slower in int8 than in float stay float while int8 is slow (speed control), and the\n"
                    "report lists every layer's sensitivity and says whether int8 or fp32 is faster here.\n\n"
                    "Writes export_report.json and prints a summary: accuracy, speed at batch 1 and 32,\n"
                    "size, peak memory.",
        epilog=EPILOG,
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by `edgereg train`")
    parser.add_argument("--out", metavar="DIR", help="where to write the models and report (default: RUN_DIR)")
    parser.add_argument("--int8", action="store_true", help="also write model.int8.onnx, if it passes the gate")
    parser.add_argument("--fp16", action="store_true", help="also write model.fp16.onnx (for CUDA / TensorRT)")
    parser.add_argument("--c", dest="c_code", action="store_true",
                        help="also generate C99 sources (for model.onnx, and model.int8.onnx with --int8)")
    parser.add_argument("--calib-method", type=_calibration_method, default="auto", metavar="METHOD",
                        help="minmax, entropy, percentile, or auto: try each, keep the most accurate (default)")
    parser.add_argument("--calib-images", type=int, default=256, metavar="N",
                        help="calibration images drawn from the training split (default 256)")
    parser.add_argument("--calib-dir", metavar="DIR",
                        help="calibrate on the images in DIR instead of the training split")
    parser.add_argument("--int8-budget", type=float, default=CALIBRATION_BUDGET_S, metavar="SECONDS",
                        help="wall seconds the int8 calibrators may take together (default %(default)g): minmax "
                             "always runs; entropy and percentile are timed on a first batch, then run on fewer "
                             "images or histogram bins, or skipped, to fit; the report says which and why")
    parser.add_argument("--max-drop", type=float, default=0.10, metavar="X",
                        help="int8 RMSE (overall and per target) may exceed fp32's by at most this fraction "
                             "(default 0.10 = 10%%)")
    parser.add_argument("--quantize-head", action="store_true",
                        help="quantize the last layer and the output transform too (default: keep them float)")
    parser.add_argument("--quantize-first", action="store_true",
                        help="quantize the first layer's input too (default: keep the first layer float)")
    parser.add_argument("--max-float-layers", type=int, default=None, metavar="N",
                        help="accuracy control: keep at most N more layers float, most damaging first, until "
                             "the gate passes (default: half of the layers; 0: off)")
    intervals = parser.add_argument_group("prediction intervals (docs/lab-grade.md)")
    intervals.add_argument("--intervals", default="normalized", choices=("normalized", "constant", "none"),
                           help="split-conformal intervals stored in each model's card, from its own residuals on "
                                "held-out images: normalized by a per-reading difficulty with per-range-bin "
                                "(Mondrian) quantiles (default), constant width, or none")
    intervals.add_argument("--interval-bins", type=int, default=5, metavar="N",
                           help="Mondrian range bins at most (default 5; each keeps >= 40 test images; 1: off)")
    intervals.add_argument("--interval-wide-factor", type=float, default=2.0, metavar="X",
                           help="flag interval_wide when a reading's interval is over X times the typical one "
                                "(default 2)")
    familiar = parser.add_argument_group("unfamiliar photos (docs/lab-grade.md)")
    familiar.add_argument("--no-novelty", dest="novelty", action="store_false",
                          help="leave out the novelty output (a shrinkage Mahalanobis distance of the penultimate "
                               "features; readings above its threshold are flagged unfamiliar)")
    familiar.add_argument("--novelty-rate", type=float, default=0.05, metavar="X",
                          help="share of familiar photos flagged unfamiliar at most, on average (default 0.05)")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset, >= 17 (default 17)")
    parser.add_argument("--no-speed", dest="speed", action="store_false",
                        help="skip the speed/memory measurement and the int8 speed control")
    parser.add_argument("--repeats", type=int, default=10, metavar="N",
                        help="timed runs per batch size for the speed measurement (median kept; default 10)")
    return parser


def _calibration_method(value: str) -> str:
    from edgereg.errors import did_you_mean

    if value not in CALIBRATION_CHOICES:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(CALIBRATION_CHOICES)}, got {value!r}"
                                         f"{did_you_mean(value, CALIBRATION_CHOICES)}")
    return value


def run(args) -> int:
    """Export; an OSError mid-way (disk full) removes this export's files and exits 1, one line."""
    from edgereg.errors import OutputError, WriteFailedError, require_extra

    require_extra("torch")
    require_extra("onnx")

    run_dir = Path(args.run_dir)
    _check_args(args, run_dir)
    out_dir = Path(args.out) if args.out else run_dir
    _check_out_dir(out_dir)
    started = time.time()
    try:
        return _export(args, run_dir, out_dir)
    except OSError as exc:  # a full disk or a folder that stopped being writable, mid-export
        removed = _remove_partial_outputs(out_dir, since=started)
        from edgereg.errors import output_error

        error = output_error(exc, exc.filename or out_dir, fix="choose another --out", mid_run=True)
        kept = f"; the {len(removed)} file(s) it had written were removed" if removed else ""
        raise type(error)(f"{error} (an export is all or nothing{kept})") from None
    except OutputError as exc:  # an atomic write (a model's card) failing mid-export: the same, typed
        if isinstance(exc, WriteFailedError):
            raise
        removed = _remove_partial_outputs(out_dir, since=started)
        kept = f"; the {len(removed)} file(s) it had written were removed" if removed else ""
        raise WriteFailedError(f"{exc} (an export is all or nothing{kept})") from None


OUTPUT_FILES = ("model.onnx", "model.int8.onnx", "model.fp16.onnx", "export_report.json")
OUTPUT_DIRS = ("c", "c_int8")


def _check_out_dir(out_dir: Path) -> None:
    """Create --out, or refuse it in one line before any work (OutputError, exit 2)."""
    import os

    from edgereg.errors import OutputError, output_error

    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"cannot write to '{out_dir}': it is a file, not a folder; choose another --out")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise output_error(exc, out_dir) from None
    if not os.access(out_dir, os.W_OK):
        raise OutputError(f"cannot write to '{out_dir}': permission denied; choose another --out")


def _remove_partial_outputs(out_dir: Path, *, since: float) -> list[Path]:
    """Delete what this export wrote (files of OUTPUT_FILES and OUTPUT_DIRS changed since ``since``),
    so that a failed export leaves no half-written model behind. Best effort."""
    import shutil

    removed = []
    for name in OUTPUT_FILES:
        path = out_dir / name
        try:
            if path.is_file() and path.stat().st_mtime >= since:
                path.unlink()
                removed.append(path)
        except OSError:
            continue
    for name in OUTPUT_DIRS:
        folder = out_dir / name
        try:
            if folder.is_dir() and any(p.stat().st_mtime >= since for p in folder.iterdir()):
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder)
        except OSError:
            continue
    temps = [*out_dir.glob(".*.tmp"), *out_dir.glob("*.tmp"), *out_dir.glob("*.partial")]
    for temp in temps:  # atomic writes interrupted half-way
        try:
            if temp.stat().st_mtime >= since:
                temp.unlink()
        except OSError:
            continue
    return removed


def _export(args, run_dir: Path, out_dir: Path) -> int:
    """The export itself (see :func:`run`)."""
    from edgereg.errors import EdgeregError, GateError
    from edgereg.export.int8.gate import quantize_with_gate
    from edgereg.export.onnx_export import export_card, export_fp32
    from edgereg.export.readings import ReadingCache
    from edgereg.export.report import build_report, format_summary, write_report
    from edgereg.export.uncertainty.conformal import leave_out
    from edgereg.preprocess import preprocess_batch
    from edgereg.training.run import load_run, load_run_dataset

    regressor, info = load_run(run_dir)
    dataset = load_run_dataset(info)
    conformal = _interval_setup(args, dataset, info)
    gate_set, holdout, gate_rows = _held_out_sets(dataset, info, None if conformal is None else conformal[1])
    card = export_card(info.card, opset=args.opset)
    check_inputs = preprocess_batch(gate_set.frames, info.preprocess)  # (N, C, H, W) float32
    novelty = _novelty_setup(args, regressor, dataset, info)
    fp32 = export_fp32(regressor, card, out_dir / "model.onnx", check_inputs=check_inputs, opset=args.opset,
                       novelty=None if novelty is None else novelty.head)
    if novelty is not None:
        card = novelty.card_for(fp32.path, card)
    # every model reads each held-out set once: the gate's metrics and the intervals share the readings
    readings = ReadingCache()
    fp32_metrics = readings.metrics(fp32.path, gate_set, card=card)
    intervals_report = {}
    fp32_card = card
    if conformal is not None:
        options, parts = conformal
        fp32_card, intervals_report["fp32"] = _add_intervals(fp32.path, card, parts, readings, model="fp32",
                                                              options=options)

    int8 = None
    if args.int8:
        calibration, calibration_info = _calibration(args, dataset, info)
        quantize_from = fp32.path
        if novelty is not None:  # the quantizer sees the regression graph alone (novelty_plan)
            import tempfile

            from edgereg.export.uncertainty.novelty_plan import value_only_copy

            scratch = tempfile.TemporaryDirectory(prefix="edgereg-value-only-")
            quantize_from = value_only_copy(fp32.path, Path(scratch.name) / "model.onnx")
        int8 = quantize_with_gate(
            quantize_from, out_dir / "model.int8.onnx", card=card, calibration=calibration, evalset=gate_set,
            methods=None if args.calib_method == "auto" else (args.calib_method,), max_drop=args.max_drop,
            keep_head_float=not args.quantize_head, keep_first_float=not args.quantize_first, holdout=holdout,
            calibration_info=calibration_info, max_float_layers=args.max_float_layers, measure_speed=args.speed,
            budget_s=args.int8_budget,
            # the fp32 readings are shared when the gate quantizes model.onnx itself (not a value-only copy)
            fp32_metrics=fp32_metrics if quantize_from == fp32.path else None,
            holdout_fp32=None if holdout is None or quantize_from != fp32.path else readings.metrics(
                fp32.path, holdout, card=card))
        if int8.path is not None and novelty is not None:
            # The int8 model ships without the novelty output for now: grafting the float branch back
            # after quantization broke the analysis of the int8 graph's float tail that the C
            # backend's checks rely on. Use model.onnx for novelty.
            from dataclasses import replace as _replace

            from edgereg.export.card_io import write_card

            int8 = _replace(int8, card=int8.card.with_(novelty={}))
            write_card(int8.path, int8.card)
            print("note: model.int8.onnx has no novelty output in this version; model.onnx has it "
                  "(flag `unfamiliar`)")
        if int8.path is None:
            (out_dir / "model.int8.onnx").unlink(missing_ok=True)  # an earlier export's, for other weights
        elif conformal is not None:  # the int8 model's own residuals, not fp32's
            if int8.holdout_values is not None:  # the gate's int8 readings of the test split
                readings.store(int8.path, holdout, int8.holdout_values, card=int8.card)
            _, intervals_report["int8"] = _add_intervals(int8.path, int8.card, leave_out(parts, gate_rows), readings,
                                                         model="int8", options=options, fp32_path=fp32.path)

    fp16 = None
    if args.fp16:
        from edgereg.export.fp16 import convert_fp16

        fp16 = convert_fp16(fp32.path, out_dir / "model.fp16.onnx", card=fp32_card, check_inputs=check_inputs)

    written = {"fp32": fp32.path, **({"int8": int8.path} if int8 and int8.path else {})}
    speed = {}
    if args.speed:
        from edgereg.export.speed import measure_speed

        speed = {name: measure_speed(path, repeats=args.repeats) for name, path in written.items()}
    c_code = _generate_c(written, out_dir) if args.c_code else None

    holdout_fp32 = readings.metrics(fp32.path, holdout, card=card) if holdout is not None and int8 is None else None
    report = build_report(run_dir=run_dir, out_dir=out_dir, fp32=fp32, fp32_metrics=fp32_metrics, int8=int8,
                          fp16=fp16, speed=speed, c_code=c_code, holdout_fp32=holdout_fp32,
                          intervals=intervals_report or None)
    from edgereg.core.platform_info import cpu_info, runtime_line

    machine = cpu_info()
    report["machine"] = {"cpu": machine.describe(), "isa": machine.isa}  # where the speed numbers come from
    report_path = write_report(report, out_dir / "export_report.json")
    print(format_summary(report))
    if speed:
        print(f"speed measured on: {runtime_line()}")
    rewritten = {path.name for path in written.values()} | ({fp16.path.name} if fp16 else set())
    for stale in ("model.int8.onnx", "model.fp16.onnx"):
        if stale not in rewritten and (out_dir / stale).is_file():
            print(f"note: {out_dir / stale} is from an earlier export (not rewritten now)")
    print(f"report: {report_path}")
    if int8 is not None and not int8.gate.passed:
        raise GateError(f"{int8.gate.summary()}; model.int8.onnx not written. {_gate_hint(args)}")
    failed_c = [f"{name}: {c['error']}" for name, c in (c_code or {}).items() if "error" in c]
    if failed_c:
        raise EdgeregError(f"C generation failed ({'; '.join(failed_c)}); the ONNX models were written")
    return 0


def _check_args(args, run_dir: Path) -> None:
    """Refuse bad options before any work is done (EdgeregError, exit 2)."""
    from edgereg.errors import EdgeregError
    from edgereg.export.int8.gate import validate_max_drop
    from edgereg.export.onnx_export import check_opset

    if not run_dir.is_dir():
        raise EdgeregError(f"run directory '{run_dir}' not found; train one first: "
                           f"edgereg train DATASET --out {run_dir}")
    validate_max_drop(args.max_drop)
    check_opset(args.opset)
    if args.max_float_layers is not None and args.max_float_layers < 0:
        raise EdgeregError(f"--max-float-layers must be >= 0, got {args.max_float_layers}")
    if not 0 <= args.int8_budget < float("inf"):
        raise EdgeregError(f"--int8-budget must be a number of seconds >= 0, got {args.int8_budget:g}")
    if not 0 < args.novelty_rate < 1:
        raise EdgeregError(f"--novelty-rate must be in (0, 1), e.g. 0.05, got {args.novelty_rate}")
    if args.calib_images < 1 or args.repeats < 1:
        raise EdgeregError(f"--calib-images and --repeats must be >= 1, got {args.calib_images} and {args.repeats}")


def _held_out_sets(dataset, info, parts=None):
    """(the gate split, test as a second split or None, the gate's dataset rows).

    The gate split is what the int8 search chooses on: val, or test when the run has no val. A
    refitted model with held-out rows divided for its intervals gets the difficulty part instead
    (rows no quantile comes from); the int8 model's quantiles leave out whatever rows the gate
    looked at (``conformal.leave_out``).
    """
    from edgereg.errors import EdgeregError
    from edgereg.export.int8.gate import eval_set

    kind = info.card.kind
    if parts is not None and parts.cross_validated and parts.fit is not None:
        holdout = eval_set(dataset, info.split.test, kind=kind, split="test") if len(info.split.test) else None
        return parts.fit, holdout, parts.fit_rows
    if len(info.split.val):
        holdout = eval_set(dataset, info.split.test, kind=kind, split="test") if len(info.split.test) else None
        return eval_set(dataset, info.split.val, kind=kind, split="val"), holdout, info.split.val
    if len(info.split.test):
        return eval_set(dataset, info.split.test, kind=kind, split="test"), None, info.split.test
    raise EdgeregError(f"run '{info.run_dir}' has no validation or test images to check the export on; "
                       "retrain with a validation split (the default)")


def _add_intervals(model_path: Path, card, parts, readings, *, model: str, options, fp32_path: Path | None = None):
    """The model's intervals from its cached readings of the held-out parts, written into its card.

    Returns:
        (the card with ``intervals``, the report for export_report.json).
    """
    from edgereg.export.card_io import write_card
    from edgereg.export.uncertainty.conformal import add_intervals

    new_card, report = add_intervals(card, parts, readings.part_readings(model_path, parts, card=card,
                                                                         fp32_path=fp32_path),
                                     model=model, options=options)
    write_card(model_path, new_card)
    return new_card, report


def _interval_setup(args, dataset, info):
    """(ConformalOptions, held-out parts) for --intervals, or None for --intervals none."""
    if args.intervals == "none":
        return None
    from edgereg.export.uncertainty.conformal import ConformalOptions, held_out_parts

    options = ConformalOptions(method=args.intervals, bins=args.interval_bins, wide_factor=args.interval_wide_factor,
                               seed=info.card.provenance.get("seed") or 0)
    return options, held_out_parts(dataset, info.split, kind=info.card.kind, refit_rows=info.record.get("refit_rows"),
                                   run_dir=info.run_dir, seed=options.seed)


def _novelty_setup(args, regressor, dataset, info):
    """The novelty head fitted on the shipped model's training rows, and its threshold rows, or None."""
    if not args.novelty:
        return None
    from edgereg.export.uncertainty.novelty_plan import plan_novelty

    return plan_novelty(regressor, dataset, info, rate=args.novelty_rate)


def _gate_hint(args) -> str:
    """What to try after a gate failure, given what this export already tried."""
    tries = []
    if args.calib_method != "auto":
        tries.append("--calib-method auto (try every calibrator)")
    tries.append("calibration images like the deployment's (--calib-dir)" if args.calib_dir
                 else "more calibration images (--calib-images)")
    if args.quantize_head:
        tries.append("leaving out --quantize-head")
    if args.quantize_first:
        tries.append("leaving out --quantize-first")
    if args.max_float_layers is not None:
        tries.append("a larger --max-float-layers")
    return f"Try {', '.join(tries)}, or allow more with --max-drop"


def _calibration(args, dataset, info):
    """Calibration inputs (N, C, H, W) float32 and their facts for the card."""
    from edgereg.export.int8.quantize import calibration_fingerprint, frames_from_dir, pick_calibration
    from edgereg.preprocess import preprocess_batch

    if args.calib_dir:
        frames, paths = frames_from_dir(args.calib_dir, info.preprocess, limit=args.calib_images)
        source = {"source": f"folder {args.calib_dir}", "files": len(paths)}
    else:
        index = pick_calibration(info.split.train, limit=args.calib_images, seed=info.card.provenance.get("seed") or 0)
        frames = dataset.images[index]
        source = {"source": "training split", "dataset_fingerprint": dataset.fingerprint}
    return preprocess_batch(frames, info.preprocess), {**source, "fingerprint": calibration_fingerprint(frames)}


def _generate_c(models: dict, out_dir: Path) -> dict:
    """C sources for each written model (edgereg.export.c.codegen): where, flash/RAM bytes, or the error.

    Returns:
        {"fp32" | "int8": {"dir", "flash_bytes", "ram_bytes", "ops"} or {"dir", "error"}}.
    """
    from edgereg.errors import EdgeregError

    try:
        from edgereg.export.c.codegen import generate_c
    except ModuleNotFoundError as exc:
        if exc.name != "edgereg.export.c.codegen":
            raise
        raise EdgeregError("--c needs edgereg.export.c.codegen, which this edgereg build lacks; "
                           "export without --c") from None
    sizes: dict[str, dict[str, Any]] = {}
    for name, path in models.items():
        target = out_dir / ("c" if name == "fp32" else f"c_{name}")
        try:
            # int8=None for the int8 file: a model whose every learned layer stayed float (a block
            # readout) is a valid int8 export and lowers as float code
            result = generate_c(path, target, int8=None if name == "int8" else False)
        except EdgeregError as exc:  # e.g. an op the generator does not support: the ONNX models stand
            sizes[name] = {"dir": str(target), "error": str(exc)}
            continue
        sizes[name] = {"dir": str(target), "flash_bytes": int(result.flash_bytes), "ram_bytes": int(result.ram_bytes),
                       "ops": list(result.ops)}
    return sizes
