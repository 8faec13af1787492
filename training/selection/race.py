"""``--model auto``: a successive-halving race of registry models and learning rates on validation.

Which architecture and which peak learning rate suit a dataset is not known from its target kind
(issue 9: one model at one learning rate lost to classical readers on every task class). With a
time budget, the first part of it (:data:`RACE_SHARE`) races the candidates:

* candidates: ``cnn_small`` and ``resnet_tiny`` for every kind but coords (plus the seed paper's
  ``base_seed004`` for scalar/vector inputs of at most 32 px, whose flatten head reads every pixel
  linearly: pixel statistics of patches); ``p4m_small`` as well
  when the targets are declared rotation-invariant (``--invariance d4|rotation``); the
  full-resolution ``heatmap_small`` alone for coords (its soft-argmax is translation-equivariant,
  which is what finds an object in a part of the frame training never saw); each at peak learning
  rates 1e-3, 3e-3 and 1e-2 (one rate when ``--lr`` is given);
* successive halving (Jamieson & Talwalkar 2016): rung 0 trains every candidate from scratch for the
  same wall-clock time with a complete one-cycle schedule, the best third (by validation RMSE)
  goes on to a rung with three times the time, until one is left. Equal *time*, not equal steps:
  a slower model must earn its cost;
* a tie (difference within the validation RMSE's standard error) goes to the candidate listed
  first (the simpler model, then the middle learning rate), so noise does not pick the exotic one.

The winner is then trained from scratch for the rest of the budget. Every rung's scores go to
metrics.json (``race``) and the report plot.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import numpy as np

from edgereg.core.kinds import target_kind
from edgereg.data.metrics import rmse_standard_error, sample_errors
from edgereg.training import ddp
from edgereg.training.config import TrainConfig
from edgereg.training.planning.fit_plan import FitPlan, PlanBasis
from edgereg.training.targets.kind_training import kind_training

RACE_SHARE = 0.2  # share of the budget left after loading that the race may use
SCORING_SHARE = 0.15  # share of a candidate's time kept for its validation pass
RACE_LRS = (3e-3, 1e-3, 1e-2)  # middle first: ties go to it
ETA = 3  # successive halving keeps the best 1/ETA of each rung
MIN_RUNG_SECONDS = 6.0  # a rung-0 candidate gets at least this much time, else fewer candidates race


@dataclass(frozen=True)
class Candidate:
    model: str
    lr: float

    def label(self) -> str:
        return f"{self.model} lr {self.lr:.0e}"


@dataclass(frozen=True)
class RaceEntry:
    """One candidate's result in one rung."""

    model: str
    lr: float
    rung: int
    seconds: float  # wall-clock time it trained
    steps: int
    val_rmse: float
    val_se: float
    advanced: bool  # went on to the next rung (or won the last)


SMALL_INPUT = 32  # inputs no larger than this also race the seed paper's Base (flatten head, whole-frame stats)


def race_candidates(kind: str, config: TrainConfig, *, invariant_ok: bool,
                    input_size: tuple[int, int] | None = None) -> list[Candidate]:
    """The (model, learning rate) pairs to race, in tie-break order."""
    if config.model not in (None, "auto"):
        models = [config.model]
    elif target_kind(kind).xy_points:
        models = ["heatmap_small"]
    else:
        models = ["cnn_small", "resnet_tiny"]
        if input_size is not None and max(input_size) <= SMALL_INPUT:
            # small whole-frame patches: the seed paper's Base, a linear path to every pixel; second,
            # so that a short race drops the deeper resnet_tiny before it
            models[1:1] = kind_training(kind).small_input_models
        if config.invariance in ("d4", "rotation") and invariant_ok:
            models.append("p4m_small")
    lrs = (float(config.lr),) if isinstance(config.lr, (int, float)) else RACE_LRS
    return [Candidate(m, lr) for m in models for lr in lrs]


def rung_plan(n: int, seconds: float) -> list[tuple[int, float]]:
    """(candidates, seconds each) per rung so that the rungs together take ``seconds``."""
    counts = [n]
    while counts[-1] > 1:
        counts.append(max(1, math.ceil(counts[-1] / ETA)))
    counts = counts[:-1] if len(counts) > 1 else counts  # the last rung's single survivor is the winner
    weights = [c * ETA ** i for i, c in enumerate(counts)]
    unit = seconds / sum(weights)
    return [(c, unit * ETA ** i) for i, c in enumerate(counts)]


# A rung-0 candidate must get at least this many optimizer steps. A shorter race ranks models by
# how fast they start, not where they end: on the demo's synthetic assay (64 px), resnet_tiny led
# cnn_small after ~200 steps (3.7 vs 5.6 mg/L on validation) and trailed it after 1,300 (3.2 vs
# 2.3); with fewer steps than this to give, fewer candidates race, or none.
MIN_RACE_STEPS = 300


def affordable(candidates: list[Candidate], seconds: float, *, min_rung: float = MIN_RUNG_SECONDS) -> list[Candidate]:
    """Drop candidates (the outer learning rates first, then the later models) until rung 0 gives
    each at least ``min_rung`` seconds (MIN_RUNG_SECONDS, or the measured time of MIN_RACE_STEPS
    steps and a validation pass)."""
    chosen = list(candidates)
    while len(chosen) > 1 and rung_plan(len(chosen), seconds)[0][1] < max(min_rung, MIN_RUNG_SECONDS):
        lrs = sorted({c.lr for c in chosen}, key=lambda lr: RACE_LRS.index(lr) if lr in RACE_LRS else 0)
        if len(lrs) > 1:
            drop = lrs[-1]
            chosen = [c for c in chosen if c.lr != drop]
        else:
            chosen = chosen[:-1]
    return chosen


def score(plan, regressor, *, device: str, batch_size: int) -> tuple[float, float]:
    """(RMSE, its standard error) of ``regressor`` on ``plan.split.val`` in the user's units."""
    from edgereg.training.fitting.fit import predict, to_user_units

    loaded = plan.loaded
    rows = np.asarray(plan.split.val)
    pred = to_user_units(loaded, predict(regressor, loaded.dataset.images[rows], plan.preprocess, device=device,
                                         batch_size=batch_size), rows)
    true = to_user_units(loaded, loaded.dataset.targets[rows], rows)
    per_sample = sample_errors(loaded.kind, true, pred)
    groups = None if loaded.dataset.groups is None else np.asarray(loaded.dataset.groups)[rows]
    return float(np.sqrt(per_sample.mean())), rmse_standard_error(per_sample, groups)


def race_plans(basis: PlanBasis, candidates: list[Candidate]) -> dict[str, FitPlan]:
    """{model name: its FitPlan} for every model among ``candidates``, all derived from one basis
    (the normalization and reference statistics are measured once per race, not per candidate)."""
    return {model: basis.plan(model) for model in dict.fromkeys(c.model for c in candidates)}


def run_race(basis: PlanBasis, candidates: list[Candidate], config: TrainConfig,
             ctx: ddp.DistContext, *, seconds: float, log: Callable[[str], None]) -> tuple[Candidate, list[RaceEntry]]:
    """Successive halving over ``candidates`` in about ``seconds`` of wall-clock time.

    Args:
        basis: the plan basis of the validation split the race scores on (every candidate's plan
            is derived from it).
        candidates: in tie-break order.

    Returns:
        (the winner, every rung's entries).
    """
    from edgereg.training.fitting.fit import Fitter

    alive = list(candidates)
    entries: list[RaceEntry] = []
    plans = race_plans(basis, candidates)
    quiet = lambda message: None  # noqa: E731
    for rung, (count, each) in enumerate(rung_plan(len(alive), seconds)):
        results = []
        for candidate in alive:
            plan = plans[candidate.model]
            started = time.perf_counter()
            fitter = Fitter(plan, replace(config, patience=10 ** 9), None, ctx, lr=candidate.lr, progress=False,
                            log=quiet, deadline=started + (1 - SCORING_SHARE) * each, checkpoints=False,
                            validate_every_epoch=False)
            outcome = fitter.run()
            rmse, se = score(plan, outcome.regressor, device=ctx.device, batch_size=config.eval_batch)
            if not math.isfinite(rmse):
                rmse = math.inf
            results.append((candidate, time.perf_counter() - started, outcome.steps, rmse, se))
        best_rmse = min(r[3] for r in results)
        best_se = next(r[4] for r in results if r[3] == best_rmse)
        keep = max(1, math.ceil(len(results) / ETA)) if rung < len(rung_plan(len(candidates), seconds)) - 1 else 1
        # rank by RMSE, but a candidate within one standard error of the best keeps its tie-break place
        ranked = sorted(results, key=lambda r: (r[3] > best_rmse + best_se, r[3]))
        tied = [r for r in results if r[3] <= best_rmse + best_se]
        if keep == 1 and tied:
            ranked = [tied[0]] + [r for r in ranked if r is not tied[0]]
        advanced = {id(r[0]) for r in ranked[:keep]}
        for candidate, took, steps, rmse, se in results:
            entries.append(RaceEntry(candidate.model, candidate.lr, rung, round(took, 2), steps, rmse, se,
                                     id(candidate) in advanced))
        text = "; ".join(f"{c.label()}: {rmse:.4g} ± {se:.2g} ({steps} steps)" for c, _, steps, rmse, se in results)
        log(f"race rung {rung} ({count} x {each:.0f} s): {text}")
        alive = [r[0] for r in ranked[:keep]]
        if len(alive) == 1:
            break
    winner = alive[0]
    return winner, entries


def race_record(entries: list[RaceEntry], winner: Candidate | None, reason: str) -> dict:
    """The ``race`` entry of metrics.json."""
    return {"winner": None if winner is None else asdict(winner), "reason": reason,
            "entries": [asdict(e) for e in entries]}
