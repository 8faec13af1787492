"""`edgereg validate MODEL STANDARDS`: ICH Q2(R2) / CLSI EP17-A2 figures, into a report and the card."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from edgereg.cli.common import add_model_and_standards, add_strict_option, command_parser

EPILOG = """examples:
  edgereg validate runs/assay/model.int8.cal.onnx validation_standards/
  edgereg validate model.int8.cal.onnx standards/ --sigma blank --low-max 100 --max-cv 10
  edgereg validate model.int8.cal.onnx standards/ --c firmware/model   # C code that flags against the limits

STANDARDS: labels.csv (path, one column per target with the reference value, optional group) and
photos: blanks (reference 0) for the LoB, replicates of low levels for the LoD, and replicates of
levels across the range for linearity, repeatability and the working range. Use other photos than
the ones the model was calibrated on.

Writes OUT/validation.json and OUT/validation.png (one page per target), and the limits (LoB, LoD,
LOQ, working range) into MODEL's card (or --model-out), where the runtime flags readings below
them or outside the range.
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = command_parser(
        subparsers, "validate", help="method validation figures (ICH Q2, CLSI EP17) from photos of standards",
        description="Read photos of standards with MODEL (calibrated readings, as deployed) and compute:\n"
                    "linearity (slope, intercept with 95% CI, R², residuals), repeatability (SD and CV per\n"
                    "level), the working range, EP17 LoB = mean_blank + 1.645 SD_blank and LoD = LoB + 1.645\n"
                    "SD_low, and ICH LOD = 3.3 sigma/S and LOQ = 10 sigma/S.",
        epilog=EPILOG,
    )
    add_model_and_standards(parser, model_help="an .onnx model (calibrated with `edgereg calibrate`, ideally)")
    parser.add_argument("--out", metavar="DIR", help="report folder (default: MODEL's stem + .validation)")
    parser.add_argument("--model-out", metavar="FILE",
                        help="write the model with the limits in its card here (default: update MODEL in place)")
    parser.add_argument("--no-card", action="store_true", help="only write the report; leave the card alone")
    parser.add_argument("--sigma", choices=("residual", "blank"), default="residual",
                        help="sigma of the ICH limits: the regression's residual SD (default) or the blanks' SD")
    parser.add_argument("--low-max", type=float, default=None, metavar="X",
                        help="low-level samples of the EP17 LoD: levels <= X (default: the lowest non-blank level)")
    parser.add_argument("--max-cv", type=float, default=15.0, metavar="PCT",
                        help="working range: CV per level at most this (default 15)")
    parser.add_argument("--max-bias", type=float, default=15.0, metavar="PCT",
                        help="working range: |bias| per level at most this %% of the reference (default 15)")
    parser.add_argument("--tta", default=None, help="none, d4 or rot:N (default: the card's)")
    add_strict_option(parser)
    parser.add_argument("--c", dest="c_dir", metavar="DIR",
                        help="also write C99 sources of the validated model (limits and flags included)")
    return parser


def run(args) -> int:
    import datetime as _dt
    import math

    from edgereg.errors import EdgeregError, output_error, require_extra

    require_extra("scipy", "lab")
    from edgereg.cli.calibrate import check_model_output
    from edgereg.core.predictor import Predictor
    from edgereg.files import atomic_write, sha256_file
    from edgereg.json_values import json_safe
    from edgereg.lab.calibration import calibration_id
    from edgereg.lab.fit.standards import read_standards
    from edgereg.lab.fit.validation import validate

    model = Path(args.model)
    if not all(v > 0 and math.isfinite(v) for v in (args.max_cv, args.max_bias)):
        raise EdgeregError(f"--max-cv and --max-bias must be percentages > 0, got {args.max_cv} and {args.max_bias}")
    if args.low_max is not None and not math.isfinite(args.low_max):
        raise EdgeregError(f"--low-max must be a finite reference value, got {args.low_max}")
    if args.model_out and not args.no_card:
        check_model_output(Path(args.model_out), overwrite=True)
    predictor = Predictor(model, providers="cpu", tta=args.tta, confidence=0.9)
    standards = read_standards(predictor, args.standards, strict=args.strict)
    out_dir = Path(args.out) if args.out else model.with_name(model.name.removesuffix(".onnx") + ".validation")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise output_error(exc, out_dir) from None
    date = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
    calibration = predictor.lab.calibration
    figures, limits = {}, {}
    for name in standards.names:
        readings, reference = standards.column(name)
        figures[name] = validate(reference, readings, sigma=args.sigma, low_max=args.low_max, max_cv=args.max_cv,
                                 max_bias=args.max_bias)
        limits[name] = {k: figures[name]["limits"][k] for k in ("lob", "lod", "loq", "range", "lod_method",
                                                                "loq_method")}
    coverage = _interval_coverage(predictor, standards)
    section = {"date": date, "calibration_id": calibration.id if calibration else None,
               "model_sha256": sha256_file(model), "standards": standards.provenance(),
               "settings": {"sigma": args.sigma, "low_max": args.low_max, "max_cv_percent": args.max_cv,
                            "max_bias_percent": args.max_bias, "tta": str(predictor.tta)},
               "targets": limits}
    section = json_safe(section)
    section["id"] = calibration_id(section)
    report = {"model": str(model), "validation": section, "figures": figures, "interval_coverage": coverage,
              "standards": [{"path": p, **{n: float(standards.reference[i, j]) for j, n in enumerate(standards.names)},
                             **{f"{n}_reading": float(standards.readings[i, j]) for j, n in enumerate(standards.names)}}
                            for i, p in enumerate(standards.paths)],
              "skipped": [list(s) for s in standards.skipped]}
    json_path = atomic_write(out_dir / "validation.json", (json.dumps(json_safe(report), indent=2) + "\n").encode())
    plots = _plots(out_dir, model, standards, figures, predictor.card.unit_of, date)
    target_model = None
    if not args.no_card:
        require_extra("onnx", "lab")
        from edgereg.export.card_io import copy_with_card

        target_model = Path(args.model_out) if args.model_out else model
        copy_with_card(model, target_model, predictor.card.with_(validation=section))
    print(_summary(figures, predictor.card.unit_of, coverage, json_path, plots, target_model, section))
    if args.c_dir:
        from edgereg.export.c.codegen import generate_c

        if target_model is None:
            raise EdgeregError("--c writes the C code of the model with the limits in its card; drop --no-card")
        try:
            result = generate_c(target_model, args.c_dir)
        except OSError as exc:
            raise output_error(exc, args.c_dir, fix="choose another --c folder") from None
        print(f"C code: flash {result.flash_bytes:,} bytes, RAM {result.ram_bytes:,} bytes in {args.c_dir}")
    return 0


def _interval_coverage(predictor, standards) -> dict | None:
    """Observed coverage of the model's intervals on the standards (a check, not a guarantee)."""
    if standards.lo is None:
        return None
    inside = predictor.card.target_kind.covered(standards.reference, standards.lo, standards.hi)  # (N, K)
    return {"level": predictor.lab.level,
            "targets": {name: float(inside[:, j].mean()) for j, name in enumerate(standards.names)}}


def _plots(out_dir: Path, model: Path, standards, figures: dict, units: dict, date: str) -> list[Path]:
    from edgereg.lab.fit.plot import plot_validation

    paths = []
    for j, name in enumerate(standards.names):
        target = out_dir / ("validation.png" if len(standards.names) == 1 else f"validation_{name}.png")
        title = f"Validation of {model.name}, target {name}: {len(standards)} photos of standards ({date})"
        paths.append(plot_validation(target, name, units.get(name, ""), standards.reference[:, j],
                                     standards.readings[:, j], figures[name], title=title))
    return paths


def _summary(figures: dict, units: dict, coverage, json_path: Path, plots: list[Path], target_model, section) -> str:
    lines = []
    for name, fig in figures.items():
        unit = f" {units[name]}" if units.get(name) else ""
        line, limits, ich = fig["linearity"], fig["limits"], fig["ich"]
        lines.append(f"{name}: slope {line['slope']:.4g} [{line['slope_ci95'][0]:.4g}, {line['slope_ci95'][1]:.4g}], "
                     f"intercept {line['intercept']:.4g}{unit}, R² {line['r2']:.5f}, residual SD "
                     f"{line['residual_sd']:.4g}{unit}")
        pooled = fig["repeatability"]["pooled_sd"]
        lines.append(f"  repeatability: pooled SD {'n/a' if pooled is None else f'{pooled:.4g}'}{unit}")
        lob = "n/a (no blanks)" if limits["lob"] is None else f"{limits['lob']:.4g}{unit}"
        lines.append(f"  LoB {lob}; LoD {limits['lod']:.4g}{unit} ({limits['lod_method']}); "
                     f"ICH LOD {ich['lod']:.4g}, LOQ {ich['loq']:.4g}{unit}")
        span = fig["working_range"]["range"]
        lines.append("  working range: " + ("none meets the acceptance limits" if span is None
                                            else f"{span[0]:.4g} .. {span[1]:.4g}{unit}"))
    if coverage:
        seen = ", ".join(f"{name} {value:.0%}" for name, value in coverage["targets"].items())
        lines.append(f"  {coverage['level']:.0%} intervals covered the reference on the standards: {seen}")
    lines.append(f"report: {json_path} and {', '.join(str(p) for p in plots)}")
    if target_model is not None:
        lines.append(f"limits written into the card of {target_model} (validation {section['id']})")
    return "\n".join(lines)
