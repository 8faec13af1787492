"""The run.json record of a fit (format: :mod:`edgereg.training.run`)."""

from __future__ import annotations

import datetime
from dataclasses import asdict

import numpy as np
import torch

import edgereg
from edgereg.json_values import json_safe
from edgereg.training.config import TrainConfig
from edgereg.training.planning.fit_plan import FitPlan, run_record_model_part
from edgereg.training.run import RUN_FORMAT
from edgereg.training.targets.kind_training import kind_training


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
    return json_safe({
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

