"""The trainer: dataset -> split -> epochs of augmented mini-batches -> checkpoints -> report.

Flow of one run (``edgereg train DATA --out RUN`` calls :func:`train`):

1. :func:`~edgereg.training.plan.load_data` decodes, crops and resizes every image once into one
   ``(N, H, W, 3) uint8`` array (disk-cached by the data module), with per-kind defaults for size,
   channels and crop.
2. The split (random, whole groups held out, or K folds) is made once and stored in run.json; the
   normalization statistics and the target standardization come from the train split only.
3. Each epoch shuffles the train rows with a generator seeded by ``(seed, epoch)``, so a resumed run
   replays exactly; each batch goes uint8 -> float -> :func:`~edgereg.training.augment.augment_batch`
   -> :func:`~edgereg.training.augment.to_model_input` -> ``Regressor.forward_raw`` -> loss on the
   encoded targets. AdamW with a one-cycle (or cosine) schedule per step.
4. Validation after every epoch preprocesses with :func:`edgereg.preprocess.preprocess_batch` itself
   and compares ``Regressor.forward`` in physical units, so training and deployment never differ;
   early stopping and the best weights follow the validation RMSE (never the test split).
5. A checkpoint is written atomically after every epoch; ``resume=True`` continues from it.
6. The best weights are scored on validation, test and (group splits) unseen photos of training
   groups, against baselines; metrics.json, report.png and a printed summary follow.

``folds=K`` trains K runs (``RUN/fold0`` ...) whose test parts partition the data and reports their
test metrics as mean ± std. The final model in ``RUN/`` is the fold with the best *validation* RMSE
(copied there; no refit): picking by validation keeps the test parts untouched by selection, and a
refit would be a model no held-out number describes.

What lives where:

* :mod:`edgereg.training.config`: :class:`~edgereg.training.config.TrainConfig` and its defaults.
* :mod:`edgereg.training.plan`: steps 1-2, preparing a fit (probe, load, split, normalization,
  target transform, model choice) into a :class:`~edgereg.training.plan.FitPlan`.
* :mod:`edgereg.training.fit`: steps 3-5 and the scoring of step 6 (batches, loss, the
  :class:`~edgereg.training.fit.Fitter` epoch loop, LR range test, sanity check, evaluation).
* this module: the orchestration (one fit, its report and run.json, K folds, :func:`train`).
"""

from __future__ import annotations

import contextlib
import datetime
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

import edgereg
from edgereg.data.metrics import compute_metrics, rmse_standard_error, sample_errors
from edgereg.errors import EdgeregError
from edgereg.training import ddp
from edgereg.training.blocks import race as readouts
from edgereg.training.config import DEFAULT_LR, TrainConfig
from edgereg.training.fit import (
    FitOutcome,
    Fitter,
    SanityResult,
    evaluate_external,
    evaluate_fit,
    find_lr,
    merge_scored,
    sanity_check,
    scored_rows,
)
from edgereg.training.kind_training import kind_training
from edgereg.training.losses import default_loss, make_loss
from edgereg.training.lr_find import plot_lr_find
from edgereg.training.models import default_model
from edgereg.training.plan import (
    FitPlan,
    LoadedData,
    ValidationPlan,
    load_data,
    load_external_test,
    make_plan,
    plan_validation,
    resolve_reference,
    run_record_model_part,
    seconds_per_step,
)
from edgereg.training.race import (
    MIN_RACE_STEPS,
    RACE_SHARE,
    SCORING_SHARE,
    Candidate,
    affordable,
    race_candidates,
    race_record,
    run_race,
)
from edgereg.training.reference import describe_region
from edgereg.training.report import SplitEvaluation, build_metrics, evaluate_split, format_summary, plot_report
from edgereg.training.run import (
    BEST_FILE,
    CHECKPOINT_FILE,
    METRICS_FILE,
    REPORT_FILE,
    RUN_FILE,
    RUN_FORMAT,
    atomic_write_bytes,
    failure_reason,
    json_ready,
    load_checkpoint,
    mark_failed,
    read_json,
    save_checkpoint,
    write_json,
)
from edgereg.training.splits import Split, kfold

# ----------------------------------------------------------------------------------------------------
# The report of a fit, and the run record.


def report_fit(plan: FitPlan, outcome: FitOutcome, evaluations: dict[str, SplitEvaluation], run_dir: Path, *,
               sanity: SanityResult | None = None, facts: dict | None = None,
               budget_line: Callable[[], str] | None = None) -> tuple[dict, list[str], str]:
    """Write metrics.json and report.png for one fit.

    Args:
        facts: further metrics.json entries (validation, race, budget, decisions).
        budget_line: called last, for the summary's line on the time budget.

    Returns:
        (metrics dict, warnings, summary text).
    """
    loaded = plan.loaded
    facts = dict(facts or {})
    facts.update({
        "split": {"mode": plan.split.mode, "train": len(plan.split.train), "val": len(plan.split.val),
                  "test": len(plan.split.test), "seen": len(plan.seen)},
        "training": {"epochs": len(outcome.history), "planned_epochs": outcome.planned_epochs,
                     "best_epoch": outcome.best_epoch, "stopped": outcome.stopped, "lr": outcome.lr,
                     "seconds": outcome.seconds, "steps": outcome.steps, "planned_steps": outcome.planned_steps,
                     "seconds_per_step": outcome.seconds_per_step, "peak_step": outcome.peak_step,
                     "replans": [list(r) for r in outcome.replans], "history": outcome.history,
                     "step": outcome.step},
        "sanity": None if sanity is None else asdict(sanity),
        "augment": plan.augment.describe(),
        "reference": plan.reference,
        "model": {"name": plan.model_name, "parameters": int(sum(p.numel() for p in outcome.regressor.parameters()))},
    })
    metrics, warnings = build_metrics(loaded.kind, loaded.dataset.names, loaded.units, evaluations, facts=facts)
    warnings += validation_warnings(evaluations, facts.get("validation", {}))
    metrics["warnings"] = warnings
    shown = evaluations.get("test") or evaluations.get("val")
    trained = (f"trained {len(outcome.history)} epochs / {outcome.steps} steps (best {outcome.best_epoch or 'last'}; "
               f"{outcome.stopped}) in {outcome.seconds:.0f} s, model {plan.model_name}, lr {outcome.lr:.2g}")
    validation = facts.get("validation") or {}
    val = evaluations.get("val")
    if val is not None and validation.get("val_se") is not None:
        trained += (f"\nvalidation ({validation.get('scored', 'the final model')}): RMSE {val.metrics['rmse']:.4g} "
                    f"± {validation['val_se']:.2g} (standard error)")
    if budget_line is not None:
        trained += "\n" + budget_line()
    metrics["budget"] = facts.get("budget_record", metrics.get("budget"))
    metrics = json_ready(metrics)
    write_json(run_dir / METRICS_FILE, metrics)
    look_at = run_dir / METRICS_FILE
    if shown is not None:
        look_at = plot_report(run_dir / REPORT_FILE, kind=loaded.kind, names=loaded.dataset.names,
                              units=loaded.units, history=outcome.history, evaluation=shown,
                              race=(facts.get("race") or {}).get("entries"))
    summary = format_summary(loaded.dataset.names, loaded.units, evaluations, warnings, trained=trained,
                             look_at=look_at)
    return metrics, warnings, summary


SMALL_VAL_ROWS = 30  # fewer validation rows than this cannot choose epochs or models
SMALL_VAL_GROUPS = 3
WIDE_SE = 0.2  # a standard error above this share of the RMSE makes choices on validation a coin toss


def validation_warnings(evaluations: dict[str, SplitEvaluation], validation: dict) -> list[str]:
    """Warnings when the validation score is too uncertain to choose epochs or models."""
    val = evaluations.get("val")
    if val is None:
        return []
    n = len(val.y_true)
    groups = None if val.groups is None else len(np.unique(np.asarray(val.groups).astype(str)))
    se = validation.get("val_se")
    rmse = val.metrics["rmse"]
    problems = []
    if n < SMALL_VAL_ROWS:
        problems.append(f"only {n} rows")
    if groups is not None and groups < SMALL_VAL_GROUPS:
        problems.append(f"only {groups} group(s)")
    if se is not None and rmse > 0 and se > WIDE_SE * rmse:
        problems.append(f"standard error {se:.3g} is {se / rmse:.0%} of the RMSE")
    if not problems:
        return []
    return [f"VALIDATION TOO SMALL to choose epochs or models reliably ({', '.join(problems)}): add labelled "
            "images or groups, or pass --test DIR to measure on a separate set"]


def run_record(plan: FitPlan, config: TrainConfig, *, status: str, metrics: dict | None = None,
               lr: float | None = None, fold: int | None = None, choice: dict | None = None,
               validation_split=None) -> dict:
    """The run.json contents (see :mod:`edgereg.training.run`).

    ``validation_split``: a refitted model's record keeps the split it was validated on (export
    calibrates on its train part and gates int8 against fp32 on its val/test parts; the refit saw
    those rows too, which the gate's fp32-vs-int8 comparison does not mind) and lists the rows the
    refit was trained on under ``refit_rows``.
    """
    dataset = plan.loaded.dataset
    transform = plan.transform
    ranges = list(zip(transform.lo, transform.hi)) if kind_training(plan.loaded.kind).bounded else None
    summary = None
    if metrics is not None:
        summary = {name: {"rmse": metrics[name]["rmse"], "mae": metrics[name]["mae"], "n": metrics[name]["n"]}
                   for name in ("val", "test") if name in metrics}
        if "cv" in metrics:
            summary["cv"] = metrics["cv"]
    return json_ready({
        "format": RUN_FORMAT, "status": status, "fold": fold,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "dataset": {"root": str(plan.loaded.root.resolve()), "fingerprint": dataset.fingerprint,
                    "n": len(dataset), "skipped": len(dataset.skipped), "strict": config.strict,
                    "targets": config.targets, "kind": config.kind, "loaded_with": asdict(plan.loaded.geometry)},
        "targets": list(dataset.names), "units": list(plan.loaded.units),
        "range": None if ranges is None else [list(r) for r in ranges],
        **run_record_model_part(plan),
        "preprocess": asdict(plan.preprocess), "tta": config.tta, "augment": asdict(plan.augment),
        "split": ({**plan.split.to_dict(), "seen": plan.seen} if validation_split is None
                  else {**validation_split.to_dict(), "seen": []}),
        "refit_rows": None if validation_split is None else plan.split.train,
        "seed": config.seed, "lr": lr, "config": config.to_dict(), "choice": choice,
        "versions": {"edgereg": edgereg.__version__, "torch": torch.__version__, "numpy": np.__version__},
        "metrics": summary,
        "step": None if metrics is None else (metrics.get("training") or {}).get("step"),
    })


# ----------------------------------------------------------------------------------------------------
# Entry points.


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` returns (the files are in ``run_dir``)."""

    run_dir: Path
    metrics: dict  # the contents of metrics.json
    warnings: tuple[str, ...]  # collapse / memorisation warnings, also in metrics.json
    summary: str  # the printed summary


def fit_one(loaded: LoadedData, config: TrainConfig, split, run_dir: Path, ctx: ddp.DistContext, *,
            resume: bool, progress: bool, log: Callable[[str], None], fold: int | None = None) -> TrainResult:
    """Plan, fit (or resume), evaluate and report one split into ``run_dir`` (the K-fold path of
    ``--folds``: the kind's default model, no race, no time budget per fold)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    existing = read_json(run_dir / RUN_FILE) if (run_dir / RUN_FILE).exists() else None
    if resume and existing is not None and existing.get("status") == "done":
        log(f"{run_dir} has finished training; nothing to resume (see {run_dir / METRICS_FILE})")
        metrics = read_json(run_dir / METRICS_FILE)
        return TrainResult(run_dir, metrics, tuple(metrics.get("warnings", ())), "")
    plan = make_plan(loaded, config, split)
    lr = float(existing["lr"]) if existing is not None and resume and existing.get("lr") is not None else (
        auto_lr(plan, config, run_dir, ctx, log=log) if config.lr == "auto" else float(config.lr or DEFAULT_LR))
    outcome, sanity = run_fit(plan, config, run_dir, ctx, lr=lr, resume=resume, progress=progress, log=log,
                              record=lambda status, metrics=None: run_record(plan, config, status=status,
                                                                             metrics=metrics, lr=lr, fold=fold))
    if not ctx.is_main:
        return TrainResult(run_dir, {}, (), "")
    evaluations = evaluate_fit(plan, outcome.regressor, device=ctx.device, batch_size=config.eval_batch)
    metrics, warnings, summary = report_fit(plan, outcome, evaluations, run_dir, sanity=sanity)
    write_json(run_dir / RUN_FILE, run_record(plan, config, status="done", metrics=metrics, lr=lr, fold=fold))
    return TrainResult(run_dir, metrics, tuple(warnings), summary)


def run_fit(plan: FitPlan, config: TrainConfig, run_dir: Path | None, ctx: ddp.DistContext, *, lr: float,
            resume: bool, progress: bool, log: Callable[[str], None], deadline: float | None = None,
            record: Callable | None = None, quiet: bool = False, closing_rows: int | None = None
            ) -> tuple[FitOutcome, SanityResult | None]:
    """The optimisation of one plan: optional sanity check, Fitter, checkpoints (when ``run_dir``).

    ``closing_rows``: rows scored after the fit besides validation (default: the plan's test and
    seen rows); the deadline keeps time for them.
    """
    make_loss(plan.loss_name, plan.loaded.kind)  # a bad --loss fails here, before any work
    checkpoint = None
    if resume and run_dir is not None and (run_dir / CHECKPOINT_FILE).exists():
        checkpoint = load_checkpoint(run_dir / CHECKPOINT_FILE, map_location=ctx.device)
    sanity = None
    if config.sanity and checkpoint is None:
        sanity = sanity_check(plan, config, device=ctx.device)
        log(sanity.describe())
        if not sanity.passed:
            raise EdgeregError(f"{sanity.describe()}: the model cannot fit even one batch; check that the labels "
                               "match the images, the crop keeps the signal (--crop/--size/--channels), "
                               "and the learning rate (`edgereg lr-find`)")
    if checkpoint is not None:
        deadline = None  # a resumed fit finishes the schedule it had planned, step for step
    if closing_rows is None:
        closing_rows = len(plan.split.test) + len(plan.seen)
    fitter = Fitter(plan, config, run_dir, ctx, lr=lr, progress=progress, log=(lambda m: None) if quiet else log,
                    deadline=deadline, checkpoints=run_dir is not None, closing_rows=closing_rows)
    if ctx.is_main and record is not None and checkpoint is None:
        write_json(run_dir / RUN_FILE, record("training"))
    ddp.barrier(ctx)
    parameters = sum(p.numel() for p in fitter.regressor.parameters())
    loss = plan.loss_name or default_loss(plan.loaded.kind)
    length = ("until the time budget's deadline" if deadline is not None
              else f"{fitter.planned} epochs x {fitter.steps_per_epoch} steps")
    if not quiet:
        log(f"model {plan.model_name} ({parameters:,} parameters), loss {loss}, {length} of {config.batch_size}, "
            f"lr {lr:.2g} {config.schedule}; augment {plan.augment.describe()}"
            + (f"; reference {describe_region(plan.reference)}" if plan.reference else ""))
    if checkpoint is not None:
        fitter.restore(checkpoint)
        log(f"resuming {run_dir} after epoch {fitter.epoch}/{fitter.planned}")
    return fitter.run(), sanity


def auto_lr(plan: FitPlan, config: TrainConfig, run_dir: Path, ctx: ddp.DistContext, *,
            log: Callable[[str], None]) -> float:
    """``--lr auto``: rank 0 runs the range test (plot in RUN/lr_find.png); every rank gets its answer."""
    lr = math.nan
    if ctx.is_main:
        result = find_lr(plan, config, device=ctx.device)
        plot_lr_find(result, run_dir / "lr_find.png")
        write_json(run_dir / "lr_find.json", json_ready(result.to_dict()))
        lr = result.suggestion
        log(f"lr auto: {lr:.3g} (steepest descent of the LR range test; plot {run_dir / 'lr_find.png'})")
    return ddp.broadcast_float(lr, ctx)


def aggregate_folds(results: list[TrainResult], names) -> dict:
    """Mean ± std over folds of the test metrics (overall and per target)."""
    tests = [r.metrics["test"] for r in results if "test" in r.metrics]

    def stats(values):
        values = np.asarray([v for v in values if v is not None], dtype=np.float64)
        return {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0}

    if not tests:
        return {}
    return {
        "folds": len(tests),
        "rmse": stats([t["rmse"] for t in tests]), "mae": stats([t["mae"] for t in tests]),
        "targets": {n: {key: stats([t["targets"][n][key] for t in tests]) for key in ("rmse", "mae", "r2")}
                    for n in names},
    }


def train_folds(loaded: LoadedData, config: TrainConfig, run_dir: Path, ctx: ddp.DistContext, *,
                resume: bool, progress: bool, log: Callable[[str], None]) -> TrainResult:
    """K-fold cross-validation; the final model is the fold with the best validation RMSE."""
    dataset = loaded.dataset
    groups = dataset.groups if config.split in ("auto", "group") else None
    results = []
    for k, split in enumerate(kfold(len(dataset.targets), config.folds, groups=groups, seed=config.seed,
                                    val_frac=config.val_frac)):
        log(f"== fold {k + 1}/{config.folds}")
        results.append(fit_one(loaded, config, split, run_dir / f"fold{k}", ctx, resume=resume,
                               progress=progress, log=log, fold=k))
    if not ctx.is_main:
        return results[0]
    chosen = int(np.argmin([r.metrics.get("val", {}).get("rmse", math.inf) for r in results]))
    source = results[chosen].run_dir
    cv = aggregate_folds(results, dataset.names)
    metrics = {**results[chosen].metrics, "cv": cv, "chosen_fold": chosen,
               "fold_metrics": [{"fold": k, "val_rmse": r.metrics.get("val", {}).get("rmse"),
                                 "test_rmse": r.metrics.get("test", {}).get("rmse")} for k, r in enumerate(results)]}
    record = read_json(source / RUN_FILE)
    record["folds"] = {"k": config.folds, "chosen": chosen, "dirs": [f"fold{k}" for k in range(len(results))]}
    record["metrics"] = {**(record.get("metrics") or {}), "cv": cv}
    for name in (BEST_FILE, REPORT_FILE):
        if (source / name).exists():
            atomic_write_bytes(run_dir / name, (source / name).read_bytes())
    write_json(run_dir / METRICS_FILE, json_ready(metrics))
    write_json(run_dir / RUN_FILE, record)
    summary = (f"{results[chosen].summary}\n"
               f"cross-validation over {len(results)} folds (test parts): RMSE {cv['rmse']['mean']:.4g} "
               f"± {cv['rmse']['std']:.4g}, MAE {cv['mae']['mean']:.4g} ± {cv['mae']['std']:.4g}; "
               f"final model = fold {chosen} (best validation RMSE), copied to {run_dir}")
    return TrainResult(run_dir, json_ready(metrics), results[chosen].warnings, summary)


class BudgetClock:
    """Wall-clock accounting of one ``train`` call against its time budget (None: no budget)."""

    def __init__(self, budget_s: float | None, started: float | None = None):
        self.started = time.perf_counter() if started is None else started
        self.budget = budget_s
        self.stages: dict[str, float] = {}
        self._mark = self.started

    @property
    def deadline(self) -> float | None:
        return None if self.budget is None else self.started + self.budget

    def left(self) -> float:
        return math.inf if self.budget is None else self.deadline - time.perf_counter()

    def mark(self, stage: str) -> None:
        """Charge the time since the previous mark to ``stage``."""
        now = time.perf_counter()
        self.stages[stage] = self.stages.get(stage, 0.0) + now - self._mark
        self._mark = now

    def used(self) -> float:
        return time.perf_counter() - self.started

    def record(self, stopped: str) -> dict:
        used = self.used()
        return {"budget_s": self.budget, "used_s": round(used, 1),
                "used_share": None if not self.budget else round(used / self.budget, 3),
                "stages_s": {k: round(v, 1) for k, v in self.stages.items()}, "stopped": stopped}

    def line(self, stopped: str) -> str:
        stages = ", ".join(f"{k} {v:.0f} s" for k, v in self.stages.items())
        if not self.budget:
            return f"time: {self.used():.0f} s ({stages}); no --time-budget; stopped: {stopped}"
        return (f"time budget: used {self.used():.0f} s of {self.budget:.0f} s ({self.used() / self.budget:.0%}): "
                f"{stages}; stopped: {stopped}")


FIT_SHARE_GUESS = 0.5  # share of the budget the final fit gets, assumed when choosing the input size
REFIT_SHARE = 0.45  # with a refit, the first fit gets this share of the time left, the refit the rest
FOLDS_SHARE = 0.3  # under k-fold, the fold fits together get this share of the time left, the refit the rest


def eval_reserve(budget: float | None) -> float:
    """Seconds kept back at the end of a budget for the report (plot, metrics.json, run.json) and
    the baselines; the scoring passes themselves are counted by the fit at their measured speed
    (``closing_rows``)."""
    return 0.0 if budget is None else min(30.0, 2.0 + 0.02 * budget)


def choose_model_and_lr(loaded: LoadedData, config: TrainConfig, vplan: ValidationPlan, reference: dict | None,
                        ctx: ddp.DistContext, clock: BudgetClock, run_dir: Path, *,
                        log: Callable[[str], None]) -> tuple[Candidate, dict]:
    """The race (or the fixed choice) and its metrics.json record."""
    kind = loaded.kind
    fixed_model = config.model not in (None, "auto")
    if config.lr == "auto":
        plan = make_plan(loaded, config, vplan.split, reference_region=reference, seen_frac=0.0)
        lr = auto_lr(plan, config, run_dir, ctx, log=log)
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
    winner, entries = run_race(
        lambda name: make_plan(loaded, config, vplan.split, model_name=name, reference_region=reference, seen_frac=0.0),
        racing, config, ctx, seconds=seconds, log=log)
    last = [e for e in entries if e.rung == max(x.rung for x in entries)]
    best = next(e for e in last if e.model == winner.model and e.lr == winner.lr)
    reason = (f"won the race: validation RMSE {best.val_rmse:.4g} ± {best.val_se:.2g} in rung {best.rung} "
              f"against {len(racing) - 1} other candidate(s) (ties within one standard error go to the simpler "
              f"model and the middle learning rate)")
    log(f"model: {winner.label()} ({reason})")
    return winner, race_record(entries, winner, reason)


def train(dataset_root: str | Path, run_dir: str | Path, config: TrainConfig = TrainConfig(), *,
          resume: bool = False, progress: bool = True, log: Callable[[str], None] = print,
          started: float | None = None) -> TrainResult:
    """Train a regressor on a dataset directory into ``run_dir``.

    Args:
        dataset_root: a directory with labels.csv (the dataset format of docs/CONTRACTS.md).
        run_dir: the run directory (created); must not hold another run unless ``resume``.
        config: the training configuration. With ``resume`` the stored configuration is used
            (only ``threads`` and ``device`` are taken from this one).
        resume: continue the run in ``run_dir`` from its last checkpoint (or start it when it has
            none: a run killed before its first checkpoint).
        progress: show a progress bar (rank 0, and only on a terminal).
        log: where progress lines go (rank 0 only).
        started: ``time.perf_counter()`` when the command started (the budget counts from there;
            default: now).

    Under ``torchrun`` every process calls this; they share the work through DDP and only rank 0
    writes files and returns the metrics (the others return an empty TrainResult).

    With ``config.time_budget_min`` the whole call (loading, the race, the fits, the report) is
    planned to end within the budget; the report says how much was used and why the fit stopped.

    Returns:
        The metrics, warnings and printed summary; files in ``run_dir``.

    Raises:
        EdgeregError: bad configuration, unusable data, a run directory already in use, a failed
            sanity check, or a diverging loss.
    """
    clock = BudgetClock(None if config.time_budget_min is None else 60.0 * config.time_budget_min, started)
    run_dir = Path(run_dir)
    # A K-fold run writes RUN/run.json last; until then its first fold's record holds the settings.
    records = [path for path in (run_dir / RUN_FILE, run_dir / "fold0" / RUN_FILE) if path.exists()]
    if records and not resume:
        raise EdgeregError(f"'{run_dir}' already holds a run; continue it with --resume or choose another --out")
    stored = None
    if records:
        stored = read_json(records[0])
        dataset_root = stored["dataset"]["root"]
        config = replace(TrainConfig.from_dict(stored["config"]), threads=config.threads, device=config.device)
    ctx = ddp.setup(config.device)
    say = log if ctx.is_main else (lambda message: None)
    created = not run_dir.exists()
    try:
        with kernel_flags(deterministic=config.deterministic):
            torch.set_num_threads(ddp.threads_per_process(ctx, config.threads))
            make_run_dir(run_dir)
            fit_guess = None if clock.budget is None else FIT_SHARE_GUESS * clock.budget
            loaded = load_data(dataset_root, config, log=say, fit_seconds=fit_guess,
                               notice=notice if ctx.is_main else say)
            if ctx.distributed:
                say(f"distributed: {ctx.world_size} processes ({ctx.device}), batch {config.batch_size} per process")
            if config.folds:
                return train_folds(loaded, config, run_dir, ctx, resume=resume, progress=progress, log=say)
            external = load_external_test(config.test_dir, loaded, config, log=say) if config.test_dir else None
            vplan = plan_validation(loaded, config, external_test=external is not None)
            say(f"validation: {vplan.reason}")
            clock.mark("load")
            return train_planned(loaded, config, vplan, external, run_dir, ctx, clock, stored=stored,
                                 resume=resume, progress=progress, log=say)
    except BaseException as exc:
        if ctx.is_main:
            record_failure(run_dir, exc, created=created)
        raise
    finally:
        ddp.teardown(ctx)


def train_planned(loaded: LoadedData, config: TrainConfig, vplan: ValidationPlan, external, run_dir: Path,
                  ctx: ddp.DistContext, clock: BudgetClock, *, stored: dict | None, resume: bool, progress: bool,
                  log: Callable[[str], None]) -> TrainResult:
    """Everything after loading: reference, race, the fit(s) of the validation plan, the report."""
    if stored is not None and stored.get("status") == "done":
        log(f"{run_dir} has finished training; nothing to resume (see {run_dir / METRICS_FILE})")
        metrics = read_json(run_dir / METRICS_FILE)
        return TrainResult(run_dir, metrics, tuple(metrics.get("warnings", ())), "")
    choice = (stored or {}).get("choice") if resume else None
    resumed_choice = choice
    if choice:
        reference = choice["reference"]
        winner = Candidate(choice["model"], float(choice["lr"]))
        race, reference_record = choice.get("race", {}), choice.get("reference_test", {})
        log(f"resuming with {winner.label()}, reference {describe_region(reference) if reference else 'none'}")
    else:
        found = resolve_reference(loaded, config, vplan.split.train, seed=config.seed)
        reference = found.region
        reference_record = {"region": found.region, "reason": found.reason, "scores": found.scores}
        log(f"reference: {describe_region(reference) if reference else 'none'} ({found.reason})")
        clock.mark("reference test")
        if config.model == readouts.MODEL_NAME:
            winner, race = Candidate(readouts.MODEL_NAME, 0.0), race_record([], None, "--model readout")
        else:
            winner, race = choose_model_and_lr(loaded, config, vplan, reference, ctx, clock, run_dir, log=log)
        clock.mark("race")
    race_of_readouts = score_readouts(loaded, config, vplan, reference, log=log)
    clock.mark("readouts")
    choice = {"model": winner.model, "lr": winner.lr, "reference": reference, "race": race,
              "reference_test": reference_record}
    # time to fit the shipped readout on every row, should it beat the network (the blocks' measured
    # time per image: the final fit computes the features of its rows once more)
    reserve = eval_reserve(clock.budget) + race_of_readouts.seconds_per_row * len(loaded.dataset)
    if winner.model == readouts.MODEL_NAME:  # --model readout: the closed-form fit is the whole fit
        return ship_readout(loaded, config, vplan, reference, race_of_readouts, {}, None, external, run_dir, clock,
                            choice, log=log)

    def end(share: float = 1.0) -> float | None:
        if clock.deadline is None:
            return None
        return time.perf_counter() + share * max(0.0, clock.left() - reserve)

    # the hybrid decision is made once and replayed on --resume (run.json "choice")
    hybrid_options = (resumed_choice.get("hybrid") if resumed_choice else
                      hybrid_network(race_of_readouts, winner, loaded.kind, log=log))
    choice["hybrid"] = hybrid_options

    def plan_for(plan_config, split, **options):
        """make_plan for the network that is fitted: the race's winner, or its hybrid with the best readout."""
        made = make_plan(loaded, plan_config, split, model_name=winner.model, reference_region=reference, **options)
        return made if hybrid_options is None else replace(made, model_name="hybrid", model_kwargs=hybrid_options)

    facts = {"validation": {"mode": vplan.mode, "reason": vplan.reason, "refit": vplan.refit},
             "race": race, "reference_test": reference_record,
             "decisions": [{"what": w, "choice": c, "why": y} for w, c, y in loaded.decisions]}
    evaluations: dict[str, SplitEvaluation] = {}
    sanity = None
    if vplan.mode == "holdout" and not vplan.refit:
        plan = plan_for(config, vplan.split)
        record = lambda status, metrics=None: run_record(plan, config, status=status, metrics=metrics,  # noqa: E731
                                                         lr=winner.lr, choice=choice)
        closing = len(plan.split.test) + len(plan.seen) + (0 if external is None else len(external))
        outcome, sanity = run_fit(plan, config, run_dir, ctx, lr=winner.lr, resume=resume, progress=progress,
                                  log=log, deadline=end(), record=record, closing_rows=closing)
        clock.mark("fit")
    else:
        if vplan.mode == "holdout":  # fit on train, score val, then refit on train + val
            first = plan_for(config, vplan.split, seen_frac=0.0)
            log("fit on the train part (scored on validation), then a refit on train + validation")
            outcome, sanity = run_fit(first, config, None, ctx, lr=winner.lr, resume=False, progress=progress,
                                      log=log, deadline=end(REFIT_SHARE), closing_rows=0)
            evaluations["val"] = evaluate_fit(first, outcome.regressor, device=ctx.device,
                                              batch_size=config.eval_batch)["val"]
            held_out = HeldOut(np.asarray(vplan.split.val), np.zeros(len(vplan.split.val), np.int64),
                               evaluations["val"].y_true, evaluations["val"].y_pred,
                               "validation predictions of the model fitted before the refit")
            clock.mark("fit")
            rows = np.concatenate([vplan.split.train, vplan.split.val])
            final_split = Split(train=rows, val=np.zeros(0, np.int64), test=vplan.split.test, mode=vplan.split.mode,
                                seed=vplan.split.seed)
            epochs = None if clock.budget is not None else max(1, len(outcome.history))
        else:  # k-fold: out-of-fold scores, then a refit on every row
            parts = []
            fold_seconds = None if clock.budget is None else FOLDS_SHARE * max(0.0, clock.left() - reserve) / len(
                vplan.folds)
            for k, fold in enumerate(vplan.folds):
                plan_k = plan_for(config, fold, seen_frac=0.0)
                deadline_k = None if fold_seconds is None else time.perf_counter() + fold_seconds
                outcome_k, _ = run_fit(plan_k, config, None, ctx, lr=winner.lr, resume=False, progress=progress,
                                       log=log, deadline=deadline_k, quiet=True, closing_rows=0)
                rows = np.asarray(fold.val)
                groups = None if loaded.dataset.groups is None else np.asarray(loaded.dataset.groups)[rows]
                parts.append(scored_rows(plan_k, outcome_k.regressor, loaded.dataset.images[rows],
                                         loaded.dataset.targets[rows], loaded.dataset.crop_boxes[rows], groups,
                                         device=ctx.device, batch_size=config.eval_batch))
                fold_rmse = float(np.sqrt(np.mean(sample_errors(loaded.kind, parts[-1][0], parts[-1][1]))))
                log(f"fold {k + 1}/{len(vplan.folds)}: {outcome_k.steps} steps, held-out groups RMSE {fold_rmse:.4g}")
            true, pred, baselines, groups = merge_scored(parts)
            held_out = HeldOut(np.concatenate([np.asarray(f.val) for f in vplan.folds]),
                               np.concatenate([np.full(len(f.val), k) for k, f in enumerate(vplan.folds)]), true, pred,
                               "out-of-fold predictions of the fold models (k-fold design)")
            evaluations["val"] = evaluate_split("val", loaded.kind, loaded.dataset.names, true, pred, baselines,
                                                groups=groups)
            clock.mark("folds")
            final_split = Split(train=np.arange(len(loaded.dataset)), val=np.zeros(0, np.int64),
                                test=np.zeros(0, np.int64), mode=vplan.split.mode, seed=vplan.split.seed)
            epochs = None
        final_config = config if epochs is None else replace(config, epochs=epochs)
        if ctx.is_main:
            held_out.write(run_dir)
        plan = plan_for(final_config, final_split, seen_frac=0.0)
        record = lambda status, metrics=None: run_record(plan, config, status=status, metrics=metrics,  # noqa: E731
                                                         lr=winner.lr, choice=choice, validation_split=vplan.split)
        log(f"refit on {len(final_split.train)} rows with the chosen settings")
        outcome, _ = run_fit(plan, final_config, run_dir, ctx, lr=winner.lr, resume=resume, progress=progress,
                             log=log, deadline=end(), record=record)
        clock.mark("refit")
    if not ctx.is_main:
        return TrainResult(run_dir, {}, (), "")
    best = race_of_readouts.best()
    # the network scored once on every split it has (val, test, seen); a val already scored (before
    # a refit, or out of fold) is the one that counts
    scored = evaluate_fit(plan, outcome.regressor, device=ctx.device, batch_size=config.eval_batch)
    evaluations.update({k: v for k, v in scored.items() if k not in evaluations})
    network_val = evaluations.get("val")
    if best is not None and network_val is not None and best.val_rmse < network_val.metrics["rmse"]:
        log(f"model: {best.label()} (validation RMSE {best.val_rmse:.4g} ± {best.val_se:.2g}) beats the network "
            f"{winner.label()} ({network_val.metrics['rmse']:.4g}): the readout is shipped")
        network = {f"network {plan.model_name} ({winner.model})": network_val.metrics}
        return ship_readout(loaded, config, vplan, reference, race_of_readouts, network, network_val, external,
                            run_dir, clock, choice, log=log)
    if external is not None:
        evaluations["test"] = evaluate_external(plan, outcome.regressor, external, device=ctx.device,
                                                batch_size=config.eval_batch)
    if race_of_readouts.scores and "val" in evaluations:
        evaluations["val"] = with_baselines(evaluations["val"], readout_metrics(loaded, race_of_readouts.scores,
                                                                                race_of_readouts.predictions))
        if best is not None:
            ratio = best.val_rmse / max(evaluations["val"].metrics["rmse"], 1e-300)
            log(f"the network's validation RMSE is {ratio:.2f}x lower than the best block readout's ({best.label()})")
            facts["readouts"] = readouts_record(race_of_readouts.scores, best, ratio)
    val = evaluations.get("val")
    if val is not None:
        per_sample = sample_errors(loaded.kind, val.y_true, val.y_pred)
        facts["validation"]["val_se"] = rmse_standard_error(per_sample, val.groups)
        facts["validation"]["scored"] = {"holdout": "the final model" if not vplan.refit else
                                         "the model fitted before the refit (same settings, train part only)",
                                         "kfold": "out-of-fold predictions of the fold models"}[vplan.mode]
    clock.mark("evaluation")
    facts["budget_record"] = clock.record(outcome.stopped)
    metrics, warnings, summary = report_fit(plan, outcome, evaluations, run_dir, sanity=sanity, facts=facts,
                                            budget_line=lambda: clock.line(outcome.stopped))
    metrics["budget"] = clock.record(outcome.stopped)
    write_json(run_dir / METRICS_FILE, json_ready(metrics))
    refitted = vplan.mode == "kfold" or vplan.refit
    write_json(run_dir / RUN_FILE, run_record(plan, config, status="done", metrics=metrics, lr=winner.lr,
                                              choice=choice, validation_split=vplan.split if refitted else None))
    return TrainResult(run_dir, metrics, tuple(warnings), summary)


HELD_OUT_FILE = "held_out.npz"


@dataclass(frozen=True)
class HeldOut:
    """Predictions of rows by models that never saw them, kept when the shipped model was refitted on
    every row (k-fold or holdout + refit): what honest intervals are calibrated on (export/conformal).

    ``rows (N,) int64`` dataset rows, ``folds (N,) int64`` the fold that held each out, ``true`` and
    ``pred (N, T) float64`` in the user's units; ``scored_by`` says which models predicted them.
    """

    rows: np.ndarray
    folds: np.ndarray
    true: np.ndarray
    pred: np.ndarray
    scored_by: str

    def write(self, run_dir: Path) -> None:
        """RUN/held_out.npz, written atomically."""
        import io

        buffer = io.BytesIO()
        np.savez(buffer, rows=np.asarray(self.rows, np.int64), folds=np.asarray(self.folds, np.int64),
                 true=np.asarray(self.true, np.float64), pred=np.asarray(self.pred, np.float64),
                 scored_by=np.asarray(self.scored_by))
        atomic_write_bytes(run_dir / HELD_OUT_FILE, buffer.getvalue())


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


def ship_readout(loaded: LoadedData, config: TrainConfig, vplan: ValidationPlan, reference: dict | None,
                 race: readouts.ReadoutRace, network: dict, network_val: SplitEvaluation | None, external,
                 run_dir: Path, clock: BudgetClock, choice: dict, *, log: Callable[[str], None]) -> TrainResult:
    """Fit the best block readout on the final rows (train, or every row after a refit/k-fold design),
    write best.pt, metrics.json, report.png and run.json as for a network."""
    best = race.best()
    if best is None:
        raise EdgeregError("no block readout could be fitted on this data (see the lines above); "
                           "train a network instead: --model auto")
    refitted = vplan.mode == "kfold" or vplan.refit
    if refitted:
        true, pred = race.predictions[best.label()]
        HeldOut(race.rows, race.folds, true, pred, f"held-out predictions of {best.label()} fitted without them "
                f"({vplan.mode} design)").write(run_dir)
        split = Split(train=np.arange(len(loaded.dataset)) if vplan.mode == "kfold" else
                      np.concatenate([vplan.split.train, vplan.split.val]), val=np.zeros(0, np.int64),
                      test=vplan.split.test if vplan.mode == "holdout" else np.zeros(0, np.int64),
                      mode=vplan.split.mode, seed=vplan.split.seed)
    else:
        split = vplan.split
    plan = readouts.readout_plan(make_plan(loaded, config, split, model_name=readouts.MODEL_NAME,
                                           reference_region=reference, seen_frac=0.0 if refitted else None),
                                 best.blocks, best.hidden, best.quadratic)
    started = time.perf_counter()
    regressor, fit_record = readouts.fit_plan(plan, seed=config.seed)
    save_checkpoint(run_dir / BEST_FILE, regressor.state_dict())
    evaluations = dict(evaluate_fit(plan, regressor, batch_size=config.eval_batch))
    if external is not None:
        evaluations["test"] = evaluate_external(plan, regressor, external, batch_size=config.eval_batch)
    true, pred = race.predictions[best.label()]
    baselines = dict(network_val.baselines) if network_val is not None else {}
    others = readout_metrics(loaded, [s for s in race.scores if s is not best], race.predictions)
    if refitted or "val" not in evaluations:  # out-of-fold predictions of the models fitted without them
        val = evaluate_split("val", loaded.kind, loaded.dataset.names, true, pred, {},
                             groups=None if network_val is None else network_val.groups)
    else:  # the shipped model itself on the validation rows
        val = evaluations["val"]
        true, pred = val.y_true, val.y_pred
    evaluations["val"] = with_baselines(val, {**baselines, **network, **others})
    clock.mark("readout fit")
    clock.mark("evaluation")
    stopped = f"closed-form readout ({best.label()}, {fit_record})"
    outcome = FitOutcome(regressor, [], 0, 0, stopped, 0.0, time.perf_counter() - started)
    per_sample = sample_errors(loaded.kind, true, pred)
    facts = {"validation": {"mode": vplan.mode, "reason": vplan.reason, "refit": vplan.refit,
                            "val_se": best.val_se, "scored": "the readout fitted on the validation design's train rows"},
             "race": choice.get("race"), "reference_test": choice.get("reference_test"),
             "readouts": readouts_record(race.scores, best, None),
             "decisions": [{"what": w, "choice": c, "why": y} for w, c, y in loaded.decisions]}
    facts["validation"]["val_se"] = rmse_standard_error(per_sample, val.groups)
    facts["budget_record"] = clock.record(stopped)
    metrics, warnings, summary = report_fit(plan, outcome, evaluations, run_dir, facts=facts,
                                            budget_line=lambda: clock.line(stopped))
    metrics["budget"] = clock.record(stopped)
    write_json(run_dir / METRICS_FILE, json_ready(metrics))
    choice = {**choice, "model": readouts.MODEL_NAME, "lr": None, "readout": best.kwargs()}
    write_json(run_dir / RUN_FILE, run_record(plan, config, status="done", metrics=metrics, lr=None, choice=choice,
                                              validation_split=vplan.split if refitted else None))
    return TrainResult(run_dir, metrics, tuple(warnings), summary)


def readout_metrics(loaded: LoadedData, scores: list, predictions: dict) -> dict:
    """{label: compute_metrics of the readout's held-out predictions} (baselines of the report)."""
    out = {}
    for score in scores:
        true, pred = predictions[score.label()]
        out[score.label()] = compute_metrics(loaded.kind, true, pred, loaded.dataset.names)
    return out


def with_baselines(evaluation: SplitEvaluation, extra: dict) -> SplitEvaluation:
    """``evaluation`` with more named baselines (metrics dicts) beside its own."""
    return replace(evaluation, baselines={**evaluation.baselines, **extra})


def readouts_record(scores: list, best, ratio: float | None) -> dict:
    """metrics.json ``readouts``: every candidate's validation score, the best, and how many times
    lower the shipped network's RMSE is (None: the readout was shipped)."""
    return {"candidates": [asdict(s) for s in scores], "best": None if best is None else best.label(),
            "network_advantage": ratio}


def notice(message: str) -> None:
    """What a run always says, even with --quiet (the skipped rows): one line on stderr."""
    print(message, file=sys.stderr, flush=True)


def make_run_dir(run_dir: Path) -> None:
    """Create the run directory, or say in one line why it cannot be (OutputError, exit 2)."""
    from edgereg.errors import output_error

    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise output_error(exc, run_dir) from None


def record_failure(run_dir: Path, exc: BaseException, *, created: bool) -> None:
    """After a failed run: run.json (and each fold's) says ``failed`` with the reason, and a run
    directory this run created and left empty is removed (no empty --out behind)."""
    mark_failed(run_dir, failure_reason(exc))
    if created:
        try:
            run_dir.rmdir()  # only when empty
        except OSError:
            pass


@contextlib.contextmanager
def kernel_flags(*, deterministic: bool):
    """Within the block, pick deterministic convolution kernels when asked.

    oneDNN's CPU convolutions (and cuDNN's autotuned ones) may sum in a different order from call to
    call, so two identical runs differ in the last bits and then drift apart: a rerun or a resumed
    run would not repeat the uninterrupted one. Their deterministic modes cost ~1.0-1.3x on the CPU
    convolutions measured here. The previous settings are restored on exit.
    """
    if not deterministic:
        yield
        return
    backends = torch.backends
    saved = (backends.mkldnn.deterministic, backends.cudnn.deterministic, backends.cudnn.benchmark)
    backends.mkldnn.deterministic, backends.cudnn.deterministic, backends.cudnn.benchmark = True, True, False
    try:
        yield
    finally:
        backends.mkldnn.deterministic, backends.cudnn.deterministic, backends.cudnn.benchmark = saved
