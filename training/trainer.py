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
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

import edgereg
from edgereg.errors import EdgeregError
from edgereg.training import ddp
from edgereg.training.config import TrainConfig
from edgereg.training.fit import FitOutcome, Fitter, SanityResult, evaluate_fit, find_lr, sanity_check
from edgereg.training.losses import default_loss, make_loss
from edgereg.training.lr_find import plot_lr_find
from edgereg.training.plan import FitPlan, LoadedData, load_data, make_plan, make_run_split, run_record_model_part
from edgereg.training.report import SplitEvaluation, build_metrics, format_summary, plot_report
from edgereg.training.run import (BEST_FILE, CHECKPOINT_FILE, METRICS_FILE, REPORT_FILE, RUN_FILE, RUN_FORMAT,
                                  atomic_write_bytes, failure_reason, json_ready, load_checkpoint, mark_failed,
                                  read_json, write_json)
from edgereg.training.splits import kfold


# ----------------------------------------------------------------------------------------------------
# The report of a fit, and the run record.


def report_fit(plan: FitPlan, outcome: FitOutcome, evaluations: dict[str, SplitEvaluation], run_dir: Path, *,
               sanity: SanityResult | None = None) -> tuple[dict, list[str], str]:
    """Write metrics.json and report.png for one fit.

    Returns:
        (metrics dict, warnings, summary text).
    """
    loaded = plan.loaded
    facts = {
        "split": {"mode": plan.split.mode, "train": len(plan.split.train), "val": len(plan.split.val),
                  "test": len(plan.split.test), "seen": len(plan.seen)},
        "training": {"epochs": len(outcome.history), "planned_epochs": outcome.planned_epochs,
                     "best_epoch": outcome.best_epoch, "stopped": outcome.stopped, "lr": outcome.lr,
                     "seconds": outcome.seconds, "history": outcome.history},
        "sanity": None if sanity is None else asdict(sanity),
        "augment": plan.augment.describe(),
        "model": {"name": plan.model_name, "parameters": int(sum(p.numel() for p in outcome.regressor.parameters()))},
    }
    metrics, warnings = build_metrics(loaded.kind, loaded.dataset.names, loaded.units, evaluations, facts=facts)
    metrics = json_ready(metrics)
    write_json(run_dir / METRICS_FILE, metrics)
    shown = evaluations.get("test") or evaluations.get("val")
    look_at = run_dir / METRICS_FILE
    if shown is not None:
        look_at = plot_report(run_dir / REPORT_FILE, kind=loaded.kind, names=loaded.dataset.names,
                              units=loaded.units, history=outcome.history, evaluation=shown)
    trained = (f"trained {len(outcome.history)} epochs (best {outcome.best_epoch or 'last'}; {outcome.stopped}) "
               f"in {outcome.seconds:.0f} s, model {plan.model_name}, lr {outcome.lr:.2g}")
    summary = format_summary(loaded.dataset.names, loaded.units, evaluations, warnings, trained=trained,
                             look_at=look_at)
    return metrics, warnings, summary


def run_record(plan: FitPlan, config: TrainConfig, *, status: str, metrics: dict | None = None,
               lr: float | None = None, fold: int | None = None) -> dict:
    """The run.json contents (see :mod:`edgereg.training.run`)."""
    dataset = plan.loaded.dataset
    transform = plan.transform
    ranges = list(zip(transform.lo, transform.hi)) if plan.loaded.kind == "scalar" else None
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
        "split": {**plan.split.to_dict(), "seen": plan.seen},
        "seed": config.seed, "lr": lr, "config": config.to_dict(),
        "versions": {"edgereg": edgereg.__version__, "torch": torch.__version__, "numpy": np.__version__},
        "metrics": summary,
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
    """Plan, fit (or resume), evaluate and report one split into ``run_dir``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    existing = read_json(run_dir / RUN_FILE) if (run_dir / RUN_FILE).exists() else None
    if resume and existing is not None and existing.get("status") == "done":
        log(f"{run_dir} has finished training; nothing to resume (see {run_dir / METRICS_FILE})")
        metrics = read_json(run_dir / METRICS_FILE)
        return TrainResult(run_dir, metrics, tuple(metrics.get("warnings", ())), "")
    plan = make_plan(loaded, config, split)
    make_loss(plan.loss_name, loaded.kind)  # a bad --loss fails here, before any work
    checkpoint = None
    if resume and (run_dir / CHECKPOINT_FILE).exists():
        checkpoint = load_checkpoint(run_dir / CHECKPOINT_FILE, map_location=ctx.device)
    sanity = None
    if config.sanity and checkpoint is None:
        sanity = sanity_check(plan, config, device=ctx.device)
        log(sanity.describe())
        if not sanity.passed:
            raise EdgeregError(f"{sanity.describe()}: the model cannot fit even one batch; check that the labels "
                               "match the images, the crop keeps the signal (--crop/--size/--channels), "
                               "and the learning rate (`edgereg lr-find`)")
    if existing is not None and resume and existing.get("lr") is not None:
        lr = float(existing["lr"])
    elif config.lr == "auto":
        lr = auto_lr(plan, config, run_dir, ctx, log=log)
    else:
        lr = float(config.lr)
    fitter = Fitter(plan, config, run_dir, ctx, lr=lr, progress=progress, log=log)  # validates model and loss
    if ctx.is_main and (existing is None or not resume):
        write_json(run_dir / RUN_FILE, run_record(plan, config, status="training", lr=lr, fold=fold))
    ddp.barrier(ctx)
    parameters = sum(p.numel() for p in fitter.regressor.parameters())
    loss = plan.loss_name or default_loss(plan.loaded.kind)
    log(f"model {plan.model_name} ({parameters:,} parameters), loss {loss}, "
        f"{fitter.planned} epochs x {fitter.steps_per_epoch} steps of {config.batch_size}, lr {lr:.2g} "
        f"{config.schedule}; augment {plan.augment.describe()}")
    if checkpoint is not None:
        fitter.restore(checkpoint)
        log(f"resuming {run_dir} after epoch {fitter.epoch}/{fitter.planned}")
    outcome = fitter.run()
    if not ctx.is_main:
        return TrainResult(run_dir, {}, (), "")
    evaluations = evaluate_fit(plan, outcome.regressor, device=ctx.device, batch_size=config.eval_batch)
    metrics, warnings, summary = report_fit(plan, outcome, evaluations, run_dir, sanity=sanity)
    write_json(run_dir / RUN_FILE, run_record(plan, config, status="done", metrics=metrics, lr=lr, fold=fold))
    return TrainResult(run_dir, metrics, tuple(warnings), summary)


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


def train(dataset_root: str | Path, run_dir: str | Path, config: TrainConfig = TrainConfig(), *,
          resume: bool = False, progress: bool = True, log: Callable[[str], None] = print) -> TrainResult:
    """Train a regressor on a dataset directory into ``run_dir``.

    Args:
        dataset_root: a directory with labels.csv (DESIGN.md dataset format).
        run_dir: the run directory (created); must not hold another run unless ``resume``.
        config: the training configuration. With ``resume`` the stored configuration is used
            (only ``threads`` and ``device`` are taken from this one).
        resume: continue the run in ``run_dir`` from its last checkpoint (or start it when it has
            none: a run killed before its first checkpoint).
        progress: show a progress bar (rank 0, and only on a terminal).
        log: where progress lines go (rank 0 only).

    Under ``torchrun`` every process calls this; they share the work through DDP and only rank 0
    writes files and returns the metrics (the others return an empty TrainResult).

    Returns:
        The metrics, warnings and printed summary; files in ``run_dir``.

    Raises:
        EdgeregError: bad configuration, unusable data, a run directory already in use, a failed
            sanity check, or a diverging loss.
    """
    run_dir = Path(run_dir)
    # A K-fold run writes RUN/run.json last; until then its first fold's record holds the settings.
    records = [path for path in (run_dir / RUN_FILE, run_dir / "fold0" / RUN_FILE) if path.exists()]
    if records and not resume:
        raise EdgeregError(f"'{run_dir}' already holds a run; continue it with --resume or choose another --out")
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
            loaded = load_data(dataset_root, config, log=say, notice=notice if ctx.is_main else say)
            if ctx.distributed:
                say(f"distributed: {ctx.world_size} processes ({ctx.device}), batch {config.batch_size} per process")
            if config.folds:
                return train_folds(loaded, config, run_dir, ctx, resume=resume, progress=progress, log=say)
            split = make_run_split(loaded, config)
            say(f"split {split.mode}: train {len(split.train)}, val {len(split.val)}, test {len(split.test)}")
            return fit_one(loaded, config, split, run_dir, ctx, resume=resume, progress=progress, log=say)
    except BaseException as exc:
        if ctx.is_main:
            record_failure(run_dir, exc, created=created)
        raise
    finally:
        ddp.teardown(ctx)


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
