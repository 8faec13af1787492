"""The model input size: native after the crop, capped, shrunk only when the time budget demands it."""

from __future__ import annotations

from collections.abc import Callable

from edgereg.core.kinds import target_kind
from edgereg.training.config import SMALL_IMAGE, TrainConfig
from edgereg.training.planning.probe import SourceProbe


def native_size(probe: SourceProbe, crop: str) -> tuple[int, int]:
    """(H, W) of the smallest probed image after the crop (the resolution every image has)."""
    if not probe.sizes:
        return (SMALL_IMAGE, SMALL_IMAGE)
    if crop == "none":
        return (min(h for h, _ in probe.sizes), min(w for _, w in probe.sizes))
    side = min(min(h, w) for h, w in probe.sizes)
    return (side, side)


def capped_size(native: tuple[int, int], cap: int) -> tuple[int, int]:
    """``native`` scaled down (aspect kept) so its longer side is at most ``cap``."""
    longest = max(native)
    if longest <= cap:
        return native
    scale = cap / longest
    return (max(8, int(round(native[0] * scale))), max(8, int(round(native[1] * scale))))


MIN_FIT_EPOCHS = 15  # the budget must leave the fit this many epochs ...
MIN_FIT_STEPS = 1500  # ... and at least this many steps (a one-cycle fit from scratch needs them) ...
MAX_FIT_STEPS = 3000  # ... but never more than this many, else the input shrinks
SIZE_STEP = 0.8  # each shrink multiplies the side by this
MIN_AUTO_SIDE = 32  # the budget never shrinks the input below this side ...
MAX_SHRINK = 0.5  # ... nor below this fraction of the native side: detail is what a small input loses


def seconds_per_step(model_name: str, kind: str, size: tuple[int, int], channels: int, batch: int,
                     precision: str = "auto") -> float:
    """Seconds of one optimizer step of ``model_name`` at ``size`` on random data, this machine, in the
    step format the fit will use (:func:`edgereg.training.fitting.step.choose_step`: fp32 or bf16 autocast,
    NCHW or channels-last, whichever measured fastest; the least disturbed of a few steps)."""
    from edgereg.training.fitting.step import choose_step

    return choose_step(model_name, kind, size, channels, batch, precision=precision).seconds_per_step


def choose_input_size(probe: SourceProbe, config: TrainConfig, *, crop: str, kind: str, model_name: str,
                      fit_seconds: float | None, log: Callable[[str], None]) -> tuple[tuple[int, int], str]:
    """The model input size and why: native after the crop, capped at ``config.max_size``, and
    smaller only when the time budget could not otherwise give the fit MIN_FIT_EPOCHS epochs and
    MIN_FIT_STEPS steps (at most MAX_FIT_STEPS steps are asked for).

    Args:
        fit_seconds: seconds the final fit is expected to get (None: no budget, no shrinking).
    """
    if config.input_size is not None:
        return tuple(config.input_size), "asked for with --size"
    native = native_size(probe, crop)
    size = capped_size(native, config.max_size)
    where = "whole frame" if crop == "none" else "centre square"
    reason = (f"native {native[0]}x{native[1]} ({where})" if size == native
              else f"native {native[0]}x{native[1]} ({where}) capped at --max-size {config.max_size}")
    if fit_seconds is None or not probe.rows:
        return size, reason
    channels = 1 if probe.gray and config.channels != "rgb" else 3
    steps_per_epoch = max(1, round(probe.rows * (1 - config.val_frac - config.test_frac) / config.batch_size))
    wanted = min(max(MIN_FIT_EPOCHS * steps_per_epoch, MIN_FIT_STEPS), MAX_FIT_STEPS)
    step = seconds_per_step(model_name, kind, size, channels, config.batch_size, precision=config.precision)
    affordable = fit_seconds / max(step, 1e-6)
    original = size
    # coords are read in source pixels: shrinking the input scales their error with it (64 px coins at
    # 33 px with 1,600 steps: 3.98 px on an unseen quadrant; at 64 px with 608 steps: 3.42 px)
    floor_side = min(size) if target_kind(kind).xy_points else max(MIN_AUTO_SIDE, MAX_SHRINK * min(native))
    while affordable < wanted and min(size) * SIZE_STEP >= floor_side:
        shrunk = (max(8, int(round(size[0] * SIZE_STEP))), max(8, int(round(size[1] * SIZE_STEP))))
        affordable *= (size[0] * size[1]) / (shrunk[0] * shrunk[1])  # step time ~ pixels
        size = shrunk
    if size != original:
        reason += (f", shrunk to {size[0]}x{size[1]}: at {original[0]}x{original[1]} a step takes "
                   f"{step * 1000:.0f} ms and only ~{fit_seconds / step:.0f} of the {wanted} steps wanted fit "
                   "the budget")
    else:
        reason += f"; ~{affordable:.0f} steps fit the budget ({wanted} wanted)"
    return size, reason

