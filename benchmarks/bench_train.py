"""Training-step benchmark: steps/s of the race candidates, the old fp32 NCHW step against the chosen one.

For every race candidate (``cnn_small``, ``resnet_tiny``, ``heatmap_small`` on coords; the seed
paper's ``base_seed004`` only at small inputs, where the race enters it) at 64, 96 and 128 px,
batch 64, it times whole training steps as :class:`edgereg.training.fitting.fit.BatchLoss` runs them: a
uint8 batch -> ``to_float_batch`` -> ``augment_batch`` (rotation, flip, 5 % shift; coords: shift
only) -> ``to_model_input`` -> forward -> float32 loss -> backward -> clipped AdamW step, in

* ``fp32``: fp32 NCHW, the step of earlier versions (``--precision fp32``);
* ``chosen``: the format :func:`edgereg.training.fitting.step.choose_step` picks (``--precision auto``),

both with deterministic kernels (the trainer's default), and the chosen format once more without
them (``nondet``; ``det cost`` = nondet steps/s over chosen steps/s: the price of
``deterministic=True``). The three take turns step by step. ``aug ms`` is the data part of the chosen
step (uint8 to model input). Steps/s are from the least disturbed of ``--steps`` timed steps after
one warm-up: the machine may be shared (the load average is printed before and after).
``--clock cpu --threads 1`` times by this process's CPU time instead, which other jobs on a busy
machine barely move (the format is still chosen by wall time, as the trainer does).

Goals (issue 19): >= 3x steps/s at 96 px for cnn_small and resnet_tiny where bf16 is native,
>= 1.3x where it is not, never below 1x.

Run: ``python benchmarks/bench_train.py`` (``--threads 1 --clock cpu`` on a busy machine; ``--quick``: 64 px
only, 2 steps; ``--avx2``: run once more under ``ONEDNN_MAX_CPU_ISA=AVX2`` and ``ATEN_CPU_CAPABILITY=avx2``:
oneDNN and torch's own kernels as on a CPU without bf16 or AVX-512).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `edgereg train` (spinning OpenMP waits on a busy machine)

import argparse
import subprocess
import sys
import time

import numpy as np
import torch
from torch import nn

from edgereg.core.platform_info import cpu_info
from edgereg.preprocess import PreprocessConfig
from edgereg.training.fitting.augment import AugmentConfig, augment_batch, to_float_batch, to_model_input
from edgereg.training.fitting.step import FP32, StepFormat, choose_step, detect_machine
from edgereg.training.models import create_model

CANDIDATES = (("cnn_small", "scalar", (64, 96, 128)), ("resnet_tiny", "scalar", (64, 96, 128)),
              ("heatmap_small", "coords", (64, 96, 128)), ("base_seed004", "scalar", (32, 64)))
BATCH = 64


def load_line() -> str:
    try:
        return "load average " + " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        return "load average unknown"


def timed_steps(name: str, kind: str, side: int, variants: list[tuple[StepFormat, bool]], steps: int,
                clock=time.perf_counter) -> list[tuple[float, float]]:
    """For each (format, deterministic) variant: (seconds of a whole training step, of its data part)
    on ``clock``, from the least disturbed of ``steps`` steps after one warm-up. The variants take
    turns step by step, so a burst of other work on a shared machine slows them alike."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (BATCH, side, side, 3), dtype=np.uint8)  # (B, H, W, 3) uint8 BGR
    outputs = 2 if kind == "coords" else 1
    targets = torch.from_numpy(rng.random((BATCH, outputs)).astype(np.float32))  # (B, T) in [0, 1]
    augment = (AugmentConfig(translate=0.25) if kind == "coords"
               else AugmentConfig(rotation="any", hflip=True, translate=0.05))
    preprocess = PreprocessConfig(input_size=(side, side), channels="rgb", crop="center" if kind == "coords"
                                  else "circle", mean=(0.5,) * 3, std=(0.25,) * 3)
    runs = []
    for fmt, deterministic in variants:
        torch.manual_seed(0)
        model = create_model(name, n_outputs=outputs, kind=kind, in_channels=3, input_size=(side, side))
        model.train()
        runs.append((fmt, deterministic, model, torch.optim.AdamW(model.parameters(), lr=1e-4),
                     torch.Generator().manual_seed(0), [], []))
    for _ in range(steps + 1):
        for fmt, deterministic, model, optimizer, generator, totals, datas in runs:
            torch.backends.mkldnn.deterministic = deterministic
            started = clock()
            x, y = augment_batch(to_float_batch(images), targets, kind=kind, config=augment, generator=generator)
            x = to_model_input(x, preprocess, memory_format=fmt.memory_format)
            datas.append(clock() - started)
            optimizer.zero_grad(set_to_none=True)
            with fmt.autocast():
                raw = model(x)
            loss = (fmt.loss_input(raw) - y).square().mean()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimizer.step()
            totals.append(clock() - started)
    torch.backends.mkldnn.deterministic = True
    results = []
    for *_, totals, datas in runs:
        best = int(np.argmin(totals[1:])) + 1
        results.append((totals[best], datas[best]))
    return results


def run(sizes_of, steps: int, clock_name: str) -> None:
    machine = detect_machine()
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "(not set)")
    print(f"cpu {cpu_info().describe()}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"ONEDNN_MAX_CPU_ISA={cap}, aten {torch.backends.cpu.get_cpu_capability()}; bf16: {machine.reason}")
    print(load_line() + f" (the machine may be shared with other jobs); clock: {clock_name}")
    clock = time.process_time if clock_name == "cpu" else time.perf_counter
    print(f"{'model':<14}{'px':>5}  {'chosen format':<30}{'fp32/s':>8}{'chosen/s':>10}{'ratio':>7}"
          f"{'nondet/s':>10}{'det cost':>9}{'aug ms':>8}")
    for name, kind, sizes in CANDIDATES:
        for side in sizes_of(sizes):
            torch.backends.mkldnn.deterministic = True
            choice = choose_step(name, kind, (side, side), 3, BATCH, machine=machine)
            (fp32, _), (chosen, data), (loose, _) = timed_steps(
                name, kind, side, [(FP32, True), (choice.format, True), (choice.format, False)], steps, clock)
            print(f"{name:<14}{side:>5}  {choice.format.describe():<30}{1 / fp32:>8.2f}{1 / chosen:>10.2f}"
                  f"{fp32 / chosen:>6.2f}x{1 / loose:>10.2f}{chosen / loose:>8.2f}x"
                  f"{data * 1000:>8.1f}", flush=True)
    print(load_line())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="64 px (32 for base_seed004) and 2 steps")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per measurement (default 4)")
    parser.add_argument("--avx2", action="store_true", help="then run again under ONEDNN_MAX_CPU_ISA=AVX2")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall time, or this process's CPU time (with --threads 1: what other jobs on a "
                             "shared machine barely move; with more threads OpenMP waits inflate it)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    steps = 2 if args.quick else args.steps
    run((lambda sizes: sizes[:1]) if args.quick else (lambda sizes: sizes), steps, args.clock)
    if args.avx2:
        print("\n== again with ONEDNN_MAX_CPU_ISA=AVX2 (oneDNN as on an AVX2 CPU without bf16)", flush=True)
        again = [a for a in sys.argv[1:] if a != "--avx2"]
        env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
        return subprocess.run([sys.executable, __file__, *again], env=env).returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())
