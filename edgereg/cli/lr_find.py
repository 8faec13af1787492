"""`edgereg lr-find DATASET`: the learning-rate range test, its suggestion and its plot."""

from __future__ import annotations

import argparse
from pathlib import Path

from edgereg.cli.common import command_parser

EPILOG = """examples:
  edgereg lr-find data/assay
  edgereg lr-find data/gravel --model resnet_tiny --out gravel_lr.png
  edgereg train data/assay --out runs/assay --lr auto      # the same test, inside training

Read the plot: the loss is flat at tiny learning rates, falls, then blows up. The suggestion is where
it falls fastest (steepest descent of the smoothed loss); pass it to `edgereg train --lr`.
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    from edgereg.cli.train import add_data_options

    parser = command_parser(
        subparsers, "lr-find", help="find a learning rate with the LR range test",
        description="Train a fresh model for a few dozen steps while the learning rate grows "
                    "exponentially, track the smoothed loss and suggest the learning rate of its "
                    "steepest descent. Uses the same data, split, model and augmentation as `train`.",
        epilog=EPILOG,
    )
    add_data_options(parser)
    parser.add_argument("--out", default="lr_find.png", help="the plot to write (default lr_find.png)")
    parser.add_argument("--start", type=float, default=1e-6, help="first learning rate (default 1e-6)")
    parser.add_argument("--end", type=float, default=1.0, help="last learning rate (default 1)")
    parser.add_argument("--steps", type=int, default=100, help="sweep steps (default 100)")
    return parser


def run(args) -> int:
    import os

    # OpenMP threads that spin while they wait turn a busy machine's 2 cores into a 20x slowdown
    # (measured here: 13.7 s vs 1.05 s per step of cnn_small while other jobs ran); sleeping waits
    # cost little when the cores are free. It must be set before torch starts its thread pool.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from edgereg.errors import require_extra

    require_extra("torch")
    import torch

    from edgereg.cli.train import data_config
    from edgereg.training import ddp
    from edgereg.training.config import TrainConfig
    from edgereg.training.fitting.fit import find_lr
    from edgereg.training.planning.fit_plan import make_plan
    from edgereg.training.planning.loading import load_data
    from edgereg.training.planning.validation import make_run_split
    from edgereg.training.selection.lr_find import LRFindConfig, plot_lr_find

    config = TrainConfig(**data_config(args))
    lr_config = LRFindConfig(start=args.start, end=args.end, steps=args.steps)
    torch.set_num_threads(ddp.threads_per_process(ddp.DistContext(), config.threads))
    loaded = load_data(args.dataset, config)
    plan = make_plan(loaded, config, make_run_split(loaded, config))
    result = find_lr(plan, config, device=ddp.resolve_device(config.device), lr_config=lr_config)
    path = plot_lr_find(result, Path(args.out))
    print(f"swept {len(result.lrs)} steps from {result.lrs[0]:.2g} to {result.lrs[-1]:.2g}; "
          f"loss minimum at {result.minimum:.2g}")
    print(f"suggested learning rate: {result.suggestion:.3g} (steepest descent)  ->  "
          f"edgereg train {args.dataset} --out RUN --lr {result.suggestion:.3g}")
    print(f"look at: {path}")
    return 0
