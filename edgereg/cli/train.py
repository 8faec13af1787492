"""`edgereg train DATASET --out RUN_DIR`: train a regressor and report how good it is."""

from __future__ import annotations

import argparse
import json

from edgereg.cli.common import add_strict_option, command_parser
from edgereg.cli.options import MAX_THREADS, count
from edgereg.core.card import KINDS
from edgereg.errors import EdgeregError

EPILOG = """examples:
  edgereg train data/assay --out runs/assay
  edgereg train data/assay --out runs/assay --range 80,350 --units mg/L --time-budget 5
  edgereg train data/gravel --out runs/gravel --split group --lr auto
  edgereg train data/box --out runs/box --test-groups q3          # a quadrant never seen in training
  edgereg train data/assay --out runs/cv --folds 5
  edgereg train data/assay --out runs/assay --resume              # continue a killed run
  torchrun --nproc-per-node 2 -m edgereg.cli.main train data/assay --out runs/ddp

The run directory gets run.json, checkpoint.pt, best.pt, metrics.json and report.png; export it with
`edgereg export RUN_DIR --int8`.
"""


def add_data_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by `train` and `lr-find`: what to learn and how images are prepared."""
    data = parser.add_argument_group("data")
    data.add_argument("dataset", help="dataset directory with labels.csv (path, target columns, optional group)")
    data.add_argument("--targets", help="comma-separated target columns (default: all but path and group)")
    data.add_argument("--kind", choices=KINDS,
                      help="target kind (default: inferred from the columns and printed)")
    data.add_argument("--range", help="LO,HI of a bounded scalar (default: the train data widened 5%%)")
    data.add_argument("--units", help="comma-separated unit per target, e.g. mg/L")
    add_strict_option(data)
    data.add_argument("--allow-outside", action="store_true",
                      help="allow image paths outside the folder of labels.csv (absolute, ../, symlinks)")
    data.add_argument("--size", help="model input N or HxW in pixels (default: native after the crop up to "
                                     "--max-size, smaller only when the time budget demands it)")
    data.add_argument("--max-size", type=int, default=128, help="cap of the automatic input side (default 128)")
    data.add_argument("--channels", choices=("rgb", "gray"), help="model input colours (default: gray for gray data)")
    data.add_argument("--crop", choices=("none", "center", "circle"),
                      help="crop (default: circle for round samples on plain corners, none for coords, else the "
                           "centre square)")
    data.add_argument("--roi", help="fixed sample position CX,CY,R in source pixels")
    model = parser.add_argument_group("model")
    model.add_argument("--model", default="auto",
                       help="registry name (`edgereg models`), or auto (default): race the candidates and "
                            "learning rates on validation in the first part of the time budget")
    model.add_argument("--model-opt", action="append", default=[], metavar="KEY=VALUE",
                       help="a model option, repeatable, e.g. --model-opt width=24")
    model.add_argument("--loss", help="mse, huber, mse_logmse, soft_ce, kl or poisson (default per kind)")
    model.add_argument("--batch-size", type=int, default=64, help="images per step and process (default 64)")
    model.add_argument("--augment", default="auto",
                       help="augmentation preset[,key=value...]: auto, none, geometric, lighting, all; "
                            "e.g. auto,noise=0.01")
    model.add_argument("--invariance", default="auto", choices=("auto", "none", "flip", "d4", "rotation"),
                       help="image transforms that leave the targets unchanged (or move coords/angles exactly); "
                            "d4/rotation also race the rotation-invariant p4m_small (default: from the kind)")
    model.add_argument("--reference", default="auto", choices=("auto", "none", "ring", "corners"),
                       help="divide colours by a reference region's mean, inside the exported model "
                            "(auto: when a linear test on the data says it helps; ring: a ring about the "
                            "centre, its radii chosen from the data; corners: outside the inscribed circle)")
    model.add_argument("--seed", type=int, default=0, help="seed of split, init, shuffling, augmentation")
    model.add_argument("--threads", type=count(1, MAX_THREADS), metavar="N",
                       help="torch CPU threads (default: the cores)")
    model.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    model.add_argument("--nondeterministic", action="store_true",
                       help="allow faster convolution kernels whose results vary in the last bits between runs")


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = command_parser(
        subparsers, "train", help="train a regressor on a labelled image folder",
        description="Train a compact CNN regressor: decode the images once, split (random, whole groups "
                    "held out, or K folds), train with AdamW and a one-cycle schedule, early-stop on "
                    "validation, checkpoint every epoch, and report metrics in your units against "
                    "zero/mean/median baselines, with collapse and memorisation warnings.",
        epilog=EPILOG,
    )
    add_data_options(parser)
    parser.add_argument("--out", required=True, help="run directory to create (or continue with --resume)")
    fit = parser.add_argument_group("training")
    fit.add_argument("--lr", help="peak learning rate, or 'auto' for the LR range test (default: raced with "
                                  "--model auto and a time budget, else 3e-3)")
    fit.add_argument("--epochs", type=int, help="maximum epochs (default: the time budget decides; without one "
                                                "~1500 steps, 30..200 epochs)")
    fit.add_argument("--time-budget", type=float, metavar="MINUTES",
                     help="minutes for the whole command (loading, race, fit, report), used to the end")
    fit.add_argument("--test", metavar="DIR", help="an external labelled test folder (no internal test split then)")
    refit = fit.add_mutually_exclusive_group()
    refit.add_argument("--refit", dest="refit", action="store_true", default=None,
                       help="after validating, retrain on train + validation with the chosen settings "
                            "(default: when there are fewer than 10 groups)")
    refit.add_argument("--no-refit", dest="refit", action="store_false")
    fit.add_argument("--schedule", default="onecycle", choices=("onecycle", "cosine", "constant"))
    fit.add_argument("--weight-decay", type=float, default=1e-4)
    fit.add_argument("--patience", type=int, default=10, help="early-stopping patience in epochs (default 10)")
    fit.add_argument("--split", default="auto", choices=("auto", "random", "group"),
                     help="auto: group when labels.csv has a group column")
    fit.add_argument("--test-groups", help="comma-separated groups to hold out as the test split")
    fit.add_argument("--val-frac", type=float, default=0.2)
    fit.add_argument("--test-frac", type=float, default=0.15)
    fit.add_argument("--folds", type=int, help="K-fold cross-validation (final model: best-validation fold)")
    fit.add_argument("--tta", default="none", help="the card's default TTA: none, d4 or rot:N")
    fit.add_argument("--precision", default="auto", metavar="auto|fp32|bf16",
                     help="numeric format of the training step: auto times fp32 against bf16 autocast (only "
                          "where the CPU has native bf16 and its losses match fp32) and NCHW against "
                          "channels-last, and keeps the fastest; validation and the exported model are fp32")
    fit.add_argument("--sanity", action="store_true", help="overfit one batch first; fail if the loss does not fall")
    fit.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    fit.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    return parser


def _floats(text: str, count: int, option: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != count:
        raise EdgeregError(f"{option} takes {count} comma-separated numbers, got {text!r}")
    return values


def _size(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    if len(parts) not in (1, 2) or not all(p.isdigit() and 8 <= int(p) <= 1024 for p in parts):
        raise EdgeregError(f"--size takes N or HxW with 8..1024 pixels, e.g. --size 64, got {text!r}")
    return (int(parts[0]), int(parts[-1]))


def _model_options(items: list[str]) -> dict:
    """KEY=VALUE pairs; values are JSON literals (numbers, true/false) or else strings."""
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise EdgeregError(f"--model-opt takes KEY=VALUE, e.g. --model-opt width=24, got {item!r}")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def _names(text: str | None) -> tuple[str, ...] | None:
    return None if text is None else tuple(name.strip() for name in text.split(",") if name.strip())


def data_config(args) -> dict:
    """TrainConfig fields from the options `train` and `lr-find` share (see add_data_options)."""
    return dict(
        targets=_names(args.targets), kind=args.kind,
        range=None if args.range is None else _floats(args.range, 2, "--range"),
        units=() if args.units is None else tuple(unit.strip() for unit in args.units.split(",")),
        strict=args.strict, allow_outside=args.allow_outside,
        input_size=None if args.size is None else _size(args.size), channels=args.channels,
        crop=args.crop, roi=None if args.roi is None else _floats(args.roi, 3, "--roi"), max_size=args.max_size,
        invariance=args.invariance, reference=args.reference,
        model=args.model, model_kwargs=_model_options(args.model_opt), loss=args.loss,
        batch_size=args.batch_size, augment=args.augment, seed=args.seed, threads=args.threads,
        device=args.device, deterministic=not args.nondeterministic,
    )


def config_from_args(args):
    """The TrainConfig described by `edgereg train`'s options."""
    from edgereg.training.config import TrainConfig

    lr = None if args.lr is None else args.lr.strip().lower()
    if lr is not None and lr != "auto":
        try:
            lr = float(lr)
        except ValueError:
            raise EdgeregError(f"--lr takes a number like 3e-3 or 'auto', got {args.lr!r}") from None
    return TrainConfig(
        **data_config(args), lr=lr, epochs=args.epochs, time_budget_min=args.time_budget, schedule=args.schedule,
        weight_decay=args.weight_decay, patience=args.patience, split=args.split,
        test_groups=_names(args.test_groups), val_frac=args.val_frac, test_frac=args.test_frac,
        folds=args.folds, tta=args.tta, sanity=args.sanity, refit=args.refit, test_dir=args.test,
        precision=args.precision,
    )


def run(args) -> int:
    import os

    # OpenMP threads that spin while they wait turn a busy machine's 2 cores into a 20x slowdown
    # (measured here: 13.7 s vs 1.05 s per step of cnn_small while other jobs ran); sleeping waits
    # cost little when the cores are free. It must be set before torch starts its thread pool.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import time

    started = time.perf_counter()  # the time budget counts from here, torch's import included
    from edgereg.errors import require_extra

    require_extra("torch")
    from edgereg.training.trainer import train

    config = config_from_args(args)
    result = train(args.dataset, args.out, config, resume=args.resume, progress=not args.quiet,
                   log=(lambda message: None) if args.quiet else (lambda message: print(message, flush=True)),
                   started=started)
    if result.summary:
        print(result.summary)
    return 0
