"""The trainer: dataset -> split -> epochs of augmented mini-batches -> checkpoints -> report.

Flow of one run (``edgereg train DATA --out RUN`` calls :func:`train`):

1. :func:`~edgereg.training.planning.loading.load_data` decodes, crops and resizes every image once into one
   ``(N, H, W, 3) uint8`` array (disk-cached by the data module), with per-kind defaults for size,
   channels and crop.
2. The split (random, whole groups held out, or K folds) is made once and stored in run.json; the
   normalization statistics and the target standardization come from the train split only.
3. Each epoch shuffles the train rows with a generator seeded by ``(seed, epoch)``, so a resumed run
   replays exactly; each batch goes uint8 -> float -> :func:`~edgereg.training.fitting.augment.augment_batch`
   -> :func:`~edgereg.training.fitting.augment.to_model_input` -> ``Regressor.forward_raw`` -> loss on the
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
* steps 1-2, preparing a fit: :mod:`~edgereg.training.planning.probe` (probing the dataset),
  :mod:`~edgereg.training.planning.input_size` and :mod:`~edgereg.training.planning.geometry` (size, crop,
  channels), :mod:`~edgereg.training.planning.loading` (loading once),
  :mod:`~edgereg.training.planning.validation` (holdout or k-fold), :mod:`~edgereg.training.planning.normalization`
  and :mod:`~edgereg.training.planning.fit_plan` (the :class:`~edgereg.training.planning.fit_plan.FitPlan`).
* :mod:`edgereg.training.fitting.fit`: steps 3-5 and the scoring of step 6 (batches, loss, the
  :class:`~edgereg.training.fitting.fit.Fitter` epoch loop, LR range test, sanity check, evaluation).
* :mod:`edgereg.training.selection.model_choice`: ``--lr auto``, the race, the block readouts, the hybrid.
* :mod:`edgereg.training.reporting.fit_report` (metrics.json, report.png, summary),
  :mod:`edgereg.training.reporting.run_record` (run.json), :mod:`edgereg.training.reporting.held_out` (held_out.npz),
  :mod:`edgereg.training.budget` (the time budget), :mod:`edgereg.training.kernel_flags`.
* this module: the orchestration (one fit, K folds, the validation design's fits, :func:`train`).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from edgereg.data.metrics import rmse_standard_error, sample_errors
from edgereg.errors import EdgeregError
from edgereg.json_values import json_safe
from edgereg.training import ddp
from edgereg.training.blocks import race as readouts
from edgereg.training.budget import FIT_SHARE_GUESS, FOLDS_SHARE, REFIT_SHARE, BudgetClock, eval_reserve
from edgereg.training.config import DEFAULT_LR, TrainConfig
from edgereg.training.fitting.fit import (
    FitOutcome,
    Fitter,
    SanityResult,
    evaluate_external,
    evaluate_fit,
    merge_scored,
    sanity_check,
    scored_rows,
)
from edgereg.training.kernel_flags import kernel_flags
from edgereg.training.planning.fit_plan import FitPlan, make_plan, resolve_reference
from edgereg.training.planning.loading import LoadedData, load_data, load_external_test
from edgereg.training.planning.reference import describe_region
from edgereg.training.planning.splits import Split, kfold
from edgereg.training.planning.validation import ValidationPlan, plan_validation
from edgereg.training.reporting.fit_report import readout_metrics, readouts_record, report_fit, with_baselines
from edgereg.training.reporting.held_out import HeldOut
from edgereg.training.reporting.report import SplitEvaluation, evaluate_split
from edgereg.training.reporting.run_record import run_record
from edgereg.training.run import (
    BEST_FILE,
    CHECKPOINT_FILE,
    METRICS_FILE,
    REPORT_FILE,
    RUN_FILE,
    atomic_write_bytes,
    failure_reason,
    load_checkpoint,
    mark_failed,
    read_json,
    save_checkpoint,
    write_json,
)
from edgereg.training.selection.model_choice import auto_lr, choose_model_and_lr, hybrid_network, score_readouts
from edgereg.training.selection.race import Candidate, race_record
from edgereg.training.targets.losses import default_loss, make_loss

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
    write_json(run_dir / METRICS_FILE, json_safe(metrics))
    write_json(run_dir / RUN_FILE, record)
    summary = (f"{results[chosen].summary}\n"
               f"cross-validation over {len(results)} folds (test parts): RMSE {cv['rmse']['mean']:.4g} "
               f"± {cv['rmse']['std']:.4g}, MAE {cv['mae']['mean']:.4g} ± {cv['mae']['std']:.4g}; "
               f"final model = fold {chosen} (best validation RMSE), copied to {run_dir}")
    return TrainResult(run_dir, json_safe(metrics), results[chosen].warnings, summary)


def train(dataset_root: str | Path, run_dir: str | Path, config: TrainConfig | None = None, *,
          resume: bool = False, progress: bool = True, log: Callable[[str], None] = print,
          started: float | None = None) -> TrainResult:
    """Train a regressor on a dataset directory into ``run_dir``.

    Args:
        dataset_root: a directory with labels.csv (the dataset format of docs/CONTRACTS.md).
        run_dir: the run directory (created); must not hold another run unless ``resume``.
        config: the training configuration (default ``TrainConfig()``). With ``resume`` the stored configuration is used
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
    config = TrainConfig() if config is None else config
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
                                            budget_line=lambda: clock.line(outcome.stopped),
                                            budget_record=lambda: clock.record(outcome.stopped))
    refitted = vplan.mode == "kfold" or vplan.refit
    write_json(run_dir / RUN_FILE, run_record(plan, config, status="done", metrics=metrics, lr=winner.lr,
                                              choice=choice, validation_split=vplan.split if refitted else None))
    return TrainResult(run_dir, metrics, tuple(warnings), summary)


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
    clock.mark("readout fit")
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
    clock.mark("evaluation")
    stopped = f"closed-form readout ({best.label()}, {fit_record})"
    outcome = FitOutcome(regressor, [], 0, 0, stopped, 0.0, time.perf_counter() - started)
    per_sample = sample_errors(loaded.kind, true, pred)
    facts = {"validation": {"mode": vplan.mode, "reason": vplan.reason, "refit": vplan.refit,
                            "val_se": best.val_se,
                            "scored": "the readout fitted on the validation design's train rows"},
             "race": choice.get("race"), "reference_test": choice.get("reference_test"),
             "readouts": readouts_record(race.scores, best, None),
             "decisions": [{"what": w, "choice": c, "why": y} for w, c, y in loaded.decisions]}
    facts["validation"]["val_se"] = rmse_standard_error(per_sample, val.groups)
    facts["budget_record"] = clock.record(stopped)
    metrics, warnings, summary = report_fit(plan, outcome, evaluations, run_dir, facts=facts,
                                            budget_line=lambda: clock.line(stopped),
                                            budget_record=lambda: clock.record(stopped))
    choice = {**choice, "model": readouts.MODEL_NAME, "lr": None, "readout": best.kwargs()}
    write_json(run_dir / RUN_FILE, run_record(plan, config, status="done", metrics=metrics, lr=None, choice=choice,
                                              validation_split=vplan.split if refitted else None))
    return TrainResult(run_dir, metrics, tuple(warnings), summary)


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


