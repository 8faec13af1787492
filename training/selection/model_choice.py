"""Choosing what is fitted: the learning rate (``--lr auto``), the race of models, the block
readouts scored on the validation design, and the hybrid of the race's winner with a readout."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from edgereg.json_values import json_safe
from edgereg.training import ddp
from edgereg.training.blocks import race as readouts
from edgereg.training.budget import BudgetClock, eval_reserve
from edgereg.training.config import DEFAULT_LR, TrainConfig
from edgereg.training.fitting.fit import find_lr
from edgereg.training.models import default_model
from edgereg.training.planning.fit_plan import FitPlan, make_plan, plan_basis
from edgereg.training.planning.input_size import seconds_per_step
from edgereg.training.planning.loading import LoadedData
from edgereg.training.planning.validation import ValidationPlan
from edgereg.training.run import write_json
from edgereg.training.selection.lr_find import plot_lr_find
from edgereg.training.selection.race import (
    MIN_RACE_STEPS,
    RACE_SHARE,
    SCORING_SHARE,
    Candidate,
    affordable,
    race_candidates,
    race_record,
    run_race,
)
from edgereg.training.targets.kind_training import kind_training


def auto_lr(plan: FitPlan, config: TrainConfig, run_dir: Path, ctx: ddp.DistContext, *,
            log: Callable[[str], None]) -> float:
    """``--lr auto``: rank 0 runs the range test (plot in RUN/lr_find.png); every rank gets its answer."""
    lr = math.nan
    if ctx.is_main:
        result = find_lr(plan, config, device=ctx.device)
        plot_lr_find(result, run_dir / "lr_find.png")
        write_json(run_dir / "lr_find.json", json_safe(result.to_dict()))
        lr = result.suggestion
        log(f"lr auto: {lr:.3g} (steepest descent of the LR range test; plot {run_dir / 'lr_find.png'})")
    return ddp.broadcast_float(lr, ctx)



def choose_model_and_lr(loaded: LoadedData, config: TrainConfig, vplan: ValidationPlan, reference: dict | None,
                        ctx: ddp.DistContext, clock: BudgetClock, run_dir: Path, *,
                        log: Callable[[str], None]) -> tuple[Candidate, dict]:
    """The race (or the fixed choice) and its metrics.json record."""
    kind = loaded.kind
    fixed_model = config.model not in (None, "auto")
    basis = None  # the validation split's plan basis, shared by the LR range test and the race
    if config.lr == "auto":
        basis = plan_basis(loaded, config, vplan.split, reference_region=reference, seen_frac=0.0)
        lr = auto_lr(basis.plan(), config, run_dir, ctx, log=log)
        config = replace(config, lr=lr)
    candidates = race_candidates(kind, config, invariant_ok=kind_training(kind).invariant,
                                 input_size=loaded.geometry.input_size)
    if len(candidates) == 1:
        winner = candidates[0]
        return winner, race_record([], winner, "one candidate: --model and --lr given")
    if clock.budget is None:
        winner = Candidate(config.model if fixed_model else default_model(kind),
                           float(config.lr) if isinstance(config.lr, (int, float)) else DEFAULT_LR)
        reason = "no --time-budget to race in: the kind's default model at the default learning rate"
        log(f"model: {winner.label()} ({reason})")
        return winner, race_record([], winner, reason)
    seconds = RACE_SHARE * max(0.0, clock.left() - eval_reserve(clock.budget))
    # what one rung-0 candidate needs, measured on this machine: MIN_RACE_STEPS steps of the first
    # candidate and a validation pass (a forward pass costs about a third of a training step)
    step = seconds_per_step(candidates[0].model, kind, loaded.geometry.input_size, loaded.geometry.n_channels,
                            config.batch_size, precision=config.precision)
    scoring = step / 3 * math.ceil(len(vplan.split.val) / config.batch_size)
    racing = affordable(candidates, seconds, min_rung=(MIN_RACE_STEPS * step + scoring) / (1 - SCORING_SHARE))
    if len(racing) == 1:
        reason = f"the budget leaves {seconds:.0f} s to race: too little for two candidates"
        log(f"model: {racing[0].label()} ({reason})")
        return racing[0], race_record([], racing[0], reason)
    log(f"race: {len(racing)} candidates ({', '.join(c.label() for c in racing)}) in ~{seconds:.0f} s on validation")
    if basis is None:
        basis = plan_basis(loaded, config, vplan.split, reference_region=reference, seen_frac=0.0)
    winner, entries = run_race(basis, racing, config, ctx, seconds=seconds, log=log)
    last = [e for e in entries if e.rung == max(x.rung for x in entries)]
    best = next(e for e in last if e.model == winner.model and e.lr == winner.lr)
    reason = (f"won the race: validation RMSE {best.val_rmse:.4g} ± {best.val_se:.2g} in rung {best.rung} "
              f"against {len(racing) - 1} other candidate(s) (ties within one standard error go to the simpler "
              f"model and the middle learning rate)")
    log(f"model: {winner.label()} ({reason})")
    return winner, race_record(entries, winner, reason)



HYBRID_GAIN = 0.7  # a readout joins the network (hybrid) when its RMSE is below this share of the targets' spread


def hybrid_network(race: readouts.ReadoutRace, winner: Candidate, kind: str, *,
                   log: Callable[[str], None]) -> dict | None:
    """The hybrid's options (trunk = the race's winner, the best linear readout) or None: the network
    alone, when no linear readout explains much of the targets or the kind reads positions."""
    from edgereg.core.kinds import target_kind

    linear = [s for s in race.scores if not s.hidden and np.isfinite(s.val_rmse)]
    if not linear or target_kind(kind).xy_points or winner.model == readouts.MODEL_NAME:
        return None
    best = min(linear, key=lambda s: s.val_rmse)
    true, _ = race.predictions[best.label()]
    spread = float(np.sqrt(np.mean((true - true.mean(axis=0)) ** 2)))
    if not best.val_rmse < HYBRID_GAIN * spread:
        log(f"network: {winner.model} alone (the best linear readout, {best.val_rmse:.4g}, explains too little of "
            f"the targets' spread {spread:.4g})")
        return None
    log(f"network: hybrid of {winner.model} and {best.label()} (the network starts at the readout's answer and "
        f"learns what it misses)")
    return {"trunk": winner.model, "blocks": best.blocks, "quadratic": best.quadratic}


def score_readouts(loaded: LoadedData, config: TrainConfig, vplan: ValidationPlan, reference: dict | None, *,
                   log: Callable[[str], None]) -> readouts.ReadoutRace:
    """The block readouts on the validation design (none when another model was asked for by name)."""
    if config.model not in (None, "auto", readouts.MODEL_NAME):
        return readouts.ReadoutRace((), {})
    candidates = readouts.CANDIDATES
    if config.model == readouts.MODEL_NAME:
        options = dict(config.model_kwargs)
        candidates = ((options.get("blocks", readouts.COMPACT_SET + ",pixels"), int(options.get("hidden", 0)),
                       str(options.get("quadratic", False)).lower() in ("1", "true", "yes")),)
    splits = list(vplan.folds) if vplan.mode == "kfold" else [vplan.split]
    if not all(len(split.val) for split in splits):
        return readouts.ReadoutRace((), {})
    make_plans = lambda: [make_plan(loaded, config, split, model_name=readouts.MODEL_NAME,  # noqa: E731
                                    reference_region=reference, seen_frac=0.0) for split in splits]
    return readouts.race_readouts(make_plans, kind=loaded.kind, groups=loaded.dataset.groups, seed=config.seed,
                                  log=log, candidates=candidates)

