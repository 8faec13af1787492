"""`edgereg eval MODEL DATASET`: metrics (JSON) and plots of any exported model on a labelled dataset."""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

from edgereg.cli.common import add_strict_option, command_parser
from edgereg.cli.options import MAX_PIXELS_HELP, add_card_option, count, pixels
from edgereg.preprocess.decode import DEFAULT_MAX_PIXELS

EPILOG = """examples:
  edgereg eval runs/assay/model.onnx data/assay_holdout
  edgereg eval runs/assay/model.int8.onnx data/assay_holdout --out eval/int8 --tta d4

writes OUT/metrics.json, OUT/predictions.csv and OUT/pred_vs_true.png (the plot needs edgereg[train])
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = command_parser(
        subparsers, "eval", help="metrics and plots of an exported model on a labelled dataset",
        description="Score an exported model (fp32, int8 or fp16 .onnx with an edgereg card) on a dataset\n"
                    "directory (labels.csv + images) with the runtime's own preprocessing, and report RMSE,\n"
                    "MAE, R², max error per target in the dataset's units (coords in source pixels, angles\n"
                    "in degrees), and per group when labels.csv has a group column.",
        epilog=EPILOG,
    )
    parser.add_argument("model", metavar="MODEL", help="an .onnx file exported by edgereg")
    parser.add_argument("dataset", metavar="DATASET", help="a folder with labels.csv (or the labels.csv itself)")
    parser.add_argument("--out", metavar="DIR",
                        help="where to write metrics.json and plots (default: eval-<dataset> next to MODEL)")
    parser.add_argument("--tta", default=None, help="none, d4 or rot:N (default: the model card's)")
    parser.add_argument("--batch", type=count(1), default=32, help="images per inference call (default 32)")
    parser.add_argument("--providers", default="auto", help="auto, cpu, cuda, tensorrt (default auto)")
    add_strict_option(parser)
    parser.add_argument("--no-calibration", action="store_true",
                        help="score the network's readings, ignoring the card's calibration to standards")
    parser.add_argument("--allow-outside", action="store_true",
                        help="allow image paths outside the folder of labels.csv (absolute, ../, symlinks)")
    parser.add_argument("--max-pixels", type=pixels, default=DEFAULT_MAX_PIXELS, metavar="N", help=MAX_PIXELS_HELP)
    add_card_option(parser)
    return parser


def run(args) -> int:
    from edgereg.cli.options import card_from_option
    from edgereg.core.predictor import Predictor
    from edgereg.data.dataset import load_dataset, skip_summary
    from edgereg.export.int8.gate import eval_set, score
    from edgereg.files import atomic_write

    out_dir = Path(args.out) if args.out else Path(args.model).parent / f"eval-{_dataset_name(args.dataset)}"
    _check_out_dir(out_dir)
    predictor = Predictor(args.model, providers=args.providers, tta=args.tta, batch_size=args.batch,
                          card=card_from_option(args), confidence=None,
                          calibration=not args.no_calibration)
    card = predictor.card
    dataset = load_dataset(args.dataset, config=predictor.config, targets=list(card.targets), kind=card.kind,
                           strict=args.strict, allow_outside=args.allow_outside, max_pixels=args.max_pixels)
    labelled = eval_set(dataset, None, kind=card.target_kind, split=_dataset_name(args.dataset))
    predictions = predictor.predict_prepared(labelled.frames, labelled.boxes)
    truth = labelled.targets  # (N, T) in the dataset's units (coords in source pixels)
    metrics = score(predictions.values, labelled, card)
    coverage = _coverage(predictor, dataset, labelled.boxes, truth)
    familiarity = _by_familiarity(predictor, dataset, labelled, predictions, truth)

    _make_out_dir(out_dir)
    result = {"model": str(args.model), "dataset": str(args.dataset), "tta": str(predictor.tta),
              "providers": predictor.providers, "n": int(len(truth)), "skipped": len(dataset.skipped),
              "quantization": card.quantization or None, "metrics": metrics, "interval_coverage": coverage,
              "by_familiarity": familiarity,
              "calibration_id": predictor.lab.calibration.id if predictor.lab.calibration else None}
    atomic_write(out_dir / "metrics.json", (json.dumps(result, indent=2) + "\n").encode())
    atomic_write(out_dir / "predictions.csv",
                 _predictions_csv(dataset.paths, card.targets, truth, predictions.values).encode())
    plot = _plot(out_dir / "pred_vs_true.png", card, truth, predictions.values, metrics)

    units = card.unit_of
    skipped = skip_summary(dataset.skipped)
    if skipped:  # always said, whatever else is printed: rows left out change the metrics
        print(f"edgereg: {skipped}", file=sys.stderr)
    print(f"{args.model} on {args.dataset}: {len(truth)} images ({len(dataset.skipped)} rows skipped), "
          f"tta {predictor.tta}")
    print(f"  overall RMSE {metrics['rmse']:.4g}  MAE {metrics['mae']:.4g}  max error {metrics['max_error']:.4g}")
    for name, target in metrics["targets"].items():
        r2 = "n/a" if target["r2"] is None else f"{target['r2']:.3f}"
        unit = f" {units[name]}" if units[name] else ""
        print(f"  {name}: RMSE {target['rmse']:.4g}{unit}  MAE {target['mae']:.4g}  "
              f"max error {target['max_error']:.4g}  R² {r2}")
    print("\n".join(_coverage_lines(coverage)))
    print("\n".join(_familiarity_lines(familiarity)))
    print(f"metrics: {out_dir / 'metrics.json'}")
    print(f"plot: {plot}" if plot else "plot: skipped (matplotlib missing: pip install 'edgereg[train]')")
    return 0


def _coverage(predictor, dataset, boxes, truth, parts=None):
    """Observed coverage of the card's intervals on this dataset, at each stored level (with
    ``parts``, a list of (N,) bool masks: one coverage dict or None per part)."""
    import numpy as np

    from edgereg.core.predictor import Predictor
    from edgereg.lab.readout import interval_coverage

    if not predictor.card.intervals or "sets" not in predictor.card.intervals:
        return None
    network = Predictor(predictor.path, providers="cpu", tta=str(predictor.tta), batch_size=predictor.batch_size,
                        confidence=None, calibration=False, card=predictor.card)
    raw = network.predict_prepared(dataset.images, boxes)
    sides = np.asarray(dataset.crop_boxes, dtype=np.float64)[:, 2:4]  # (N, 2) w, h
    scale = predictor.card.target_kind.reading_scale(sides, len(predictor.card.targets))
    calibrate = predictor.lab.calibration is not None
    if parts is None:
        return interval_coverage(predictor.card, str(predictor.tta), raw.values, raw.spread, scale, truth,
                                 calibrate=calibrate)
    cut = lambda a, m: None if a is None else a[m]  # noqa: E731
    return [interval_coverage(predictor.card, str(predictor.tta), raw.values[m], cut(raw.spread, m), cut(scale, m),
                              truth[m], calibrate=calibrate) if m.any() else None for m in parts]


def _by_familiarity(predictor, dataset, labelled, predictions, truth) -> dict | None:
    """RMSE and 90%-interval coverage of the readings flagged ``unfamiliar`` and of the others, or
    None for a model without the novelty output."""
    import numpy as np

    from edgereg.core.predictor import UNFAMILIAR
    from edgereg.export.int8.gate import score

    if predictions.novelty is None:
        return None
    unfamiliar = np.array([UNFAMILIAR in f for f in predictions.flags], dtype=bool)
    coverage = _coverage(predictor, dataset, labelled.boxes, truth, parts=(~unfamiliar, unfamiliar))
    result = {"threshold": predictor.novelty_threshold, "false_alarm_rate": predictor.card.novelty.get(
        "false_alarm_rate"), "novelty": [float(v) for v in predictions.novelty]}
    for k, (name, mask) in enumerate((("familiar", ~unfamiliar), ("unfamiliar", unfamiliar))):
        entry: dict = {"n": int(mask.sum()), "share": float(mask.mean()) if len(mask) else 0.0}
        if mask.any():
            from edgereg.export.int8.gate import EvalSet

            part = EvalSet(frames=labelled.frames[:0], targets=labelled.targets[mask], crop_boxes=None
                           if labelled.crop_boxes is None else labelled.crop_boxes[mask], split=name)
            entry["rmse"] = float(score(predictions.values[mask], part, predictor.card)["rmse"])
            if coverage is not None and coverage[k] is not None:
                entry["interval_coverage"] = {level: e["coverage"] for level, e in coverage[k]["levels"].items()
                                              if "coverage" in e}
        result[name] = entry
    return result


def _familiarity_lines(familiarity: dict | None) -> list[str]:
    if familiarity is None:
        return ["  unfamiliar: this model has no novelty output (export it again to add one)"]
    lines = [f"  unfamiliar (novelty above {familiarity['threshold']:.4g}, set for "
             f"{familiarity['false_alarm_rate']:.0%} false alarms on familiar photos):"]
    for name in ("familiar", "unfamiliar"):
        entry = familiarity[name]
        text = f"    {name}: {entry['n']} ({entry['share']:.1%})"
        if "rmse" in entry:
            text += f", RMSE {entry['rmse']:.4g}"
        if "0.9" in entry.get("interval_coverage", {}):
            text += f", 90% interval coverage {entry['interval_coverage']['0.9']:.1%}"
        lines.append(text)
    return lines


def _coverage_lines(coverage: dict | None) -> list[str]:
    if coverage is None:
        return ["  intervals: none in this model's card (export with `edgereg export` to add them)"]
    levels = coverage["levels"]
    seen = ", ".join(f"{float(level):.0%} -> {entry['coverage']:.1%}" for level, entry in levels.items()
                     if "coverage" in entry)
    lines = [f"  interval coverage (nominal -> observed): {seen}"]
    for level, entry in levels.items():
        if "unsupported" in entry:
            lines.append(f"  {float(level):.0%}: not reported: {entry['unsupported']}")
    if "coverage" in levels.get("0.9", {}):
        for name, bins in levels["0.9"]["bins"].items():
            parts = [f"{b['lo']:.4g}..{b['hi']:.4g}: {b['coverage']:.0%} (n {b['n']})" for b in bins if b["n"]]
            lines.append(f"  90% coverage of {name} by range bin: " + "; ".join(parts))
    lines.append("  note: coverage is guaranteed only for images like the export's calibration split; a shortfall "
                 "here means these images differ (camera, light, samples): recalibrate or re-export")
    return lines


def _dataset_name(dataset: str) -> str:
    path = Path(dataset)
    return (path.parent if path.suffix.lower() == ".csv" else path).resolve().name or "dataset"


def _check_out_dir(out_dir: Path) -> None:
    """Refuse an --out that cannot become a folder, before the work (OutputError, exit 2)."""
    from edgereg.errors import OutputError

    existing = next((p for p in (out_dir, *out_dir.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise OutputError(f"cannot write to '{out_dir}': '{existing}' is a file, not a folder; choose another --out")
    import os

    if existing is not None and not os.access(existing, os.W_OK):
        raise OutputError(f"cannot write to '{out_dir}': '{existing}' is not writable; choose another --out")


def _make_out_dir(out_dir: Path) -> None:
    from edgereg.errors import output_error

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise output_error(exc, out_dir) from None


def _predictions_csv(paths, names, truth, predicted) -> str:
    """One row per image: path, then true and predicted value of each target."""
    import csv

    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", *(f"{n}_true" for n in names), *(f"{n}_pred" for n in names)])
    for source, true_row, pred_row in zip(paths, truth, predicted):
        writer.writerow([str(source), *(f"{v:.9g}" for v in true_row), *(f"{v:.9g}" for v in pred_row)])
    return buffer.getvalue()


def _plot(path: Path, card, truth, predicted, metrics: dict) -> Path | None:
    """Predicted vs true per target, RMSE in the title (matplotlib, Agg); None without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = len(card.targets)
    columns = min(count, 4)
    rows = -(-count // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 3.4 * rows), squeeze=False)
    units = card.unit_of
    for j, name in enumerate(card.targets):
        ax = axes[j // columns][j % columns]
        lo, hi = min(truth[:, j].min(), predicted[:, j].min()), max(truth[:, j].max(), predicted[:, j].max())
        ax.plot([lo, hi], [lo, hi], color="0.6", linewidth=1)
        ax.scatter(truth[:, j], predicted[:, j], s=8, alpha=0.6)
        unit = f" [{units[name]}]" if units[name] else ""
        ax.set(xlabel=f"true {name}{unit}", ylabel=f"predicted {name}{unit}",
               title=f"{name}: RMSE {metrics['targets'][name]['rmse']:.4g}")
    for k in range(count, rows * columns):
        axes[k // columns][k % columns].axis("off")
    from edgereg.files import atomic_write

    figure.tight_layout()
    image = io.BytesIO()
    try:
        figure.savefig(image, format="png", dpi=110)
    finally:
        plt.close(figure)
    return atomic_write(path, image.getvalue())  # whole or absent, like the other outputs
