"""``export_report.json`` and the printed summary of ``edgereg export``.

The report is plain JSON: what was written (paths, sizes), how each model was checked (torch vs ONNX
Runtime agreement, fp16 vs fp32), accuracy of fp32 and int8 in the user's units on the gate split
(and on the test split when it was not used for any choice), the gate's verdict, speed at each batch
size with the int8/fp32 ratio, peak memory, and the flash/RAM bytes of generated C code.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path

from edgereg.files import atomic_replace

STATUS_OK = "ok"  # exported, no int8 asked for
STATUS_PASSED = "passed"  # int8 gate passed
STATUS_FAILED = "failed"  # int8 gate failed: no int8 model written


def build_report(*, run_dir: str | Path, out_dir: str | Path, fp32, fp32_metrics: dict, int8=None, fp16=None,
                 speed: dict | None = None, c_code: dict | None = None, holdout_fp32: dict | None = None,
                 intervals: dict | None = None) -> dict:
    """Assemble the report.

    Args:
        run_dir: the training run exported.
        out_dir: where the models were written.
        fp32: ``onnx_export.Fp32Export``.
        fp32_metrics: fp32 metrics on the gate split (``gate.evaluate``).
        int8: ``gate.Int8Export`` or None.
        fp16: ``fp16.Fp16Export`` or None.
        speed: {"fp32" | "int8" | "fp16": ``speed.SpeedResult``}.
        c_code: {"fp32" | "int8": {"dir", "flash_bytes", "ram_bytes", "ops"} or {"dir", "error"}}.
        holdout_fp32: fp32 metrics on the test split when there was no int8 to report it with.
        intervals: {"fp32" | "int8": ``conformal.add_intervals`` report}, or None.

    Returns:
        A JSON-ready dict (see :func:`write_report`).
    """
    out_dir = Path(out_dir)
    models = {"fp32": {"path": fp32.path.name, "size_bytes": _size(fp32.path), "opset": fp32.opset,
                       "batchnorm_folded_after_export": fp32.batchnorm_folded,
                       "torch_vs_onnxruntime": fp32.agreement.to_dict()}}
    accuracy = {"split": fp32_metrics["split"], "n": fp32_metrics["n"], "units": fp32.card.unit_of,
                "fp32": fp32_metrics}
    status = STATUS_OK
    gate = None
    if int8 is not None:
        status = STATUS_PASSED if int8.gate.passed else STATUS_FAILED
        models["int8"] = {"path": int8.path.name if int8.path else None,
                          "size_bytes": _size(int8.path) if int8.path else None,
                          "written": int8.path is not None, **int8.card.quantization}
        accuracy["int8"] = int8.int8_metrics
        if int8.holdout:
            accuracy["holdout"] = int8.holdout
        gate = int8.gate.to_dict()
        models["int8"]["search"] = {"steps": list(int8.steps), "layers": [layer.to_dict() for layer in int8.layers],
                                    "speed": _jsonable_speed(int8.speed)}
    elif holdout_fp32 is not None:
        accuracy["holdout"] = {"fp32": holdout_fp32}
    if fp16 is not None:
        models["fp16"] = {"path": fp16.path.name, "size_bytes": _size(fp16.path),
                          "fp16_vs_fp32": fp16.agreement.to_dict(), "float_nodes": list(fp16.float_nodes)}
    report = {
        "status": status,
        "run_dir": str(run_dir),
        "out_dir": str(out_dir),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "card_provenance": fp32.card.provenance,
        "models": models,
        "accuracy": accuracy,
        "gate": gate,
        "speed": _speed_section(speed or {}),
        "c": c_code or None,
        "intervals": intervals,
        "recommended": _recommendation(fp32, int8),
    }
    return report


def _recommendation(fp32, int8) -> dict:
    """Which written model to deploy on this machine, and why (int8 only when it passed and is faster)."""
    if int8 is None or int8.path is None:
        why = "no int8 model was asked for" if int8 is None else "the int8 model failed the gate"
        return {"model": fp32.path.name, "why": why}
    if int8.speed is None:
        return {"model": int8.path.name, "why": "passed the gate; speed not measured (--no-speed)"}
    ratio = int8.speed["int8_vs_fp32"][max(int8.speed["int8_vs_fp32"])]
    batch = max(int8.speed["int8_vs_fp32"])
    if int8.speed["recommended"] == "int8":
        return {"model": int8.path.name, "why": f"passed the gate and runs {ratio:.2f}x fp32 at batch {batch} here"}
    return {"model": fp32.path.name, "why": f"int8 passed the gate but runs only {ratio:.2f}x fp32 at batch {batch} "
                                            "here (single thread); int8 still saves size"}


def _jsonable_speed(speed: dict | None) -> dict | None:
    if speed is None:
        return None
    return {**speed, "int8_vs_fp32": {str(b): r for b, r in speed["int8_vs_fp32"].items()},
            "images_per_s": {n: {str(b): r for b, r in rates.items()} for n, rates in speed["images_per_s"].items()}}


def _speed_section(speed: dict) -> dict | None:
    if not speed:
        return None
    section = {name: result.to_dict() for name, result in speed.items()}
    notes = []
    if "fp32" in speed and "int8" in speed:
        ratios = {}
        for batch, fp32_rate in speed["fp32"].images_per_s.items():
            ratio = speed["int8"].images_per_s[batch] / fp32_rate
            ratios[str(batch)] = ratio
            if ratio <= 1.0:
                notes.append(f"int8 is not faster than fp32 at batch {batch} on this machine ({ratio:.2f}x); "
                             "int8 still saves size, and pays off on CPUs with int8 dot products (VNNI, ARM dotprod)")
        section["int8_vs_fp32"] = ratios
    section["notes"] = notes
    return section


def _size(path: Path | None) -> int | None:
    return os.path.getsize(path) if path is not None and Path(path).is_file() else None


def write_report(report: dict, path: str | Path) -> Path:
    """Write the report as indented JSON, atomically (a killed export leaves the old file or none)."""
    path = Path(path)
    text = json.dumps(report, indent=2, sort_keys=False, default=_jsonable) + "\n"
    return atomic_replace(path, text.encode(), temp_name=path.name + ".partial")


def _jsonable(value):
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def format_summary(report: dict) -> str:
    """The printed summary: files, accuracy fp32 vs int8, the gate, speed, memory, C sizes."""
    lines = [f"exported {report['run_dir']} -> {report['out_dir']}"]
    models = report["models"]
    fp32 = models["fp32"]
    agreement = fp32["torch_vs_onnxruntime"]
    lines.append(f"  {fp32['path']:<18}{_kib(fp32['size_bytes']):>11}  opset {fp32['opset']}; torch vs ONNX Runtime "
                 f"max relative diff {agreement['max_rel_diff']:.1e} on {agreement['n_images']} images")
    if "int8" in models:
        int8 = models["int8"]
        tried = ", ".join(f"{m} {rmse:.4g}" for m, rmse in int8["methods_tried"].items())
        name = int8["path"] or "model.int8.onnx"
        size = _kib(int8["size_bytes"]) if int8["written"] else "not written"
        lines.append(f"  {name:<18}{size:>11}  calibration {int8['method']} on {int8['calibration']['images']} "
                     f"images (RMSE by method: {tried})")
        search = int8.get("search") or {}
        lines += [f"  int8 search: {step}" for step in search.get("steps", [])]
        lines += _layer_lines(search.get("layers", []))
    if "fp16" in models:
        fp16 = models["fp16"]
        lines.append(f"  {fp16['path']:<18}{_kib(fp16['size_bytes']):>11}  fp16 vs fp32 max relative diff "
                     f"{fp16['fp16_vs_fp32']['max_rel_diff']:.1e} (CPU provider)")
    lines += _accuracy_lines(report["accuracy"])
    if report["gate"]:
        gate = report["gate"]
        verdict = "passed" if gate["passed"] else "FAILED (model.int8.onnx not written)"
        lines.append(f"int8 gate {verdict}: worst {gate['worst']} {gate['worst_drop']:+.1%}, "
                     f"allowed {gate['max_drop']:+.1%} (--max-drop {gate['max_drop']:g})")
    lines += _speed_lines(report["speed"])
    lines += _interval_lines(report.get("intervals"))
    recommended = report.get("recommended")
    if recommended:
        lines.append(f"deploy: {recommended['model']} ({recommended['why']})")
    for name, c in (report["c"] or {}).items():
        if "error" in c:
            lines.append(f"C code ({name}): FAILED: {c['error']}")
        else:
            lines.append(f"C code ({name}): flash {c['flash_bytes']:,} bytes, RAM {c['ram_bytes']:,} bytes "
                         f"in {c['dir']}")
    return "\n".join(lines)


def _layer_lines(layers: list[dict]) -> list[str]:
    """The per-layer sensitivity table: gate drop with the layer float, SQNR, time int8 vs fp32."""
    if not layers:
        return []
    lines = [f"  {'layer sensitivity':<52}{'drop if float':>14}{'SQNR dB':>9}{'int8 us':>9}{'fp32 us':>9}  kept"]
    for layer in layers:
        def cell(value, fmt):
            return "-" if value is None else format(value, fmt)
        name = layer["name"] if len(layer["name"]) <= 40 else "..." + layer["name"][-37:]
        kept = f"float ({layer['why']})" if layer["float"] else "int8"
        lines.append(f"    {name + ' ' + layer['op_type']:<50}{cell(layer['drop_if_float'], '+.1%'):>14}"
                     f"{cell(layer['sqnr_db'], '.1f'):>9}{cell(layer['int8_us'], '.0f'):>9}"
                     f"{cell(layer['fp32_us'], '.0f'):>9}  {kept}")
    return lines


def _accuracy_lines(accuracy: dict) -> list[str]:
    sections = [(accuracy["split"], accuracy["n"], accuracy["fp32"], accuracy.get("int8"))]
    holdout = accuracy.get("holdout")
    if holdout:
        sections.append((holdout["fp32"]["split"], holdout["fp32"]["n"], holdout["fp32"], holdout.get("int8")))
    units = accuracy["units"]
    only_unit = set(units.values()).pop() if len(set(units.values())) == 1 else ""
    lines = []
    for split, n, fp32, int8 in sections:
        header = f"accuracy on {split} ({n} images{', ' + only_unit if only_unit else ''})"
        lines.append(f"{header:<36}{'fp32':>12}" + (f"{'int8':>12}{'change':>10}" if int8 else ""))
        rows = [("overall RMSE", fp32["rmse"], int8["rmse"] if int8 else None),
                ("overall max error", fp32["max_error"], int8["max_error"] if int8 else None)]
        per_target = fp32["targets"].items() if len(fp32["targets"]) > 1 else ()  # one target: the overall rows
        for name, target in per_target:
            unit = f" [{units[name]}]" if units[name] and not only_unit else ""
            rows.append((f"{name} RMSE{unit}", target["rmse"], int8["targets"][name]["rmse"] if int8 else None))
            rows.append((f"{name} max error{unit}", target["max_error"],
                         int8["targets"][name]["max_error"] if int8 else None))
        for label, a, b in rows:
            line = f"  {label:<34}{a:>12.4g}"
            if b is not None:
                change = f"{b / a - 1:+.1%}" if a > 0 else "n/a"
                line += f"{b:>12.4g}{change:>10}"
            lines.append(line)
    return lines


def _interval_lines(intervals: dict | None) -> list[str]:
    """Half-width of a typical 90% interval per model and target, the split used, and the caveat."""
    if not intervals:
        return []
    lines = []
    for model, report in intervals.items():
        if "none" in report:
            lines.append(f"intervals ({model}): none: {report['none']}")
            continue
        entry = report["sets"]["none"]
        parts = []
        for name, target in entry["targets"].items():
            half = target["half_width_at_median_difficulty"].get("0.9", [None])
            shown = "inf" if half[0] is None else f"{half[0]:.3g}"
            bins = f", {target['bins']} bins" if target["bins"] > 1 else ""
            parts.append(f"{name} ±{shown} ({target['difficulty']}{bins})")
        lines.append(f"intervals ({model}, 90%, typical half-width): {'; '.join(parts)}")
        checked = entry.get("coverage_split_half") or {}
        if "0.9" in checked:
            lines.append(f"  90% coverage, quantiles from one half of the calibration rows, checked on the other "
                         f"(nothing chose from them): {checked['0.9']:.1%}")
        else:
            lines.append("  no coverage check: too few calibration rows to divide; check with `edgereg eval` on new "
                         "labelled photos")
    first = next(iter(intervals.values()))
    if first["split_choice"] != "none":
        lines.append(f"  {first['split_choice']}")
    lines.append(f"  note: {first['guarantee']}")
    return lines


def _speed_lines(speed: dict | None) -> list[str]:
    if not speed:
        return []
    names = [n for n in ("fp32", "int8", "fp16") if n in speed]
    batches = list(speed[names[0]]["images_per_s"])
    lines = [f"{'speed, images/s (CPU, median)':<36}" + "".join(f"{'batch ' + b:>12}" for b in batches)]
    for name in names:
        lines.append(f"  {name:<34}" + "".join(f"{speed[name]['images_per_s'][b]:>12.1f}" for b in batches))
    if "int8_vs_fp32" in speed:
        lines.append(f"  {'int8 / fp32':<34}" + "".join(f"{speed['int8_vs_fp32'][b]:>11.2f}x" for b in batches))
    memory = ", ".join(f"{n} {speed[n]['peak_rss_mib']:.0f}" for n in names)
    lines.append(f"peak memory, MiB: {memory} (onnxruntime alone: {speed[names[0]]['baseline_rss_mib']:.0f})")
    lines += [f"note: {note}" for note in speed["notes"]]
    return lines


def _kib(size: int | None) -> str:
    return "-" if size is None else f"{size / 1024:.1f} KiB"
