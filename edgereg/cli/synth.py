"""`edgereg synth TASK OUT`: write a synthetic dataset (labels.csv + PNG images) to try edgereg on."""

from __future__ import annotations

import argparse

from edgereg.cli.common import command_parser
from edgereg.cli.options import positive_int

# Listed here rather than imported so that `edgereg --help` does not load OpenCV; a test holds this
# table equal to edgereg.training.synth.TASKS.
TASK_HELP = {
    "assay": "128 px  reaction well whose colour encodes a concentration in 80..350 mg/L; group = sample",
    "gravel": "128 px  particles on a tray; bin0..bin4 = size distribution; group = distribution",
    "box": "64 px   a small bright box on clutter; x, y in source pixels; group = quadrant q0..q3",
    "pixelstats": "28 px   gray textured patches; mean, median, std of their pixels in [0, 1]",
    "angle": "64 px   an arrow; angle in degrees, counter-clockwise from +x, in [0, 360)",
    "count": "64 px   dark particles in a round dish; count = how many (0..20); train with --kind count",
}

EPILOG = "tasks (default size):\n" + "\n".join(f"  {name:<11} {text}" for name, text in TASK_HELP.items()) + """

examples:
  edgereg synth assay data/assay --n 2000
  edgereg synth box data/box --n 4000 --seed 1 --size 96
  edgereg train data/assay --out runs/assay
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = command_parser(
        subparsers, "synth", help="write a synthetic dataset (labels.csv + images)",
        description="Render a synthetic dataset in edgereg's format: OUT/labels.csv (path, targets,\n"
                    "group) and PNG images under OUT/images/. The same task, --n, --seed and --size\n"
                    "give the same files.",
        epilog=EPILOG,
    )
    parser.add_argument("task", metavar="TASK", help="one of: " + ", ".join(TASK_HELP))
    parser.add_argument("out", metavar="OUT", help="folder to write (created)")
    parser.add_argument("--n", type=positive_int, required=True, help="number of images")
    parser.add_argument("--seed", type=int, default=0, help="random seed >= 0 (default 0)")
    parser.add_argument("--size", type=positive_int, default=None,
                        help="image side in pixels (default: the task's, see below)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing labels.csv in OUT")
    return parser


def run(args) -> int:
    import time

    from edgereg.training.synth import get_task, make_dataset

    spec = get_task(args.task)
    start = time.perf_counter()
    csv_path = make_dataset(args.task, args.out, n=args.n, seed=args.seed, size=args.size,
                            overwrite=args.overwrite)
    size = args.size or spec.default_size
    columns = ", ".join(spec.columns) + (" + group" if spec.grouped else "")
    print(f"wrote {args.n} {size}x{size} {args.task} images and {csv_path} ({columns}) "
          f"in {time.perf_counter() - start:.1f} s")
    return 0
