"""`edgereg calibrate MODEL STANDARDS --out MODEL.cal.onnx`: fit reading -> reference on photos of standards."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edgereg.cli.common import add_model_and_standards, add_strict_option, command_parser

EPILOG = """examples:
  edgereg calibrate runs/assay/model.int8.onnx standards/ --out runs/assay/model.int8.cal.onnx
  edgereg calibrate model.int8.onnx standards/ --fit auto          # linear unless the residuals curve
  edgereg calibrate model.int8.onnx standards/ --fit quadratic --c firmware/model

STANDARDS holds labels.csv (path, one column per target with the reference value, optional group)
and photos of reference standards; photograph each standard several times (replicates), e.g.
3 standards x 3 photos. No retraining: the fit goes into the card and the runtime applies it after
the network. Writes OUT and OUT's stem + .calibration.json (every standard's residual, the residual
analysis). Validation limits in MODEL's card are dropped (they were for the old calibration): run
`edgereg validate` on OUT.
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = command_parser(
        subparsers, "calibrate", help="calibrate a model to reference standards (no retraining)",
        description="Read photos of reference standards with MODEL and fit the network's reading to the\n"
                    "reference value (linear by default; quadratic, isotonic or offset by option, or chosen\n"
                    "by residual analysis with --fit auto). The calibration, with its provenance (UTC date,\n"
                    "the standards' SHA-256, n, residual SD, coefficients with 95% confidence intervals), goes\n"
                    "into the card of a copy of MODEL; the runtime applies it after the network, maps the\n"
                    "intervals through it and flags readings outside the standards as extrapolated.",
        epilog=EPILOG,
    )
    add_model_and_standards(parser, model_help="an .onnx model exported by edgereg")
    parser.add_argument("--out", metavar="FILE", help="the calibrated model (default: MODEL with .cal.onnx)")
    parser.add_argument("--fit", default="linear", choices=("linear", "quadratic", "isotonic", "offset", "auto"),
                        help="the curve (default linear; auto: by residual analysis)")
    parser.add_argument("--tta", default=None, help="none, d4 or rot:N: read the standards as you will deploy "
                                                   "(default: the card's)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    add_strict_option(parser)
    parser.add_argument("--c", dest="c_dir", metavar="DIR", help="also write C99 sources of the calibrated model")
    return parser


def run(args) -> int:
    import datetime as _dt

    from edgereg.errors import EdgeregError, require_extra

    require_extra("scipy", "lab")
    require_extra("onnx", "lab")
    from edgereg.core.predictor import Predictor
    from edgereg.export.card_io import copy_with_card
    from edgereg.files import sha256_file
    from edgereg.json_values import json_safe
    from edgereg.lab.calibration import calibration_id
    from edgereg.lab.fit.calibration import card_entry, fit_target
    from edgereg.lab.fit.standards import read_standards

    model = Path(args.model)
    out = Path(args.out) if args.out else model.with_name(model.name.removesuffix(".onnx") + ".cal.onnx")
    check_model_output(out, overwrite=args.overwrite)
    if out.resolve() == model.resolve():
        raise EdgeregError("--out must differ from MODEL: the uncalibrated model stays as it is")
    predictor = Predictor(model, providers="cpu", tta=args.tta, confidence=None, calibration=False)
    standards = read_standards(predictor, args.standards, strict=args.strict)
    fits = {name: fit_target(*standards.column(name), fit=args.fit) for name in standards.names}
    previous = predictor.card.calibration
    section = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "fit": ", ".join(sorted({entry["fit"] for entry in fits.values()})),
        "model_sha256": sha256_file(model),
        "replaces": previous.get("id") if previous else None,
        "standards": standards.provenance(),
        "tta": str(predictor.tta),
        "targets": {name: card_entry(entry) for name, entry in fits.items()},
    }
    section = json_safe(section)
    section["id"] = calibration_id(section)
    card = predictor.card.with_(calibration=section, validation={})
    copy_with_card(model, out, card)
    report_path = out.with_name(out.name.removesuffix(".onnx") + ".calibration.json")
    _write_report(report_path, section, fits, standards)
    print(_summary(section, fits, standards, predictor.card, out, report_path))
    if predictor.card.validation:
        print("note: the validation limits of MODEL were dropped (they belong to the old readings); "
              f"run: edgereg validate {out} STANDARDS", file=sys.stderr)
    if args.c_dir:
        from edgereg.errors import output_error
        from edgereg.export.c.codegen import generate_c

        try:
            result = generate_c(out, args.c_dir)
        except OSError as exc:
            raise output_error(exc, args.c_dir, fix="choose another --c folder") from None
        print(f"C code: flash {result.flash_bytes:,} bytes, RAM {result.ram_bytes:,} bytes in {args.c_dir}")
    return 0


def check_model_output(out: Path, *, overwrite: bool) -> None:
    """Refuse a model output that cannot or must not be written, before any work.

    Raises:
        OutputError: a folder is in the way, or the parent folder is missing or not a folder.
        EdgeregError: ``out`` exists and ``overwrite`` is not set.
    """
    from edgereg.errors import EdgeregError, OutputError

    if out.is_dir():
        raise OutputError(f"cannot write '{out}': a folder is in the way; choose another file name")
    if not out.parent.is_dir():
        raise OutputError(f"cannot write '{out}': folder '{out.parent}' does not exist or is not a folder; "
                          "create it first or choose another path")
    if out.exists() and not overwrite:
        raise EdgeregError(f"'{out}' already exists; pass --overwrite to replace it, or choose another path")


def _write_report(path: Path, section: dict, fits: dict, standards) -> None:
    """The full fit: the card section, the residual analysis and one line per standard."""
    rows = []
    for j, name in enumerate(standards.names):
        residuals = fits[name]["residuals"]
        for i, source in enumerate(standards.paths):
            rows.append({"path": source, "target": name, "reference": float(standards.reference[i, j]),
                         "reading": float(standards.readings[i, j]), "residual": residuals[i]})
    report = {"calibration": section, "analysis": {name: fit["analysis"] for name, fit in fits.items()},
              "standards": rows, "skipped": [list(s) for s in standards.skipped]}
    from edgereg.files import atomic_write
    from edgereg.json_values import json_safe

    atomic_write(path, (json.dumps(json_safe(report), indent=2) + "\n").encode())


def _summary(section: dict, fits: dict, standards, card, out: Path, report_path: Path) -> str:
    units = card.unit_of
    lines = [f"calibrated {len(standards)} standard photos ({standards.root}, sha256 {standards.digest[:16]}...)"
             + (f"; {len(standards.skipped)} rows skipped" if standards.skipped else "")]
    for name, fit in fits.items():
        unit = f" {units[name]}" if units.get(name) else ""
        b = fit["coef"]
        if fit["fit"] == "linear":
            (i_lo, i_hi), (s_lo, s_hi) = fit["intercept_ci95"], fit["slope_ci95"]
            curve = (f"reference = {b[0]:.4g} + {b[1]:.4g} x reading (intercept 95% CI [{i_lo:.4g}, {i_hi:.4g}], "
                     f"slope [{s_lo:.4g}, {s_hi:.4g}])")
        elif fit["fit"] == "quadratic":
            curve = f"reference = {b[0]:.4g} + {b[1]:.4g} x + {b[2]:.4g} x^2"
        elif fit["fit"] == "offset":
            curve = f"reference = reading + {b[0]:.4g}"
        else:
            curve = f"isotonic through {len(fit['knots'][0])} knots"
        r2 = "n/a" if fit["r2"] is None else f"{fit['r2']:.4f}"
        lines.append(f"  {name}: {fit['fit']} ({fit['choice']}): {curve}")
        lines.append(f"    n {fit['n']} at {fit['levels']} levels, residual SD {fit['residual_sd']:.4g}{unit}, "
                     f"R² {r2}; {fit['analysis']['verdict']}")
        low, high = fit["reference_range"]
        lines.append(f"    readings outside {low:.4g}..{high:.4g}{unit} will be flagged 'extrapolated'")
    lines.append(f"calibration {section['id']} ({section['date']}) -> {out}")
    lines.append(f"report: {report_path}")
    return "\n".join(lines)
