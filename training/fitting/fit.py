"""The optimisation of one planned fit: batches, loss, the epoch loop, and scoring the best weights.

Each epoch shuffles the train rows with a generator seeded by ``(seed, epoch)``, so a resumed run
replays exactly; each batch goes uint8 -> float -> :func:`~edgereg.training.fitting.augment.augment_batch`
-> :func:`~edgereg.training.fitting.augment.to_model_input` -> ``Regressor.forward_raw`` -> loss on the
encoded targets, in the step format :func:`~edgereg.training.fitting.step.choose_step` measured fastest
(bf16 autocast and/or channels-last where they win; float32 weights and losses always). Validation
(:func:`predict`) stays float32 NCHW, since it defines the reported numbers, and preprocesses with
:func:`edgereg.preprocess.preprocess_batch` itself, so training and deployment never differ. Also here:
the LR range test (:func:`find_lr`) and the one-batch overfit check (:func:`sanity_check`) on the same
batches and optimizer.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from edgereg.core.kinds import target_kind
from edgereg.data.metrics import compute_metrics, uv_to_source_pixels
from edgereg.errors import EdgeregError
from edgereg.preprocess import PreprocessConfig, preprocess_batch
from edgereg.training import ddp
from edgereg.training.config import AUTO_EPOCHS, AUTO_STEPS, TrainConfig
from edgereg.training.fitting.augment import augment_batch, to_float_batch, to_model_input
from edgereg.training.fitting.schedule import StepClock, StepSchedule, steps_that_fit
from edgereg.training.fitting.step import FP32, StepChoice, StepFormat, choose_step
from edgereg.training.planning.fit_plan import FitPlan, new_regressor
from edgereg.training.planning.loading import LoadedData
from edgereg.training.reporting.report import (
    SplitEvaluation,
    baseline_predictions,
    evaluate_split,
    ordered_baselines,
    thumbnail_features,
)
from edgereg.training.run import BEST_FILE, CHECKPOINT_FILE, RUN_FORMAT, save_checkpoint
from edgereg.training.selection.lr_find import LRFindConfig, LRFindResult, lr_range_test
from edgereg.training.targets.losses import make_loss

# ----------------------------------------------------------------------------------------------------
# Batches, the loss of a batch, and prediction.


class RawOutputs(nn.Module):
    """``Regressor.forward_raw`` as ``forward``, so DistributedDataParallel sees (and syncs) it."""

    def __init__(self, regressor: nn.Module):
        super().__init__()
        self.regressor = regressor

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.regressor.forward_raw(images)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The CPU generator of one epoch: shuffling and augmentation depend only on (seed, epoch)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def epoch_batches(rows: np.ndarray, batch_size: int, generator: torch.Generator,
                  ctx: ddp.DistContext) -> list[np.ndarray]:
    """Shuffle ``rows``, take this rank's shard and cut it into batches of nearly equal size.

    Equal sizes (``np.array_split``) avoid a 1-image last batch, which BatchNorm cannot train on.
    """
    order = rows[torch.randperm(len(rows), generator=generator).numpy()]
    mine = ddp.shard(order, ctx)
    return np.array_split(mine, max(1, round(len(mine) / batch_size)))


@dataclass(frozen=True)
class BatchLoss:
    """Computes the training loss of a batch of row indices (augmented unless told otherwise), the
    forward pass in ``step``'s format (bf16 autocast, channels-last input) and the loss in float32."""

    plan: FitPlan
    loss_fn: Callable
    device: str
    step: StepFormat = FP32

    def __call__(self, net: nn.Module, regressor, rows: np.ndarray, generator: torch.Generator | None
                 ) -> torch.Tensor:
        dataset = self.plan.loaded.dataset
        images = to_float_batch(dataset.images[rows], self.device)  # (B,3,H,W) float32 0..255 BGR
        targets = torch.from_numpy(dataset.targets[rows]).to(self.device)  # (B,T) dataset units
        if generator is not None:
            images, targets = augment_batch(images, targets, kind=self.plan.loaded.kind,
                                            config=self.plan.augment, generator=generator)
        x = to_model_input(images, self.plan.preprocess, memory_format=self.step.memory_format)  # (B,C,H,W)
        with self.step.autocast(self.device):
            raw = net(x)  # (B, n_outputs), bf16 under autocast
        return self.loss_fn(self.step.loss_input(raw), regressor.encode_targets(targets))


@torch.no_grad()
def predict(regressor, images: np.ndarray, preprocess: PreprocessConfig, *, device: str = "cpu",
            batch_size: int = 256) -> np.ndarray:
    """Model outputs for images, preprocessed by the runtime's own kernel.

    Args:
        regressor: the model (put in eval mode here).
        images: (N, H, W, 3) uint8 BGR, cropped and resized to the model input.
        preprocess: the run's preprocessing.

    Returns:
        (N, T) float64 in model-output units (physical; coords in [0, 1] of the input).
    """
    regressor.eval()
    outputs = []
    for start in range(0, len(images), batch_size):
        x = preprocess_batch(images[start:start + batch_size], preprocess)  # (b, C, H, W) float32
        outputs.append(regressor(torch.from_numpy(x).to(device)).double().cpu().numpy())
    return np.concatenate(outputs) if outputs else np.zeros((0, 0))


def to_user_units(loaded: LoadedData, values: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """(N, T) model/dataset units -> the user's units: coords to source pixels, others unchanged."""
    if not target_kind(loaded.kind).xy_points:
        return np.asarray(values, dtype=np.float64)
    return uv_to_source_pixels(values, loaded.dataset.crop_boxes[rows])


def validation_rmse(plan: FitPlan, regressor, rows: np.ndarray, *, device: str, batch_size: int) -> float | None:
    """Overall RMSE in user units on ``rows`` (None when there are none)."""
    if not len(rows):
        return None
    loaded = plan.loaded
    pred = to_user_units(loaded, predict(regressor, loaded.dataset.images[rows], plan.preprocess,
                                         device=device, batch_size=batch_size), rows)
    true = to_user_units(loaded, loaded.dataset.targets[rows], rows)
    return compute_metrics(loaded.kind, true, pred, loaded.dataset.names)["rmse"]


# ----------------------------------------------------------------------------------------------------
# LR range test and the one-batch sanity check.


def make_optimizer(regressor, config: TrainConfig, lr: float) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters."""
    return torch.optim.AdamW([p for p in regressor.parameters() if p.requires_grad], lr=lr,
                             weight_decay=config.weight_decay)


def find_lr(plan: FitPlan, config: TrainConfig, *, device: str = "cpu",
            lr_config: LRFindConfig | None = None) -> LRFindResult:
    """Run the LR range test on the train split (augmented batches) with a fresh model
    (``lr_config``: default ``LRFindConfig()``)."""
    lr_config = LRFindConfig() if lr_config is None else lr_config
    regressor = new_regressor(plan, config.seed).to(device)
    net = RawOutputs(regressor)
    optimizer = make_optimizer(regressor, config, lr_config.start)
    batch_loss = BatchLoss(plan, make_loss(plan.loss_name, plan.loaded.kind), device)
    generator = epoch_generator(config.seed, -1)
    train = np.asarray(plan.split.train)
    batches: list[np.ndarray] = []

    def loss_of_step(step: int) -> torch.Tensor:
        if not batches:
            batches.extend(epoch_batches(train, config.batch_size, generator, ddp.DistContext()))
        return batch_loss(net, regressor, batches.pop(0), generator)

    return lr_range_test(net, optimizer, loss_of_step, lr_config)


@dataclass(frozen=True)
class SanityResult:
    """The one-batch overfit check (seed 003: "overfit one example first")."""

    passed: bool
    steps: int  # optimizer steps taken
    batch: int  # images in the batch
    first_loss: float
    last_loss: float
    rmse: float  # RMSE on the batch after fitting, user units
    mean_rmse: float  # RMSE of answering the batch's mean, user units

    def describe(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        return (f"sanity check {verdict}: one batch of {self.batch} fitted for {self.steps} steps: loss "
                f"{self.first_loss:.4g} -> {self.last_loss:.4g}, RMSE {self.rmse:.4g} vs {self.mean_rmse:.4g} "
                "for the batch mean")


def sanity_check(plan: FitPlan, config: TrainConfig, *, device: str = "cpu", max_steps: int = 200,
                 batch: int = 16, target_ratio: float = 0.3) -> SanityResult:
    """Overfit one un-augmented batch with a fresh model; it passes when the batch RMSE falls below
    ``target_ratio`` x the RMSE of predicting the batch mean (the loss itself may have a floor, e.g.
    the entropy of soft labels)."""
    regressor = new_regressor(plan, config.seed).to(device)
    net = RawOutputs(regressor)
    lr = 1e-3 if config.lr in ("auto", None) else min(float(config.lr), 3e-3)
    optimizer = make_optimizer(regressor, replace(config, weight_decay=0.0), lr)
    batch_loss = BatchLoss(plan, make_loss(plan.loss_name, plan.loaded.kind), device)
    rows = np.asarray(plan.split.train)[:batch]
    loaded = plan.loaded
    true = to_user_units(loaded, loaded.dataset.targets[rows], rows)
    mean_pred = np.tile(true.mean(axis=0), (len(rows), 1))
    mean_rmse = compute_metrics(loaded.kind, true, mean_pred, loaded.dataset.names)["rmse"]
    x = torch.from_numpy(preprocess_batch(loaded.dataset.images[rows], plan.preprocess)).to(device)
    losses, rmse, step = [], math.inf, 0
    for step in range(1, max_steps + 1):
        regressor.train()
        optimizer.zero_grad(set_to_none=True)
        loss = batch_loss(net, regressor, rows, None)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        if step % 10 == 0 or step == max_steps:
            with torch.no_grad():  # train-mode BatchNorm: the batch's own statistics, as fitted
                pred = to_user_units(loaded, regressor(x).double().cpu().numpy(), rows)
            rmse = compute_metrics(loaded.kind, true, pred, loaded.dataset.names)["rmse"]
            if rmse < target_ratio * mean_rmse:
                break
    passed = bool(mean_rmse == 0 or rmse < target_ratio * mean_rmse)
    return SanityResult(passed, step, len(rows), losses[0], losses[-1], float(rmse), float(mean_rmse))


# ----------------------------------------------------------------------------------------------------
# The fit: epochs, checkpoints, early stopping, time budget.


@dataclass(frozen=True)
class FitOutcome:
    """What a finished fit hands to the report."""

    regressor: Any  # best validation weights (by the smoothed metric), eval mode
    history: list  # per-epoch dicts: epoch, train_loss, val_rmse, val_smoothed, lr, steps, seconds
    best_epoch: int  # 1-based; 0 when there was no validation split (last weights kept)
    planned_epochs: int  # epochs the final plan asked for (ceil of planned steps / steps per epoch)
    stopped: str  # why the loop ended
    lr: float  # the peak learning rate used
    seconds: float  # fitting time, across resumes
    steps: int = 0  # optimizer steps taken
    planned_steps: int = 0  # the schedule's final length in steps
    seconds_per_step: float | None = None  # steady-state step time (warm-up excluded)
    peak_step: int = 0  # the step of the learning-rate peak; early stopping never came before it
    replans: tuple = ()  # (step, planned steps) each time the schedule was re-planned
    step: dict | None = None  # the step format, its measured time and why (StepChoice.record)


def auto_epochs(steps_per_epoch: int) -> int:
    """Default epoch count without a time budget: about AUTO_STEPS optimizer steps, within AUTO_EPOCHS."""
    low, high = AUTO_EPOCHS
    return int(min(high, max(low, math.ceil(AUTO_STEPS / max(1, steps_per_epoch)))))


SMOOTHING = 0.5  # EMA weight of the newest validation score in the smoothed metric early stopping reads
REPLAN_DRIFT = 0.1  # re-plan when the steady step time moves this much from the one the plan used
MAX_EPOCHS_WITH_BUDGET = 100_000  # with a time budget the clock, not an epoch count, ends the fit
PATIENCE_SHARE = 0.25  # early stopping waits at least this share of the planned epochs
KEPT = " (kept on resume)"  # appended to the step format's reason by a resumed fit


class Fitter:
    """Runs the epochs of one fit, checkpointing into ``run_dir`` (rank 0 writes).

    Without a deadline the schedule has ``config.epochs`` (or :func:`auto_epochs`) epochs. With a
    ``deadline`` (an absolute ``time.perf_counter()`` value) the schedule is planned to end there:
    after the first steps (warm-up excluded) the steady step time and the validation time give the
    steps that fit, the one-cycle curve is laid over them, and at every epoch end the plan is
    re-made when the step time drifted by more than 10 %. The loop ends when the schedule is done,
    the deadline passes (checked after every step), or, without a deadline and after the
    learning-rate peak only, when the smoothed validation RMSE has not improved for
    :attr:`patience` epochs. With a deadline the time is given: the one-cycle schedule was laid
    over it, its annealing end is where the best scores usually come, and the best weights are
    kept whatever follows them, so stopping early would only leave budget unused.

    Args:
        rows: train rows (default ``plan.split.train``); val rows come from ``plan.split.val``.
        checkpoints: write checkpoint.pt / best.pt each epoch (False for short race fits).
        validate_every_epoch: score validation after each epoch (False: only at the end).
        closing_rows: rows the caller scores after the fit besides validation (test, seen, an
            external test); the deadline keeps time for them at the measured validation speed.
    """

    def __init__(self, plan: FitPlan, config: TrainConfig, run_dir: Path | None, ctx: ddp.DistContext, *,
                 lr: float, progress: bool, log: Callable[[str], None], deadline: float | None = None,
                 checkpoints: bool = True, validate_every_epoch: bool = True, seed: int | None = None,
                 closing_rows: int = 0):
        self.plan, self.config, self.run_dir, self.ctx = plan, config, run_dir, ctx
        self.closing_rows = closing_rows
        self.lr, self.progress, self.log = lr, progress, log
        self.deadline, self.checkpoints, self.validate_every_epoch = deadline, checkpoints, validate_every_epoch
        self.seed = config.seed if seed is None else seed
        self.regressor = new_regressor(plan, self.seed).to(ctx.device)
        self.net = ddp.wrap(RawOutputs(self.regressor), ctx)
        self.optimizer = make_optimizer(self.regressor, config, lr)
        self.batch_loss = BatchLoss(plan, make_loss(plan.loss_name, plan.loaded.kind), ctx.device)
        self.train_rows = np.asarray(plan.split.train)
        self.val_rows = np.asarray(plan.split.val)
        self.steps_per_epoch = len(epoch_batches(self.train_rows, config.batch_size, torch.Generator(), ctx))
        if deadline is None:
            epochs = config.epochs or auto_epochs(self.steps_per_epoch)
        else:
            epochs = config.epochs or MAX_EPOCHS_WITH_BUDGET
        self.max_steps = epochs * self.steps_per_epoch
        # With a deadline the first plan is provisional: the first timed steps replace it.
        self.schedule = StepSchedule(config.schedule, lr, self.max_steps)
        self.clock = StepClock()
        self.planned_rate: float | None = None
        self.eval_seconds = 0.0
        self.replans: list[tuple[int, int]] = []
        self.epoch, self.history, self.bad_epochs, self.seconds = 0, [], 0, 0.0
        self.best_rmse, self.best_epoch, self.smoothed = math.inf, 0, None
        self.best_state = self._state_copy()
        self.step_choice: StepChoice | None = None  # chosen (measured) at the first epoch, or restored

    @property
    def planned(self) -> int:
        """Epochs of the current plan."""
        return math.ceil(self.schedule.total / max(1, self.steps_per_epoch))

    def _state_copy(self) -> dict:
        return {k: v.detach().clone() for k, v in self.regressor.state_dict().items()}

    def restore(self, checkpoint: dict) -> None:
        """Continue from a checkpoint written by :meth:`save`."""
        self.regressor.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.schedule.load_state_dict(checkpoint["scheduler"])
        self.epoch, self.history = int(checkpoint["epoch"]), list(checkpoint["history"])
        self.bad_epochs, self.seconds = int(checkpoint["bad_epochs"]), float(checkpoint["seconds"])
        self.best_rmse, self.best_epoch = float(checkpoint["best_rmse"]), int(checkpoint["best_epoch"])
        self.smoothed = checkpoint.get("smoothed")
        self.best_state = checkpoint["best_model"]
        self.planned_rate = checkpoint.get("planned_rate")
        # the format the run started with (it changes the last bits); checkpoints without one ran fp32 NCHW
        record = checkpoint.get("step") or {}
        fmt = StepFormat.from_dict(record)
        reason = record.get("reason", fmt.describe()).removesuffix(KEPT) + KEPT
        work = {name: ms / 1000 for name, ms in (record.get("work_ms") or {}).items()}
        self._use_step(StepChoice(fmt, float(record.get("seconds_per_step") or 0.0), reason, work,
                                  record.get("bf16_difference")))

    def _use_step(self, choice: StepChoice) -> None:
        self.step_choice = choice
        self.batch_loss = replace(self.batch_loss, step=choice.format)

    def choose_step(self) -> StepChoice:
        """Measure the step formats of this plan's model (cached per model and size) and use the
        fastest; every rank takes rank 0's choice."""
        geometry = self.plan.preprocess
        choice = choose_step(self.plan.model_name, self.plan.loaded.kind, geometry.input_size, geometry.n_channels,
                             self.config.batch_size, precision=self.config.precision,
                             model_kwargs=self.plan.model_kwargs, device=self.ctx.device)
        if self.ctx.distributed:
            bf16 = ddp.broadcast_float(float(choice.format.precision == "bf16"), self.ctx) > 0.5
            last = ddp.broadcast_float(float(choice.format.channels_last), self.ctx) > 0.5
            choice = replace(choice, format=StepFormat("bf16" if bf16 else "fp32", last))
        self._use_step(choice)
        self.log(f"step: {choice.reason}")
        return choice

    def save(self) -> None:
        """Atomically write checkpoint.pt (everything to resume) then best.pt (rank 0 only)."""
        if not self.ctx.is_main or not self.checkpoints or self.run_dir is None:
            return
        save_checkpoint(self.run_dir / CHECKPOINT_FILE, {
            "format": RUN_FORMAT, "epoch": self.epoch, "planned_epochs": self.planned,
            "model": self.regressor.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.schedule.state_dict(), "history": self.history,
            "bad_epochs": self.bad_epochs, "seconds": self.seconds, "best_rmse": self.best_rmse,
            "best_epoch": self.best_epoch, "best_model": self.best_state, "smoothed": self.smoothed,
            "planned_rate": self.planned_rate,
            "step": None if self.step_choice is None else self.step_choice.record(),
        })
        save_checkpoint(self.run_dir / BEST_FILE, self.best_state)

    def _replan(self, *, force: bool = False) -> None:
        """Fit the schedule between now and the deadline from the steady step time."""
        if self.deadline is None:
            return
        rate = self.clock.seconds_per_step
        if rate is None:
            return
        rate = ddp.broadcast_float(rate, self.ctx)
        drifted = self.planned_rate is None or abs(rate - self.planned_rate) > REPLAN_DRIFT * self.planned_rate
        if not (force or drifted):
            return
        eval_seconds = self.eval_seconds if self.validate_every_epoch and len(self.val_rows) else 0.0
        left = self.deadline - time.perf_counter() - self._closing_seconds()
        total = self.schedule.step + steps_that_fit(left, rate, steps_per_epoch=self.steps_per_epoch,
                                                    eval_seconds_per_epoch=eval_seconds)
        total = min(total, self.max_steps)
        first = self.planned_rate is None
        self.planned_rate = rate
        if total != self.schedule.total:
            self.schedule.replan(total)
            self.replans.append((self.schedule.step, self.schedule.total))
            if first or force or self.validate_every_epoch:
                self.log(f"time plan: {rate * 1000:.0f} ms/step steady (warm-up excluded), "
                         f"{eval_seconds:.1f} s/validation: {self.schedule.total} steps "
                         f"(~{self.planned} epochs of {self.steps_per_epoch}) end at the deadline"
                         + ("" if first else f" (re-planned at step {self.schedule.step})"))

    @property
    def patience(self) -> int:
        """Epochs without improvement that stop the fit: ``config.patience``, or a quarter of the
        planned epochs when that is more (the annealing phase of a long one-cycle plan improves
        slowly before it improves most)."""
        return max(self.config.patience, math.ceil(PATIENCE_SHARE * self.planned))

    def _closing_seconds(self) -> float:
        """Time of the scoring after the fit (validation, then the caller's ``closing_rows``) at the
        measured speed of a validation pass."""
        if not len(self.val_rows):
            return 0.0
        return self.eval_seconds * (1.0 + self.closing_rows / len(self.val_rows))

    def _out_of_time(self) -> bool:
        """Whether the deadline is reached, counting the validation pass that closes the epoch and
        the scoring that follows the fit."""
        if self.deadline is None:
            return False
        return ddp.any_rank(time.perf_counter() + self._closing_seconds() >= self.deadline, self.ctx)

    def train_epoch(self) -> tuple[float, int, bool]:
        """One pass over this rank's shard (cut short by the deadline or the end of the schedule).

        Returns:
            (mean training loss over all ranks, optimizer steps taken by this rank, out of time).
        """
        torch.manual_seed(self.seed * 1_000_003 + self.epoch)  # dropout etc.
        generator = epoch_generator(self.seed, self.epoch)
        batches = epoch_batches(self.train_rows, self.config.batch_size, generator, self.ctx)
        self.net.train()
        total, count, steps, timed_out = 0.0, 0, 0, False
        shown = self.progress and self.ctx.is_main and sys.stderr.isatty()
        bar = tqdm(batches, desc=f"epoch {self.epoch + 1}/{self.planned}", leave=False, unit="batch",
                   disable=not shown, dynamic_ncols=True)
        last_val = self.history[-1]["val_rmse"] if self.history else None
        for rows in bar:
            if self.schedule.finished:
                break
            started = time.perf_counter()
            self.schedule.apply(self.optimizer)
            self.optimizer.zero_grad(set_to_none=True)
            loss = self.batch_loss(self.net, self.regressor, rows, generator)
            loss.backward()
            if self.config.grad_clip:
                nn.utils.clip_grad_norm_(self.regressor.parameters(), self.config.grad_clip)
            self.optimizer.step()
            self.schedule.advance()
            value = float(loss.detach())
            if not math.isfinite(value):
                raise EdgeregError(f"the training loss became {value} at epoch {self.epoch + 1}: the learning rate "
                                   f"{self.lr:g} is too high; run `edgereg lr-find` or pass a lower --lr")
            total, count, steps = total + value * len(rows), count + len(rows), steps + 1
            self.clock.record(time.perf_counter() - started)
            if self.planned_rate is None:
                self._replan()  # the first plan, as soon as the steady step time is known
            bar.set_postfix(loss=f"{value:.4g}", val_rmse="-" if last_val is None else f"{last_val:.4g}")
            if self._out_of_time():
                timed_out = True
                break
        bar.close()
        return ddp.mean_over_ranks(total / max(count, 1), self.ctx), steps, timed_out

    def _validate(self) -> float | None:
        started = time.perf_counter()
        value = validation_rmse(self.plan, self.regressor, self.val_rows, device=self.ctx.device,
                                batch_size=self.config.eval_batch)
        if value is not None:
            self.eval_seconds = time.perf_counter() - started
        return value

    def run(self) -> FitOutcome:
        """Train until the schedule ends, the deadline passes or early stopping; return the best weights."""
        stopped = "finished the planned schedule"
        if getattr(self.regressor.model, "needs_data_init", False) and self.epoch == 0:
            # a model that starts from a fitted answer (the hybrid's readout) keeps that start when no
            # epoch beats it on validation
            start = self._validate()
            if start is not None:
                self.best_rmse = self.smoothed = start
                self.best_state = self._state_copy()
        if self.step_choice is None:
            self.choose_step()
        while self.epoch < MAX_EPOCHS_WITH_BUDGET and not self.schedule.finished:
            started = time.perf_counter()
            train_loss, steps, timed_out = self.train_epoch()
            last = timed_out or self.schedule.finished
            val_rmse = self._validate() if (self.validate_every_epoch or last) else None
            self.epoch += 1
            seconds = time.perf_counter() - started
            self.seconds += seconds
            improved = False
            if val_rmse is None:
                self.best_epoch, self.best_state = 0, None
            else:
                self.smoothed = (val_rmse if self.smoothed is None
                                 else SMOOTHING * val_rmse + (1 - SMOOTHING) * self.smoothed)
                improved = self.smoothed < self.best_rmse * (1 - 1e-4)
                if improved:
                    self.best_rmse, self.best_epoch, self.best_state = self.smoothed, self.epoch, self._state_copy()
                    self.bad_epochs = 0
                elif self.schedule.step > self.schedule.peak_step:
                    self.bad_epochs += 1
            lr_now = self.optimizer.param_groups[0]["lr"]
            self.history.append({"epoch": self.epoch, "train_loss": train_loss, "val_rmse": val_rmse,
                                 "val_smoothed": self.smoothed if val_rmse is not None else None,
                                 "lr": lr_now, "steps": steps, "seconds": seconds})
            if self.validate_every_epoch:
                val_text = "-" if val_rmse is None else f"{val_rmse:.4g} (smoothed {self.smoothed:.4g})" + (
                    " *" if improved else "")
                self.log(f"epoch {self.epoch:>3}/{self.planned}  loss {train_loss:.4g}  val RMSE {val_text}  "
                         f"lr {lr_now:.2g}  {seconds:.1f}s")
            if self.best_state is None:
                self.best_state = self._state_copy()  # no validation: the latest weights
            self.save()
            if timed_out:
                stopped = "time budget reached"
                break
            if self.deadline is None and ddp.any_rank(self.bad_epochs >= self.patience, self.ctx):
                stopped = (f"early stopping: the smoothed validation RMSE did not improve for "
                           f"{self.patience} epochs after the learning-rate peak")
                break
            self._replan()
        self.regressor.load_state_dict(self.best_state)
        self.regressor.eval()
        return FitOutcome(self.regressor, self.history, self.best_epoch, self.planned, stopped, self.lr,
                          self.seconds, steps=self.schedule.step, planned_steps=self.schedule.total,
                          seconds_per_step=self.clock.seconds_per_step, peak_step=self.schedule.peak_step,
                          replans=tuple(self.replans), step=self.step_choice.record())


# ----------------------------------------------------------------------------------------------------
# Scoring the best weights.


def scored_rows(plan: FitPlan, regressor, images: np.ndarray, targets: np.ndarray, boxes: np.ndarray,
                groups: np.ndarray | None, *, device: str = "cpu", batch_size: int = 256):
    """Predictions and baseline predictions for some images, all in the user's units.

    Baselines (zero, mean, median, nearest training group) are fitted on ``plan.split.train``.

    Args:
        images: (N, H, W, 3) uint8 BGR as loaded; targets: (N, T) dataset units; boxes: (N, 4) crops.

    Returns:
        (y_true (N, T), y_pred (N, T), baselines {name: (N, T)}, groups) in user units.
    """
    loaded = plan.loaded
    dataset = loaded.dataset
    train = np.asarray(plan.split.train)
    train_groups = None if dataset.groups is None else np.asarray(dataset.groups)[train]
    train_features = None if train_groups is None else thumbnail_features(dataset.images[train])

    def user(values: np.ndarray) -> np.ndarray:
        values = np.asarray(values, dtype=np.float64)
        return uv_to_source_pixels(values, boxes) if target_kind(loaded.kind).xy_points else values

    raw_pred = predict(regressor, images, plan.preprocess, device=device, batch_size=batch_size)
    baselines = baseline_predictions(loaded.kind, dataset.targets[train], len(images), train_groups=train_groups,
                                     train_features=train_features,
                                     eval_features=thumbnail_features(images) if train_groups is not None else None)
    return user(targets), user(raw_pred), {key: user(pred) for key, pred in baselines.items()}, groups


def evaluate_fit(plan: FitPlan, regressor, *, device: str = "cpu", batch_size: int = 256) -> dict[str, SplitEvaluation]:
    """Score the best weights on val, test and seen-group rows, with baselines fitted on train."""
    loaded = plan.loaded
    dataset = loaded.dataset
    parts = {"val": plan.split.val, "test": plan.split.test, "seen": plan.seen}
    evaluations = {}
    for name, rows in parts.items():
        rows = np.asarray(rows, dtype=np.int64)
        if not len(rows):
            continue
        groups = None if dataset.groups is None else np.asarray(dataset.groups)[rows]
        true, pred, baselines, groups = scored_rows(plan, regressor, dataset.images[rows], dataset.targets[rows],
                                                    dataset.crop_boxes[rows], groups, device=device,
                                                    batch_size=batch_size)
        evaluations[name] = evaluate_split(name, loaded.kind, dataset.names, true, pred, baselines, groups=groups)
    return evaluations


def evaluate_external(plan: FitPlan, regressor, external, *, device: str = "cpu",
                      batch_size: int = 256) -> SplitEvaluation:
    """Score ``--test DIR`` (a Dataset loaded like the training data) as the "test" split."""
    true, pred, baselines, groups = scored_rows(plan, regressor, external.images, external.targets,
                                                external.crop_boxes, external.groups, device=device,
                                                batch_size=batch_size)
    return evaluate_split("test", plan.loaded.kind, plan.loaded.dataset.names, true, pred, baselines, groups=groups)


def merge_scored(parts: list[tuple]) -> tuple:
    """Concatenate several :func:`scored_rows` results (the folds of an out-of-fold score)."""
    true = np.concatenate([p[0] for p in parts])
    pred = np.concatenate([p[1] for p in parts])
    keys = [key for key in parts[0][2] if all(key in p[2] for p in parts)]  # the first part's order
    baselines = ordered_baselines({key: np.concatenate([p[2][key] for p in parts]) for key in keys})
    groups = None if parts[0][3] is None else np.concatenate([np.asarray(p[3]) for p in parts])
    return true, pred, baselines, groups
