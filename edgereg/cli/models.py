"""`edgereg models`: list the registered model architectures with their parameter counts."""

from __future__ import annotations

import argparse

from edgereg.cli.common import command_parser
from edgereg.core.card import KINDS

EXAMPLES = """examples:
  edgereg models
  edgereg models --kind coords
  edgereg train data/assay --out runs/assay --model p4m_small
"""



def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = command_parser(
        subparsers, "models", help="list the model architectures (--model NAME)",
        description="List the registered models: parameter count (for one scalar output at the "
                    "model's default input), default input size and channels, the target kinds it "
                    "supports, and what it is. '*' marks the default model of a kind.",
        epilog=EXAMPLES,
    )
    parser.add_argument("--kind", choices=KINDS, help="only models that support this target kind")
    return parser


def run(args) -> int:
    from edgereg.errors import require_extra

    require_extra("torch")
    from edgereg.core.kinds import target_kind
    from edgereg.training.models import (
        count_parameters,
        create_model,
        default_model,
        list_models,
        model_entry,
    )

    defaults = {default_model(kind) for kind in KINDS}
    rows = [("name", "params", "input", "kinds", "description")]
    for name in list_models(kind=args.kind):
        entry = model_entry(name)
        # Counted for one scalar output; a model without scalars gets its first kind's smallest
        # output (one (x, y) point or one (sin, cos) pair).
        kind = "scalar" if "scalar" in entry.kinds else entry.kinds[0]
        model = create_model(name, n_outputs=target_kind(kind).min_raw_outputs, kind=kind)
        marked = [f"{k}*" if default_model(k) == name else k for k in entry.kinds]
        rows.append((
            name + (" *" if name in defaults else ""),
            f"{count_parameters(model):,}",
            f"{entry.input_size[0]}x{entry.input_size[1]} {entry.channels}",
            ",".join(marked),
            entry.description,
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(width) if i != 1 else cell.rjust(width)
                        for i, (cell, width) in enumerate(zip(row[:4], widths))) + "  " + row[4])
    print("\nparams: for one scalar output (coords-only models: one (x, y) point); "
          "* = the default for that kind. Pick one with `edgereg train DATA --model NAME`.")
    return 0
