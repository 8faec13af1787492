"""Budget-true training schedules: a learning-rate curve over a step count that may be re-planned,
and a clock that measures steady-state step time.

Why not ``torch.optim.lr_scheduler.OneCycleLR``: its length is fixed when it is built, so a fit
that learns after a few epochs how many steps fit in its time budget cannot stretch or shrink it.
:class:`StepSchedule` is a pure function of ``(step, total)``: re-planning changes ``total`` and the
curve continues from the current step (a small jump in the learning rate, never a restart). Its
state is two integers, so checkpoints resume it exactly.

:class:`StepClock` times optimizer steps after a warm-up (the first epoch touches the data cache,
allocates buffers and, on GPUs, compiles kernels: the issue's runs planned from a 51 s first epoch
whose steady epochs took 6-15 s) and gives the median recent step time, robust to the odd slow
step on a shared machine.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass

from edgereg.errors import EdgeregError

SCHEDULES = ("onecycle", "cosine", "constant")
WARMUP_SHARE = 0.3  # one-cycle: share of the steps spent raising the learning rate to its peak
START_DIVISOR = 25.0  # one-cycle: the first learning rate is peak / 25 (as torch's OneCycleLR)
FINAL_DIVISOR = 1e4  # one-cycle / cosine: the last learning rate is peak / 1e4


@dataclass
class StepSchedule:
    """The learning rate of each optimizer step, for a plan of ``total`` steps.

    * ``onecycle``: cosine rise from ``peak / 25`` to ``peak`` over the first 30 % of the steps,
      then cosine decay to ``peak / 1e4`` (Smith's one-cycle, as torch's OneCycleLR);
    * ``cosine``: cosine decay from ``peak`` to ``peak / 1e4``;
    * ``constant``: ``peak`` throughout.

    Steps past ``total`` keep the last learning rate.
    """

    kind: str
    peak: float
    total: int
    step: int = 0

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise EdgeregError(f"--schedule {self.kind!r} is unknown; expected one of {', '.join(SCHEDULES)}")
        self.total = max(2, int(self.total))

    @property
    def peak_step(self) -> int:
        """The step at which the learning rate peaks (0 for schedules that start at the peak)."""
        return int(round(WARMUP_SHARE * self.total)) if self.kind == "onecycle" else 0

    def lr_at(self, step: int) -> float:
        """Learning rate of step ``step`` (0-based) under the current plan."""
        if self.kind == "constant":
            return self.peak
        progress = min(1.0, step / max(1, self.total - 1))
        low = self.peak / FINAL_DIVISOR
        if self.kind == "cosine":
            return low + (self.peak - low) * 0.5 * (1.0 + math.cos(math.pi * progress))
        if progress < WARMUP_SHARE:
            start = self.peak / START_DIVISOR
            return start + (self.peak - start) * 0.5 * (1.0 - math.cos(math.pi * progress / WARMUP_SHARE))
        rest = (progress - WARMUP_SHARE) / (1.0 - WARMUP_SHARE)
        return low + (self.peak - low) * 0.5 * (1.0 + math.cos(math.pi * rest))

    def apply(self, optimizer) -> float:
        """Set every parameter group's learning rate for the next step; returns it."""
        lr = self.lr_at(self.step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr

    def advance(self) -> None:
        self.step += 1

    @property
    def finished(self) -> bool:
        return self.step >= self.total

    def replan(self, total: int) -> None:
        """Stretch or shrink the plan to ``total`` steps (at least the steps already taken + 1)."""
        self.total = max(self.step + 1, 2, int(total))

    def state_dict(self) -> dict:
        return {"kind": self.kind, "peak": self.peak, "total": self.total, "step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.total, self.step = int(state["total"]), int(state["step"])


class StepClock:
    """Steady-state seconds per optimizer step, ignoring the first ``warmup`` steps.

    ``record(seconds)`` after each step; ``seconds_per_step`` is the median of the last ``window``
    steady steps (None until ``min_samples`` were seen).
    """

    def __init__(self, *, warmup: int = 3, window: int = 50, min_samples: int = 3):
        self.warmup, self.min_samples = warmup, min_samples
        self.seen = 0
        self.samples: deque[float] = deque(maxlen=window)

    def record(self, seconds: float) -> None:
        self.seen += 1
        if self.seen > self.warmup:
            self.samples.append(float(seconds))

    @property
    def seconds_per_step(self) -> float | None:
        if len(self.samples) < self.min_samples:
            return None
        return float(statistics.median(self.samples))


def steps_that_fit(seconds_left: float, seconds_per_step: float, *, steps_per_epoch: int,
                   eval_seconds_per_epoch: float) -> int:
    """How many more optimizer steps fit in ``seconds_left``, counting each epoch's validation.

    Args:
        seconds_left: wall-clock seconds the fit may still use.
        seconds_per_step: steady-state time of one optimizer step.
        steps_per_epoch: optimizer steps per epoch (a validation pass follows each epoch).
        eval_seconds_per_epoch: time of one validation pass (0 without validation).
    """
    per_step = seconds_per_step + eval_seconds_per_epoch / max(1, steps_per_epoch)
    return max(0, int(seconds_left / max(per_step, 1e-9)))
