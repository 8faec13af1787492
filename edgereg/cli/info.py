"""`edgereg info MODEL`: print a model's card and its inputs/outputs."""

from __future__ import annotations

import argparse
import json

from edgereg.cli.common import command_parser
from edgereg.cli.options import add_card_option


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = command_parser(
        subparsers, "info", help="print a model's card and inputs/outputs",
        description="Print the edgereg model card embedded in an ONNX file and the model's inputs "
                    "and outputs. A missing or invalid card is reported with the field at fault.",
        epilog="examples:\n  edgereg info runs/assay/model.onnx\n  edgereg info model.int8.onnx --json",
    )
    parser.add_argument("model", help="an .onnx file exported by edgereg")
    parser.add_argument("--json", action="store_true", help="print the card as JSON only")
    add_card_option(parser)
    return parser


def run(args) -> int:
    from edgereg.cli.options import card_from_option
    from edgereg.core.card import int8_speed_note

    card = card_from_option(args)
    if card is None:
        from edgereg.core.card import read_card

        card = read_card(args.model)
    if args.json:
        print(json.dumps(json.loads(card.to_json()), indent=2))
        return 0
    from edgereg.core.platform_info import runtime_line
    from edgereg.core.predictor import Predictor

    # the Predictor loads the model and checks that the card fits its inputs (a --card included)
    session = Predictor(args.model, providers="cpu", card=card, tta="none").session
    units = card.unit_of
    print(f"model      {args.model}" + (f" (card from {args.card})" if args.card else ""))
    print(f"kind       {card.kind}")
    for i, name in enumerate(card.targets):
        bounds = f"  range {card.range[i][0]:g}..{card.range[i][1]:g}" if card.range else ""
        print(f"target     {name}" + (f" [{units[name]}]" if units[name] else "") + bounds)
    print(f"input      {card.input_size[0]}x{card.input_size[1]} {card.channels}, crop {card.crop}"
          + (f", roi {card.roi}" if card.roi else "") + f", decode {card.decode}")
    print(f"normalize  mean {list(card.mean)} std {list(card.std)} fill {card.fill}")
    print(f"tta        {card.tta} (default)")
    for inp in session.get_inputs():
        print(f"onnx in    {inp.name} {inp.shape} {inp.type}")
    for out in session.get_outputs():
        print(f"onnx out   {out.name} {out.shape} {out.type}")
    if card.provenance:
        print("provenance " + json.dumps(card.provenance, sort_keys=True)[:2000])
    if card.quantization:
        print("int8       " + json.dumps(card.quantization, sort_keys=True)[:2000])
        speed = card.quantization.get("speed") or {}
        if speed.get("measured"):
            ratios = ", ".join(f"batch {b} {r:.2f}x" for b, r in speed.get("int8_vs_fp32", {}).items())
            print(f"speed      int8 / fp32 at export ({speed.get('machine', '?')}): {ratios}; "
                  f"recommended {speed.get('recommended')}")
        note = int8_speed_note(card)
        if note:
            print(f"note       {note}")
    for line in _lab_lines(card):
        print(line)
    print(f"runtime    {runtime_line()}")
    return 0


def _lab_lines(card) -> list[str]:
    """Intervals, calibration to standards and validation limits, one line each (docs/lab-grade.md)."""
    lines = []
    if card.intervals.get("none"):
        lines.append(f"intervals  none: {card.intervals['none']}")
    elif card.intervals:
        sets = card.intervals["sets"]
        parts = [f"tta {s['tta']}: {s['model']} residuals, {s['n_calibration']} images of {s['calibration_split']}"
                 for s in sets]
        levels = ", ".join(f"{v:g}" for v in card.intervals["levels"])
        lines.append(f"intervals  {card.intervals['method']} at {levels}; " + "; ".join(parts))
    if card.novelty:
        n = card.novelty
        limit = "none (too few held-out rows)" if n.get("threshold") is None else f"{n['threshold']:.4g}"
        lines.append(f"novelty    output 'novelty'; unfamiliar above {limit} ({n.get('false_alarm_rate', 0):.0%} false "
                     f"alarms on {n.get('n_threshold')} held-out photos); {n.get('features')} features")
    if card.calibration:
        cal = card.calibration
        standards = cal.get("standards", {})
        fits = ", ".join(f"{name} {t['fit']} {[round(c, 6) for c in t['coef']]}" for name, t in cal["targets"].items())
        lines.append(f"calibration {cal['id']} of {cal['date']}: {fits}; "
                     f"{standards.get('n', '?')} photos of standards, sha256 {standards.get('sha256', '?')}")
    if card.validation:
        val = card.validation
        limits = "; ".join(f"{name} LoB {t.get('lob')} LoD {t.get('lod')} LoQ {t.get('loq')} range {t.get('range')}"
                           for name, t in val["targets"].items())
        lines.append(f"validation {val['id']} of {val['date']} (calibration {val.get('calibration_id')}): {limits}")
    return lines
