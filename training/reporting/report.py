"""What a finished run tells its user: baselines, collapse and memorisation warnings, plots, summary.

The lab scientist is not a deep-learning expert; this module turns predictions into the answers they
need (seeds 002-004): does the model beat predicting zero, the training mean or median; does it only
predict the mean; has it memorised the training groups; and a picture of it all (report.png).

All inputs are in physical units (the trainer converts model outputs and targets first); plots use
matplotlib's object API with the Agg canvas (no pyplot global state, no display needed).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edgereg.data.kinds import kind_data
from edgereg.data.metrics import compute_metrics, prediction_spread

COLLAPSE_SPREAD = 0.3  # predictions' std below this fraction of the targets' std: predicting the mean
MEAN_BASELINE_MARGIN = 0.95  # RMSE above this fraction of the mean baseline's: no better than the mean
MEMORISATION_FACTOR = 2.0  # held-out-group error this many times the seen-group error: memorised groups
BASELINE_LABELS = {"zero": "zero", "train_mean": "train mean", "train_median": "train median",
                   "nearest_train_group": "nearest training group (by image)"}
BASELINE_ORDER = tuple(BASELINE_LABELS)  # the simple baselines come first, in this order


def ordered_baselines(baselines: dict) -> dict:
    """``baselines`` (name -> anything) in a fixed order: the simple baselines of BASELINE_ORDER
    first, in that order, then every other name (readouts, networks) in the order given.

    The order of metrics.json's ``baselines`` and of the printed line never depends on how the
    caller collected the names (a set's order changes from run to run).
    """
    rank = {name: k for k, name in enumerate(BASELINE_ORDER)}
    order = sorted(enumerate(baselines), key=lambda item: (rank.get(item[1], len(rank)), item[0]))
    return {name: baselines[name] for _, name in order}


@dataclass(frozen=True)
class SplitEvaluation:
    """A model's predictions on one split, with its metrics and the baselines' metrics.

    Attributes:
        name: "val", "test" or "seen" (unseen photos of training groups).
        y_true: (N, T) float64, physical units.
        y_pred: (N, T) float64, physical units.
        groups: (N,) group labels or None.
        metrics: :func:`~edgereg.data.metrics.compute_metrics` of the model.
        baselines: baseline name -> its compute_metrics on the same rows.
    """

    name: str
    y_true: np.ndarray
    y_pred: np.ndarray
    groups: np.ndarray | None
    metrics: dict
    baselines: dict

    def beats(self) -> dict[str, float | None]:
        """Baseline name -> baseline RMSE / model RMSE (> 1: the model is better); None if undefined."""
        model = self.metrics["rmse"]
        return {name: (None if model == 0 else m["rmse"] / model) for name, m in self.baselines.items()}

    def to_dict(self, names: Sequence[str], kind: str) -> dict:
        """JSON: the model's metrics plus baselines' RMSE/MAE, the beat ratios and the spread ratios."""
        spread = prediction_spread(kind, self.y_true, self.y_pred)
        return {
            **self.metrics,
            "baselines": {name: {"rmse": m["rmse"], "mae": m["mae"]} for name, m in self.baselines.items()},
            "beats": self.beats(),
            "spread_ratio": {n: (None if np.isnan(s) else float(s)) for n, s in zip(names, spread)},
        }


def thumbnail_features(images: np.ndarray, *, side: int = 8) -> np.ndarray:
    """Tiny area-averaged thumbnails, the image descriptor of the nearest-group baseline.

    Args:
        images: (N, H, W, 3) uint8 BGR, as the model sees them (cropped and resized).
        side: thumbnail side in pixels.

    Returns:
        (N, side * side * 3) float32 in [0, 255].
    """
    thumbs = np.empty((len(images), side, side, 3), dtype=np.float32)
    for i, image in enumerate(images):
        thumbs[i] = cv2.resize(image, (side, side), interpolation=cv2.INTER_AREA)
    return thumbs.reshape(len(images), -1)  # (N, s, s, 3) -> (N, s*s*3)


def baseline_predictions(kind: str, y_train: np.ndarray, n_eval: int, *, train_groups: np.ndarray | None = None,
                         train_features: np.ndarray | None = None,
                         eval_features: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Predictions of the simple predictors a model must beat (seed 004), fitted on the train split.

    * ``zero``: all zeros.
    * ``train_mean`` / ``train_median``: the training targets' mean / median (circular for angles).
    * ``nearest_train_group`` (grouped data with image features): each image gets the mean target of
      the training group whose mean image descriptor is closest to its own. This is what a model
      that memorised the training groups does (seed 002): recognise the group, answer its value. A
      model that does not clearly beat it has not learnt to read the value.

    Args:
        kind: the target kind.
        y_train: (M, T) float, training targets in the units the metrics use.
        n_eval: number of evaluated rows.
        train_groups: (M,) group labels of the training rows, or None.
        train_features: (M, F) image descriptors of the training rows (see thumbnail_features).
        eval_features: (n_eval, F) image descriptors of the evaluated rows.

    Returns:
        name -> (n_eval, T) float64 predictions.
    """
    y_train = np.asarray(y_train, dtype=np.float64)
    rules = kind_data(kind)
    mean, median = rules.column_mean(y_train), rules.column_median(y_train)
    result = {
        "zero": np.zeros((n_eval, y_train.shape[1])),
        "train_mean": np.tile(mean, (n_eval, 1)),
        "train_median": np.tile(median, (n_eval, 1)),
    }
    if (train_groups is not None and train_features is not None and eval_features is not None
            and len(np.unique(train_groups)) > 1):
        result["nearest_train_group"] = _nearest_group(kind, y_train, np.asarray(train_groups),
                                                       np.asarray(train_features, np.float64),
                                                       np.asarray(eval_features, np.float64))
    return result


def _nearest_group(kind: str, y_train: np.ndarray, groups: np.ndarray, train_features: np.ndarray,
                   eval_features: np.ndarray) -> np.ndarray:
    """(N, T): for each eval row, the target mean of the training group nearest in feature space."""
    labels = groups.astype(str)
    names = np.unique(labels)
    scale = train_features.std(axis=0) + 1e-6  # every feature counts alike
    members = [labels == g for g in names]
    centres = np.stack([train_features[m].mean(axis=0) for m in members]) / scale  # (G, F)
    values = np.stack([kind_data(kind).column_mean(y_train[m]) for m in members])  # (G, T)
    queries = eval_features / scale  # (N, F)
    distances = (queries ** 2).sum(1)[:, None] - 2 * queries @ centres.T + (centres ** 2).sum(1)[None]  # (N, G)
    return values[np.argmin(distances, axis=1)]


def evaluate_split(name: str, kind: str, names: Sequence[str], y_true: np.ndarray, y_pred: np.ndarray,
                   baselines: dict[str, np.ndarray], *, groups: np.ndarray | None = None) -> SplitEvaluation:
    """Metrics of the model and of each baseline on one split (all arrays (N, T), physical units)."""
    metrics = compute_metrics(kind, y_true, y_pred, names, groups=groups)
    baseline_metrics = {key: compute_metrics(kind, y_true, pred, names)
                        for key, pred in ordered_baselines(baselines).items()}
    return SplitEvaluation(name, np.asarray(y_true, np.float64), np.asarray(y_pred, np.float64),
                           groups, metrics, baseline_metrics)


def collapse_warnings(kind: str, names: Sequence[str], evaluation: SplitEvaluation) -> list[str]:
    """Loud warnings when the model predicts (about) the mean or does not beat the mean baseline."""
    warnings = []
    spread = prediction_spread(kind, evaluation.y_true, evaluation.y_pred)
    collapsed = [f"{n} {s:.2f}x" for n, s in zip(names, spread) if np.isfinite(s) and s < COLLAPSE_SPREAD]
    causes = ("likely causes: a learning rate far off (run `edgereg lr-find DATA`), too few epochs, "
              "the signal cropped or resized away (--crop, --size, --channels), labels that do not match "
              "the images, or a model that cannot fit (check with --sanity: overfit one batch)")
    if collapsed:
        warnings.append(f"MODEL COLLAPSE on {evaluation.name}: the predictions' spread is only "
                        f"{', '.join(collapsed)} the targets' spread: the model predicts (nearly) the mean; "
                        + causes)
    mean = evaluation.baselines.get("train_mean")
    if mean is not None and evaluation.metrics["rmse"] >= MEAN_BASELINE_MARGIN * mean["rmse"]:
        warnings.append(f"NO BETTER THAN THE MEAN on {evaluation.name}: RMSE {evaluation.metrics['rmse']:.4g} vs "
                        f"{mean['rmse']:.4g} for always answering the training mean; " + causes)
    return warnings


def memorisation_ratio(held_out: SplitEvaluation, seen: SplitEvaluation | None) -> float | None:
    """Held-out-group RMSE / seen-group RMSE (unseen photos of training groups), or None."""
    if seen is None or seen.metrics["rmse"] == 0:
        return None
    return held_out.metrics["rmse"] / seen.metrics["rmse"]


def memorisation_warning(held_out: SplitEvaluation, seen: SplitEvaluation | None) -> str | None:
    """A warning when group-held-out error is far above the seen-group error (seed 002)."""
    ratio = memorisation_ratio(held_out, seen)
    if ratio is None or ratio < MEMORISATION_FACTOR:
        return None
    return (f"MEMORISED GROUPS: the group-held-out error ({held_out.name}) is {ratio:.1f} x the seen-group "
            f"error (RMSE {held_out.metrics['rmse']:.4g} vs {seen.metrics['rmse']:.4g}); the model recognises "
            "training groups instead of reading the value: collect more groups, augment harder "
            "(--augment all), or use a smaller or invariant model (--model p4m_small)")


def build_metrics(kind: str, names: Sequence[str], units: Sequence[str], evaluations: dict[str, SplitEvaluation],
                  *, facts: dict) -> tuple[dict, list[str]]:
    """The metrics.json contents of a fit and its warnings (collapse on val/test, memorised groups).

    Args:
        kind, names, units: the targets.
        evaluations: "val", "test" and/or "seen" (unseen photos of training groups).
        facts: further JSON-ready entries (split sizes, training history, model, ...).

    Returns:
        (metrics dict, warnings).
    """
    warnings: list[str] = []
    for evaluation in evaluations.values():
        if evaluation.name != "seen":
            warnings += collapse_warnings(kind, names, evaluation)
    held_out = evaluations.get("test") or evaluations.get("val")
    seen = evaluations.get("seen")
    memorised = None if held_out is None else memorisation_warning(held_out, seen)
    warnings += [memorised] if memorised else []
    metrics = {
        "kind": kind, "targets": list(names), "units": list(units),
        **{name: evaluation.to_dict(names, kind) for name, evaluation in evaluations.items()},
        "memorisation": None if held_out is None or seen is None else {
            "held_out": held_out.name, "ratio": memorisation_ratio(held_out, seen)},
        "warnings": warnings,
        **facts,
    }
    return metrics, warnings


def format_summary(names: Sequence[str], units: Sequence[str], evaluations: dict[str, SplitEvaluation],
                   warnings: Sequence[str], *, trained: str, look_at: Path) -> str:
    """The printed summary: metrics table, baselines, how training went, then what to look at and
    the warnings (last, where they are seen)."""
    lines = [format_table(names, units, list(evaluations.values()))]
    held_out = evaluations.get("test") or evaluations.get("val")
    if held_out is not None:
        lines.append(format_baselines(held_out))
    lines.append(trained)
    lines.append(f"look at: {look_at} (loss curves, predicted vs true, residuals, baselines)")
    lines += [f"WARNING: {w}" for w in warnings]
    return "\n".join(lines)


def format_table(names: Sequence[str], units: Sequence[str], evaluations: Sequence[SplitEvaluation]) -> str:
    """Per-split, per-target RMSE / MAE / R² / max error as aligned text."""
    lines = [f"{'split':<6}{'target':<16}{'RMSE':>11}{'MAE':>11}{'R2':>8}{'max err':>11}  unit"]
    for evaluation in evaluations:
        for name, unit in zip(names, units):
            m = evaluation.metrics["targets"][name]
            r2 = "-" if m["r2"] is None else f"{m['r2']:.3f}"
            lines.append(f"{evaluation.name:<6}{name[:15]:<16}{m['rmse']:>11.4g}{m['mae']:>11.4g}{r2:>8}"
                         f"{m['max_error']:>11.4g}  {unit}")
        if len(names) > 1:
            m = evaluation.metrics
            lines.append(f"{evaluation.name:<6}{'(overall)':<16}{m['rmse']:>11.4g}{m['mae']:>11.4g}{'':>8}"
                         f"{m['max_error']:>11.4g}")
    return "\n".join(lines)


def format_baselines(evaluation: SplitEvaluation) -> str:
    """One line: each baseline's RMSE and how many times the model's RMSE is lower."""
    parts = []
    for name, ratio in evaluation.beats().items():
        label = BASELINE_LABELS.get(name, name)
        if ratio is None:
            verdict = "n/a"
        elif ratio >= 1:
            verdict = f"model {ratio:.2f}x better"
        elif ratio == 0:  # the baseline is exact (constant targets): no ratio to show
            verdict = "the baseline is exact"
        else:
            verdict = f"model {1 / ratio:.2f}x WORSE"
        parts.append(f"{label} {evaluation.baselines[name]['rmse']:.4g} ({verdict})")
    return f"baselines on {evaluation.name} (RMSE): " + "; ".join(parts)


def plot_report(path: str | Path, *, kind: str, names: Sequence[str], units: Sequence[str],
                history: Sequence[dict], evaluation: SplitEvaluation, max_targets: int = 4,
                race: Sequence[dict] | None = None) -> Path:
    """Write report.png: loss curves, RMSE vs baselines, per-bin or per-group errors, the model
    race (when there was one), and for each target (up to ``max_targets``) predicted vs true and
    residuals vs true.

    Args:
        path: the PNG to write.
        kind, names, units: the targets.
        history: per-epoch dicts with "epoch", "train_loss" and "val_rmse".
        evaluation: the split whose predictions are plotted (test when there is one).
        max_targets: rows of per-target plots.
        race: the race's entries (dicts with model, lr, rung, val_rmse, val_se, advanced).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    shown = list(names)[:max_targets]
    columns = 4 if race else 3
    figure = Figure(figsize=(13 * columns / 3, 3.6 * (1 + len(shown))), dpi=90)
    FigureCanvasAgg(figure)
    grid = figure.add_gridspec(1 + len(shown), columns)
    _plot_history(figure.add_subplot(grid[0, 0]), history)
    _plot_baselines(figure.add_subplot(grid[0, 1]), evaluation)
    _plot_breakdown(figure.add_subplot(grid[0, 2]), kind, names, evaluation)
    if race:
        _plot_race(figure.add_subplot(grid[0, 3]), race)
    errors = kind_data(kind).errors(evaluation.y_true, evaluation.y_pred)
    for row, name in enumerate(shown, start=1):
        j = list(names).index(name)
        unit = f" [{units[j]}]" if units[j] else ""
        truth, pred = evaluation.y_true[:, j], evaluation.y_pred[:, j]
        axes = figure.add_subplot(grid[row, 0])
        axes.scatter(truth, pred, s=6, alpha=0.6)
        low, high = float(min(truth.min(), pred.min())), float(max(truth.max(), pred.max()))
        axes.plot([low, high], [low, high], color="C3", linewidth=1, label="ideal")
        axes.set(xlabel=f"true {name}{unit}", ylabel=f"predicted {name}{unit}",
                 title=f"{evaluation.name}: predicted vs true ({name})")
        axes.legend(loc="upper left", fontsize=8)
        axes = figure.add_subplot(grid[row, 1:])
        axes.scatter(truth, errors[:, j], s=6, alpha=0.6)
        axes.axhline(0.0, color="C3", linewidth=1)
        axes.set(xlabel=f"true {name}{unit}", ylabel=f"residual{unit}",
                 title=f"{evaluation.name}: residual vs true ({name})")
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path)
    return path


def _plot_race(axes, race: Sequence[dict]) -> None:
    """Validation RMSE (± standard error) of every race candidate, one colour per rung."""
    labels, values, errors, colours = [], [], [], []
    for entry in race:
        labels.append(f"{entry['model']}\n{entry['lr']:.0e} r{entry['rung']}")
        values.append(entry["val_rmse"])
        se = entry.get("val_se")
        errors.append(0.0 if se is None or not np.isfinite(se) else se)
        colours.append(f"C{entry['rung']}" if entry.get("advanced") else "0.7")
    axes.bar(range(len(values)), values, yerr=errors, color=colours, capsize=2)
    axes.set_xticks(range(len(values)), labels, rotation=60, fontsize=6)
    axes.set(ylabel="validation RMSE", title="model race (grey: dropped)")


def _plot_history(axes, history: Sequence[dict]) -> None:
    epochs = [h["epoch"] for h in history]
    axes.plot(epochs, [h["train_loss"] for h in history], color="C0", marker=".", label="train loss")
    axes.set(xlabel="epoch", ylabel="train loss", title="loss curves")
    axes.set_yscale("log")
    val = [h.get("val_rmse") for h in history]
    if any(v is not None for v in val):
        twin = axes.twinx()
        twin.plot(epochs, val, color="C1", marker=".", label="val RMSE")
        twin.set_ylabel("validation RMSE (physical units)")
        twin.legend(loc="upper right", fontsize=8)
    axes.legend(loc="upper left", fontsize=8)


def _plot_baselines(axes, evaluation: SplitEvaluation) -> None:
    labels = ["model"] + [BASELINE_LABELS.get(n, n) for n in evaluation.baselines]
    values = [evaluation.metrics["rmse"]] + [m["rmse"] for m in evaluation.baselines.values()]
    axes.bar(range(len(values)), values, color=["C2"] + ["0.6"] * (len(values) - 1))
    axes.set_xticks(range(len(values)), labels, rotation=20, fontsize=8)
    axes.set(ylabel="RMSE", title=f"{evaluation.name}: model vs baselines")


def _plot_breakdown(axes, kind: str, names: Sequence[str], evaluation: SplitEvaluation) -> None:
    """Per-bin MAE for distributions, else per-group RMSE when there are groups, else per-target MAE."""
    if not kind_data(kind).bins and "groups" in evaluation.metrics:
        groups = evaluation.metrics["groups"]
        keys = sorted(groups, key=lambda g: -groups[g]["rmse"])[:20]
        axes.bar(range(len(keys)), [groups[g]["rmse"] for g in keys], color="C4")
        axes.set_xticks(range(len(keys)), keys, rotation=60, fontsize=7)
        axes.set(ylabel="RMSE", title=f"{evaluation.name}: per-group RMSE (worst 20)")
        return
    maes = [evaluation.metrics["targets"][n]["mae"] for n in names]
    axes.bar(range(len(names)), maes, color="C4")
    axes.set_xticks(range(len(names)), list(names), rotation=20, fontsize=8)
    title = "per-bin MAE" if kind_data(kind).bins else "per-target MAE"
    axes.set(ylabel="MAE", title=f"{evaluation.name}: {title}")
