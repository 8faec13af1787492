"""The numeric format and memory layout of a training step, chosen by measurement on this machine.

A training step can run in two precisions and two layouts:

* ``fp32``: every op in float32 (the reference);
* ``bf16``: ``torch.autocast("cpu", dtype=torch.bfloat16)`` around the forward pass: convolutions
  and linear layers compute in bfloat16, everything autocast keeps in float32 stays there (BatchNorm
  statistics, reductions), the master weights and the optimizer state stay float32, and the loss
  is computed in float32 on the outputs cast back (:meth:`StepFormat.loss_input`);
* NCHW (``contiguous``) or channels-last input: oneDNN runs its convolutions in NHWC when the input
  is channels-last. The weights are never converted: a channels-last input alone picks the same
  kernels, and gives bit-identical results, as converting the model too.

:func:`choose_step` (``--precision auto``) picks one by timing a few optimizer steps of the model
at its input size in each allowed format, taking turns step by step, first by the work they do:
the process's CPU time per step on one thread, which other jobs on a shared machine barely move
(wall time there, or CPU time with two OpenMP threads waiting on each other, swung 10x from step
to step while this was written). The least-work format of each precision then runs a wall-clock
duel with fp32 NCHW at the fit's thread count, and the fastest on the clock wins: on a busy
machine oneDNN's bf16 kernels, whose threads wait for each other, can lose all they save.
:func:`edgereg.training.planning.input_size.seconds_per_step` returns the winner's wall time, so the planner
spends the gain on resolution and steps. bf16 is a candidate only where the CPU computes
it natively (:func:`detect_machine`: AVX512-BF16 or AMX-BF16, and a oneDNN allowed to use them)
and only when a few bf16 steps from the same weights and data give losses within
:data:`BF16_TOLERANCE` of the fp32 ones. Another format must do :data:`MARGIN` times less work
than fp32 NCHW to replace it, and steps of fewer than :data:`MIN_COMPARED_PIXELS` input pixels are
not compared at all, so near-ties and tiny inputs keep the reference. ``--precision fp32`` is the
NCHW fp32 step of earlier versions and ``--precision bf16`` the bf16 channels-last step, only
timed. The layout and the precision change the last bits of the sums, so the choice is stored in
the checkpoint and a resumed run keeps it; a rerun of ``auto`` measures again (pin the format with
``--precision`` where bit-identical reruns matter).

``torch.compile`` is not used: compiling the forward and backward graphs of these models takes
tens of seconds on two cores (and again for every new input size or model in a race), which a
budget of a few minutes does not win back.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from functools import lru_cache

import numpy as np
import torch

from edgereg.training.config import PRECISIONS

TIMED_STEPS = 3  # steps timed per format after one warm-up step, formats in turn (the least disturbed counts)
MIN_COMPARED_PIXELS = 64 * 32 * 32  # smaller steps (batch x H x W) are not compared: a few ms in any format
MARGIN = 1.15  # another format must be this much faster than the reference to replace it
BF16_TOLERANCE = 0.05  # bf16 losses may differ this much (relative) from the fp32 ones on the same steps
CHECK_LR = 1e-3  # AdamW learning rate of the timed steps (the accuracy check follows the weights moving)
# oneDNN ISA caps (ONEDNN_MAX_CPU_ISA) that still allow its native bf16 kernels
BF16_ISAS = ("ALL", "DEFAULT", "AVX512_CORE_BF16", "AVX10_1_512", "AVX512_CORE_FP16", "AVX10_1_512_AMX",
             "AVX512_CORE_AMX", "AVX10_1_512_AMX_FP16", "AVX512_CORE_AMX_FP16", "AVX10_2_512",
             "AVX10_2_512_AMX_2")


@dataclass(frozen=True)
class Machine:
    """What the CPU offers a training step: native bf16 or not, and why."""

    bf16: bool
    reason: str


def detect_machine() -> Machine:
    """Native bf16 needs the CPU's bf16 instructions (AVX512-BF16 or AMX-BF16, ``torch.cpu.get_capabilities``)
    and a oneDNN allowed to use them (``torch.ops.mkldnn._is_mkldnn_bf16_supported`` honours
    ``ONEDNN_MAX_CPU_ISA``; a cap below AVX512_CORE_BF16 emulates bf16 with fp32 instructions)."""
    try:
        caps = torch.cpu.get_capabilities()
    except (AttributeError, RuntimeError):
        caps = {}
    native = [name for name in ("amx_bf16", "avx512_bf16") if caps.get(name)]
    if not native:
        return Machine(False, "the CPU has no bf16 instructions (no AVX512-BF16 or AMX-BF16)")
    try:
        usable = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        usable = False
    cap = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "ALL").upper()
    if not usable or cap not in BF16_ISAS:
        return Machine(False, f"the CPU has {'/'.join(native)} but oneDNN may not use it (ONEDNN_MAX_CPU_ISA={cap})")
    return Machine(True, f"the CPU has native bf16 ({'/'.join(native)})")


@dataclass(frozen=True)
class StepFormat:
    """How a training step computes: ``precision`` "fp32" or "bf16", and a channels-last input or not."""

    precision: str = "fp32"
    channels_last: bool = False

    def describe(self) -> str:
        """e.g. ``bf16 autocast, channels-last``."""
        return (("bf16 autocast" if self.precision == "bf16" else "fp32") + ", "
                + ("channels-last" if self.channels_last else "NCHW"))

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def autocast(self, device: str | torch.device = "cpu"):
        """The context of the forward pass (a no-op in fp32)."""
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=self.precision == "bf16")

    @staticmethod
    def loss_input(raw: torch.Tensor) -> torch.Tensor:
        """Model outputs as the loss takes them: float32 (bf16 outputs are cast back)."""
        return raw.float()

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict | None) -> StepFormat:
        """Inverse of :meth:`to_dict` (other keys ignored); None or {} (a checkpoint from before
        formats were chosen): fp32 NCHW."""
        return cls() if not data else cls(str(data["precision"]), bool(data["channels_last"]))


FP32 = StepFormat()


@dataclass(frozen=True)
class StepChoice:
    """The chosen format, its measured step time and why (metrics.json ``training.step``)."""

    format: StepFormat
    seconds_per_step: float  # wall time of the chosen format's optimizer step on random data, no augmentation
    reason: str
    work: dict = field(default_factory=dict)  # format description -> CPU s per step on one thread (compared ones)
    bf16_difference: float | None = None  # max relative loss difference bf16 vs fp32 over the timed steps

    def record(self) -> dict:
        """JSON-ready: precision, channels_last, seconds_per_step, reason, work_ms, bf16_difference."""
        return {**self.format.to_dict(), "seconds_per_step": self.seconds_per_step, "reason": self.reason,
                "work_ms": {k: round(v * 1000, 2) for k, v in self.work.items()},
                "bf16_difference": self.bf16_difference}


def _candidates(precision: str, machine: Machine) -> list[StepFormat]:
    """Formats to compare, the reference first. A given precision is one format: ``fp32`` is the
    plain NCHW step of earlier versions, ``bf16`` runs channels-last (oneDNN's bf16 kernels are NHWC)."""
    if precision == "fp32":
        return [FP32]
    if precision == "bf16":
        return [StepFormat("bf16", True)]
    precisions = ["fp32", "bf16"] if machine.bf16 else ["fp32"]
    return [StepFormat(p, layout) for p in precisions for layout in (False, True)]


def _timed_formats(model_name: str, kind: str, size: tuple[int, int], channels: int, batch: int,
                   model_kwargs: str, formats: list[StepFormat], steps: int, clock=time.perf_counter
                   ) -> dict[StepFormat, tuple[float, list]]:
    """For each format: (least disturbed step time in s on ``clock``, losses of every step) of
    ``steps`` + 1 AdamW steps of a model built from one fixed seed on one fixed random batch. The
    formats take turns step by step, so a burst of other work slows them alike; the global RNG is
    left untouched."""
    from edgereg.training.models import create_model

    runs = []
    with torch.random.fork_rng(devices=[]):
        for fmt in formats:
            torch.manual_seed(0)
            model = create_model(model_name, n_outputs=2, kind=kind, in_channels=channels, input_size=tuple(size),
                                 **json.loads(model_kwargs))
            model.train()
            generator = torch.Generator().manual_seed(1)
            x = torch.randn(batch, channels, *size, generator=generator).contiguous(memory_format=fmt.memory_format)
            target = torch.rand(batch, 2, generator=generator)  # (B, 2): any bounded target will do
            runs.append((fmt, model, torch.optim.AdamW(model.parameters(), lr=CHECK_LR), x, target, [], []))
        for _ in range(steps + 1):
            for fmt, model, optimizer, x, target, times, losses in runs:
                started = clock()
                optimizer.zero_grad(set_to_none=True)
                with fmt.autocast():
                    raw = model(x)
                loss = (fmt.loss_input(raw) - target).square().mean()
                loss.backward()
                optimizer.step()
                times.append(clock() - started)
                losses.append(float(loss.detach()))
    return {run[0]: (float(np.min(run[5][1:])), run[6]) for run in runs}


def _relative_difference(losses: list[float], reference: list[float]) -> float:
    return max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(losses, reference))


def choose_step(model_name: str, kind: str, size: tuple[int, int], channels: int, batch: int, *,
                precision: str = "auto", model_kwargs: dict | None = None, machine: Machine | None = None,
                device: str = "cpu", min_compared_pixels: int = MIN_COMPARED_PIXELS,
                tolerance: float = BF16_TOLERANCE) -> StepChoice:
    """The fastest format of an optimizer step of ``model_name`` on this machine (see the module docstring).

    Args:
        size: (H, W) model input; channels: input channels; batch: images per step.
        precision: "auto" (fp32 or, where native and accurate, bf16; NCHW or channels-last), or
            "fp32" (fp32 NCHW) / "bf16" (bf16 channels-last), then only timed.
        machine: what the CPU offers (default :func:`detect_machine`; tests pass a fake one).
        device: "cpu" measures; on other devices the format is fp32 (or bf16 when asked) NCHW, unmeasured.
        min_compared_pixels: steps of fewer input pixels (batch x H x W) keep the reference format.
        tolerance: the largest relative difference of bf16 losses from fp32 ones that bf16 may have.

    Returns:
        The choice. Results are cached per argument set, torch thread count and deterministic flag,
        so the planner, the race and the fit measure a model once.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {PRECISIONS}")  # TrainConfig checks user input
    machine = detect_machine() if machine is None else machine
    if torch.device(device).type != "cpu":
        fmt = StepFormat("bf16" if precision == "bf16" else "fp32", False)
        return StepChoice(fmt, 0.0, f"{fmt.describe()} on {device} (formats are only measured on the CPU)")
    return _choose_cached(model_name, kind, tuple(int(s) for s in size), int(channels), int(batch), precision,
                          json.dumps(model_kwargs or {}, sort_keys=True), machine, torch.get_num_threads(),
                          bool(torch.backends.mkldnn.deterministic), int(min_compared_pixels), float(tolerance))


@lru_cache(maxsize=64)
def _choose_cached(model_name: str, kind: str, size: tuple[int, int], channels: int, batch: int, precision: str,
                   model_kwargs: str, machine: Machine, threads: int, deterministic: bool, min_compared_pixels: int,
                   tolerance: float) -> StepChoice:
    candidates = _candidates(precision, machine)
    reference = candidates[0]
    where = machine.reason if precision == "auto" else f"asked for with --precision {precision}"
    args = (model_name, kind, size, channels, batch, model_kwargs)
    if len(candidates) == 1 or batch * size[0] * size[1] < min_compared_pixels:
        seconds = _timed_formats(*args, [reference], TIMED_STEPS)[reference][0]
        why = (where if len(candidates) == 1 else f"a step of {batch} x {size[0]}x{size[1]} pixels is too small "
               f"to gain from another format ({where})")
        return StepChoice(reference, seconds, f"{reference.describe()}: {why}")
    # which format does the least work: CPU time on one thread, which other jobs barely move
    # (wall time on a busy machine, or CPU time with waiting OpenMP threads, swings 10x)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        measured = _timed_formats(*args, candidates, TIMED_STEPS, clock=time.process_time)
    finally:
        torch.set_num_threads(threads)
    timings = {fmt.describe(): cpu for fmt, (cpu, _) in measured.items()}
    losses = {fmt: trace for fmt, (_, trace) in measured.items()}
    work = timings[reference.describe()]
    difference = None
    rejected = ""
    fp32 = [fmt for fmt in candidates if fmt.precision == "fp32"]
    eligible = list(candidates)
    if machine.bf16:
        difference = max(_relative_difference(losses[fmt], losses[fp32[0]])
                         for fmt in candidates if fmt.precision == "bf16")
        if difference > tolerance:
            eligible = fp32
            rejected = f"; bf16 rejected: its losses differ {difference:.2%} from fp32's (more than {tolerance:.2%})"
    # the least work of each precision that beats the reference by the margin, then a wall-clock
    # duel at the fit's thread count: on a busy machine oneDNN's bf16 kernels, whose threads wait for
    # each other, can lose what they save (measured: 1.1 s instead of 0.1 s per step on 2 threads)
    finalists = [reference]
    for group in dict.fromkeys(fmt.precision for fmt in eligible):  # candidates' order: fp32 first, every run
        fmt = min((f for f in eligible if f.precision == group), key=lambda f: timings[f.describe()])
        if fmt not in finalists and timings[fmt.describe()] * MARGIN <= work:
            finalists.append(fmt)
    walls = {fmt: wall for fmt, (wall, _) in _timed_formats(*args, finalists, TIMED_STEPS).items()}
    best = min(finalists, key=lambda fmt: (walls[fmt], fmt != reference))
    per_step = ", ".join(f"{name} {t * 1000:.0f} ms" for name, t in timings.items())
    duel = ", ".join(f"{fmt.describe()} {wall * 1000:.0f} ms" for fmt, wall in walls.items())
    accuracy = ("" if difference is None or rejected
                else f"; bf16 losses within {difference:.1%} of fp32")
    gain = (f"{work / timings[best.describe()]:.1f}x less work than {reference.describe()}" if best != reference
            else f"no other format did {MARGIN:g}x less work" if len(finalists) == 1
            else "the formats doing less work were not faster on the clock")
    reason = (f"{best.describe()}: {gain} (CPU time per step on one thread: {per_step}; {where}{accuracy}"
              f"{rejected}; wall time per step on {threads} thread(s): {duel})")
    return StepChoice(best, walls[best], reason, timings, difference)
