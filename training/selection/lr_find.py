"""The learning-rate range test (Smith 2015; the seed-004 paper's "LR finder").

Train for a few dozen steps while the learning rate grows exponentially from ``start`` to ``end``,
keep an exponentially smoothed loss, stop when it diverges, and suggest the learning rate where the
smoothed loss falls fastest per decade (the steepest descent). The model and optimizer are restored
afterwards, so the test leaves no trace on the run.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edgereg.errors import EdgeregError


@dataclass(frozen=True)
class LRFindConfig:
    """How the sweep runs."""

    start: float = 1e-6  # first learning rate: small enough that nothing moves
    end: float = 1.0  # last learning rate: large enough that the loss blows up
    steps: int = 100  # sweep length; ~100 steps resolve the curve, cheap on a small model
    smoothing: float = 0.9  # EMA factor of the loss: single batches are noisy
    diverge: float = 4.0  # stop once the smoothed loss exceeds this multiple of its minimum
    skip_start: int = 5  # the EMA is unreliable over its first few steps

    def __post_init__(self) -> None:
        if not (0 < self.start < self.end) or self.steps < 10 or not (0 <= self.smoothing < 1):
            raise EdgeregError(f"LR finder needs 0 < start < end, steps >= 10 and 0 <= smoothing < 1; "
                               f"got start={self.start} end={self.end} steps={self.steps} "
                               f"smoothing={self.smoothing}")


@dataclass(frozen=True)
class LRFindResult:
    """The sweep's curve and its suggestion."""

    lrs: tuple[float, ...]  # learning rate of each step taken
    losses: tuple[float, ...]  # raw training loss of each step
    smoothed: tuple[float, ...]  # bias-corrected EMA of the loss
    suggestion: float  # steepest descent of the smoothed loss
    minimum: float  # learning rate of the smoothed loss's minimum (a tenth of it is the usual cap)

    def to_dict(self) -> dict:
        return {"suggestion": self.suggestion, "minimum": self.minimum, "lrs": list(self.lrs),
                "losses": list(self.losses), "smoothed": list(self.smoothed)}


def lr_range_test(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                  loss_of_step: Callable[[int], torch.Tensor], config: LRFindConfig = LRFindConfig()
                  ) -> LRFindResult:
    """Run the range test and restore ``model`` and ``optimizer`` afterwards.

    Args:
        model: the module being trained (its state is saved and restored).
        optimizer: its optimizer; every param group gets the swept learning rate.
        loss_of_step: ``step -> scalar loss tensor`` for a fresh training batch (with grad).
        config: the sweep.

    Returns:
        The curve and the suggested learning rate.

    Raises:
        EdgeregError: the loss was not finite from the first step (the data or model is broken).
    """
    saved_model = copy.deepcopy(model.state_dict())
    saved_optimizer = copy.deepcopy(optimizer.state_dict())
    lrs = np.geomspace(config.start, config.end, config.steps)
    taken, losses, smoothed = [], [], []
    average, best = 0.0, math.inf
    model.train()
    try:
        for step, lr in enumerate(lrs):
            for group in optimizer.param_groups:
                group["lr"] = float(lr)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_of_step(step)
            value = float(loss.detach())
            if not math.isfinite(value):
                break
            loss.backward()
            optimizer.step()
            average = config.smoothing * average + (1 - config.smoothing) * value
            debiased = average / (1 - config.smoothing ** (step + 1))
            taken.append(float(lr))
            losses.append(value)
            smoothed.append(debiased)
            best = min(best, debiased)
            if step > config.skip_start and debiased > config.diverge * best:
                break
    finally:
        model.load_state_dict(saved_model)
        optimizer.load_state_dict(saved_optimizer)
    if len(taken) <= config.skip_start + 2:
        raise EdgeregError(f"the LR finder's loss diverged after {len(taken)} steps (from lr {config.start:g}); "
                           "check the data with --sanity, or lower the start of the sweep")
    suggestion, minimum = suggest(np.array(taken), np.array(smoothed), skip_start=config.skip_start)
    return LRFindResult(tuple(taken), tuple(losses), tuple(smoothed), suggestion, minimum)


def suggest(lrs: np.ndarray, smoothed: np.ndarray, *, skip_start: int = 5) -> tuple[float, float]:
    """(steepest-descent lr, lr at the minimum) of a smoothed loss curve.

    Args:
        lrs: (S,) increasing learning rates.
        smoothed: (S,) smoothed loss at each.
        skip_start: points ignored at the start (EMA warm-up).

    The steepest point is searched only up to the minimum: past it the loss is diverging.
    """
    lowest = int(np.argmin(smoothed[skip_start:])) + skip_start
    window = slice(skip_start, max(lowest, skip_start + 2) + 1)
    slopes = np.gradient(smoothed[window], np.log10(lrs[window]))  # loss change per decade
    steepest = int(np.argmin(slopes)) + skip_start
    return float(lrs[steepest]), float(lrs[lowest])


def plot_lr_find(result: LRFindResult, path: str | Path) -> Path:
    """Write the loss-vs-learning-rate plot with the suggestion marked (PNG, matplotlib Agg)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    axes.plot(result.lrs, result.losses, color="0.75", linewidth=0.8, label="loss")
    axes.plot(result.lrs, result.smoothed, color="C0", label="smoothed loss")
    axes.axvline(result.suggestion, color="C3", linestyle="--",
                 label=f"suggested lr {result.suggestion:.2g} (steepest descent)")
    axes.set_xscale("log")
    low, high = min(result.smoothed), max(result.smoothed[: max(1, len(result.smoothed) * 9 // 10)])
    axes.set_ylim(low - 0.1 * (high - low + 1e-12), high + 0.1 * (high - low + 1e-12))
    axes.set_xlabel("learning rate")
    axes.set_ylabel("training loss")
    axes.set_title("LR range test")
    axes.legend(loc="best", fontsize=8)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path)
    return path
