"""The report of one fit: metrics.json, report.png and the printed summary, with the validation
warnings and the readouts' lines beside the network's."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from edgereg.data.metrics import compute_metrics
from edgereg.json_values import json_safe
from edgereg.training.fitting.fit import FitOutcome, SanityResult
from edgereg.training.planning.fit_plan import FitPlan
from edgereg.training.planning.loading import LoadedData
from edgereg.training.reporting.report import SplitEvaluation, build_metrics, format_summary, plot_report
from edgereg.training.run import METRICS_FILE, REPORT_FILE, write_json


def report_fit(plan: FitPlan, outcome: FitOutcome, evaluations: dict[str, SplitEvaluation], run_dir: Path, *,
               sanity: SanityResult | None = None, facts: dict | None = None,
               budget_line: Callable[[], str] | None = None,
               budget_record: Callable[[], dict] | None = None) -> tuple[dict, list[str], str]:
    """Write report.png, then metrics.json (once, last) for one fit.

    Args:
        facts: further metrics.json entries (validation, race, budget, decisions).
        budget_line: called last, for the summary's line on the time budget.
        budget_record: called just before metrics.json is written, for its ``budget`` entry (the
            time used up to then); default: ``facts["budget_record"]``.

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
    metrics = json_safe(metrics)
    look_at = run_dir / METRICS_FILE
    if shown is not None:
        look_at = plot_report(run_dir / REPORT_FILE, kind=loaded.kind, names=loaded.dataset.names,
                              units=loaded.units, history=outcome.history, evaluation=shown,
                              race=(facts.get("race") or {}).get("entries"))
    summary = format_summary(loaded.dataset.names, loaded.units, evaluations, warnings, trained=trained,
                             look_at=look_at)
    if budget_record is not None:
        metrics["budget"] = json_safe(budget_record())
    write_json(run_dir / METRICS_FILE, metrics)
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

