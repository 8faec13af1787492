"""The int8 accuracy gate: quantize, measure fp32 and int8 in the user's units, keep int8 only if it holds.

Both models are scored as deployed (``edgereg.Predictor``, no TTA) on held-out images against their
labels, with ``edgereg.data.metrics.compute_metrics``: RMSE, max error and per-target errors in
physical units (coords in source pixels, angles in degrees). The int8 model passes when its RMSE,
overall and for every target, is at most ``(1 + max_drop)`` times the fp32 model's. Checking each
target catches the failure an overall RMSE hides: one small-range output rounded to a constant.

Which calibration method, which activation type and which layers stay float is decided by
``edgereg.export.int8.search`` (accuracy control when the gate fails, speed control when int8 is
slow); the gate judges the configuration it settles on. Every choice uses the gate split, so the
report also scores both models on a second held-out split (test) when there is one, which no choice
has seen.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgereg.core.card import ModelCard
from edgereg.core.kinds import TargetKind, target_kind
from edgereg.errors import EdgeregError, require_extra
from edgereg.export.int8.search import CALIBRATION_BUDGET_S, search_int8
from edgereg.export.int8.verdict import DEFAULT_MAX_DROP, GateResult, check_gate, rmse_changes, validate_max_drop
from edgereg.files import atomic_path


@dataclass(frozen=True)
class EvalSet:
    """Labelled images to score models on.

    Attributes:
        frames: (N, H, W, 3) uint8 BGR, already cropped and resized to the model input
            (``edgereg.preprocess.crop_resize``).
        targets: (N, T) float64 in the user's units (coords in source pixels, angles in degrees).
        crop_boxes: (N, 4) float64 (x0, y0, w, h) of each frame's crop in source pixels, used to
            map coords to source pixels; None for kinds other than coords.
        split: which part of the data this is ("val", "test", or a dataset name), reported with
            every number.
        groups: (N,) group labels, or None.
    """

    frames: np.ndarray
    targets: np.ndarray
    crop_boxes: np.ndarray | None
    split: str
    groups: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def boxes(self) -> list | None:
        """Each frame's ``edgereg.preprocess.CropBox`` for the Predictor, or None without crop boxes."""
        from edgereg.preprocess import CropBox

        return None if self.crop_boxes is None else [CropBox(*map(float, box)) for box in self.crop_boxes]


def eval_set(dataset, index: np.ndarray | None, *, kind: str | TargetKind, split: str) -> EvalSet:
    """The rows ``index`` of a loaded dataset as an EvalSet in the user's units.

    Args:
        dataset: ``edgereg.data.dataset.Dataset`` (images cropped and resized; targets in model
            units, i.e. coords in [0, 1] of the input; ``crop_boxes (N, 4)``).
        index: (M,) int rows to take, or None for every row (the images are then not copied).
        kind: target kind.
        split: the name to report ("val", "test", ...).
    """
    index = slice(None) if index is None else np.asarray(index, dtype=np.int64)
    boxes = np.asarray(dataset.crop_boxes, dtype=np.float64)[index] if target_kind(kind).xy_points else None
    groups = None if dataset.groups is None else np.asarray(dataset.groups)[index]
    return EvalSet(frames=dataset.images[index], targets=to_user_units(kind, dataset.targets[index], boxes),
                   crop_boxes=boxes, split=split, groups=groups)


def to_user_units(kind: str | TargetKind, values: np.ndarray, crop_boxes: np.ndarray | None) -> np.ndarray:
    """Model-output units -> the user's units: coords from [0, 1] of the input to source pixels.

    Args:
        kind: target kind.
        values: (N, T) float, as the ONNX model outputs them (or as the dataset stores targets).
        crop_boxes: (N, 4) float64 (x0, y0, w, h); required for coords.

    Returns:
        (N, T) float64.
    """
    return target_kind(kind).to_user_units(values, crop_boxes)


def predict(model_path: str | Path, evalset: EvalSet, *, card: ModelCard | None = None,
            batch_size: int = 64) -> np.ndarray:
    """Score a model on an EvalSet exactly as the runtime would (no TTA).

    Returns:
        (N, T) float64 in the user's units (coords in source pixels).
    """
    from edgereg.core.predictor import Predictor

    predictor = Predictor(model_path, providers="cpu", tta="none", batch_size=batch_size, card=card)
    return predictor.predict_prepared(evalset.frames, evalset.boxes).values


def score(readings: np.ndarray, evalset: EvalSet, card: ModelCard) -> dict:
    """Metrics (``compute_metrics``) of readings ``(N, T)`` in the user's units against the EvalSet's labels.

    The one place a model is scored against labels in export and ``edgereg eval``.
    """
    from edgereg.data.metrics import compute_metrics

    return compute_metrics(card.kind, evalset.targets, readings, card.targets, groups=evalset.groups)


def evaluate(model_path: str | Path, evalset: EvalSet, *, card: ModelCard) -> dict:
    """:func:`score` of a model read as deployed (:func:`predict`), plus ``"split"``."""
    return {"split": evalset.split, **score(predict(model_path, evalset, card=card), evalset, card)}


@dataclass(frozen=True)
class Int8Export:
    """The result of :func:`quantize_with_gate`.

    Attributes:
        path: the written int8 model, or None when the gate failed (nothing is written then).
        gate: the verdict on the chosen configuration.
        method: the calibration method kept; activations: "int8" or "uint8".
        fp32_metrics, int8_metrics: on the gate split (see :func:`evaluate`).
        candidates: overall int8 RMSE on the gate split per calibration method tried.
        holdout: ``{"fp32": metrics, "int8": metrics}`` on a second held-out split, or None.
        card: the card embedded (with ``quantization``), or the one that would have been.
        float_nodes: graph nodes kept in float.
        layers: per-layer sensitivity and decisions (``int8_search.LayerReport``).
        steps: the search's decisions, one line each.
        speed: int8 against fp32 on this machine and the recommendation, or None when not measured.
    """

    path: Path | None
    gate: GateResult
    method: str
    fp32_metrics: dict
    int8_metrics: dict
    candidates: dict[str, float]
    holdout: dict | None
    card: ModelCard
    float_nodes: tuple[str, ...]
    activations: str = "int8"
    layers: tuple = ()
    steps: tuple[str, ...] = ()
    speed: dict | None = None
    holdout_values: np.ndarray | None = None  # (N, T) the int8 model's readings of the holdout split


def quantize_with_gate(fp32_path: str | Path, out_path: str | Path, *, card: ModelCard, calibration: np.ndarray,
                       evalset: EvalSet, methods: Sequence[str] | None = None, max_drop: float = DEFAULT_MAX_DROP,
                       per_channel: bool = True, keep_head_float: bool = True,
                       keep_first_float: bool = True, holdout: EvalSet | None = None,
                       calibration_info: dict | None = None, max_float_layers: int | None = None,
                       measure_speed: bool = True, budget_s: float | None = CALIBRATION_BUDGET_S,
                       log=lambda line: None, fp32_metrics: dict | None = None,
                       holdout_fp32: dict | None = None) -> Int8Export:
    """Quantize, let the search (``edgereg.export.int8.search``) decide which layers stay float, and
    write the int8 model only if it passes the gate.

    Args:
        fp32_path: the exported fp32 model (with its card).
        out_path: where the int8 model goes (``model.int8.onnx``); written atomically, on a pass only.
        card: the fp32 model's card; the int8 card adds ``quantization``.
        calibration: (N, C, H, W) float32 normalized calibration images (``preprocess_batch`` output).
        evalset: the gate split (validation, or test when the run has no validation split).
        methods: calibration methods to try (default: all of minmax, entropy, percentile).
        max_drop: allowed relative RMSE increase of int8 over fp32.
        per_channel, keep_head_float, keep_first_float: see ``QuantizeOptions``.
        holdout: an optional second split scored for the report only.
        calibration_info: facts about the calibration images for the card (source, fingerprint).
        max_float_layers: the most layers accuracy control may keep float (None: half of them;
            0: no accuracy control).
        measure_speed: choose the activation type and run the speed control by timing on this machine.
        budget_s: wall seconds the calibrators may take together (``--int8-budget``; see
            ``edgereg.export.int8.search``); None = no limit.
        log: receives the search's decisions, one line each.
        fp32_metrics, holdout_fp32: the fp32 model's :func:`evaluate` on ``evalset`` / ``holdout``
            when the caller has it already (None: measured here).

    Returns:
        Int8Export; ``path`` is None when the gate failed.
    """
    onnx = require_extra("onnx")
    from edgereg.export.card_io import embed_card
    from edgereg.export.int8.quantize import CALIBRATION_METHODS, QuantizeOptions, Quantizer
    from edgereg.preprocess import PreprocessConfig, preprocess_batch

    methods = tuple(methods or CALIBRATION_METHODS)
    validate_max_drop(max_drop)
    if max_float_layers is not None and max_float_layers < 0:
        raise EdgeregError(f"--max-float-layers must be >= 0, got {max_float_layers}")
    out_path = Path(out_path)
    fp32_metrics = evaluate(fp32_path, evalset, card=card) if fp32_metrics is None else fp32_metrics
    gate_images = preprocess_batch(evalset.frames[:64], PreprocessConfig.from_card(card))  # (n, C, H, W)
    with tempfile.TemporaryDirectory(prefix=".edgereg-int8-", dir=out_path.parent) as tmp:
        options = QuantizeOptions(per_channel=per_channel, keep_head_float=keep_head_float,
                                  keep_first_float=keep_first_float)
        quantizer = Quantizer(fp32_path, calibration, workdir=tmp, options=options)
        found = search_int8(quantizer, lambda path: evaluate(path, evalset, card=card), fp32_metrics,
                            Path(fp32_path), methods=methods, max_drop=max_drop, max_float_layers=max_float_layers,
                            measure_speed=measure_speed, gate_images=gate_images, budget_s=budget_s, log=log)
        int8_metrics = found.metrics
        gate = check_gate(fp32_metrics, int8_metrics, max_drop=max_drop)
        chosen = found.path
        scored_holdout = holdout_values = None
        if holdout is not None and len(holdout):
            holdout_values = predict(chosen, holdout, card=card)
            scored_holdout = {"fp32": evaluate(fp32_path, holdout, card=card) if holdout_fp32 is None else holdout_fp32,
                              "int8": {"split": holdout.split, **score(holdout_values, holdout, card)}}
        float_layers = [{"name": layer.name, "op_type": layer.op_type, "why": layer.why}
                        for layer in found.layers if layer.float]
        quantization = {
            "format": "QDQ",
            "weights": "int8, symmetric, " + ("per output channel" if per_channel else "per tensor"),
            "activations": f"{found.activations}, asymmetric, per tensor",
            "method": found.method,
            "methods_tried": found.methods_tried,
            "calibration": {"images": int(len(calibration)), **(calibration_info or {}),
                            "budget_s": budget_s, "plans": found.calibration},
            "float_nodes": list(found.float_nodes),
            "float_layers": float_layers,
            "int8_layers": sum(1 for layer in found.layers if not layer.float),
            "gate": {**gate.to_dict(), "fp32": _summary_metrics(fp32_metrics), "int8": _summary_metrics(int8_metrics)},
            "rmse_change": rmse_changes(fp32_metrics, int8_metrics),
            "speed": _card_speed(found.speed),
        }
        int8_card = card.with_(quantization=quantization)
        path = None
        if gate.passed:
            model = onnx.load(str(chosen))
            onnx.checker.check_model(model)
            embed_card(model, int8_card)
            with atomic_path(out_path, temp_name=out_path.name + ".partial") as partial:
                onnx.save(model, str(partial))
            path = out_path
    return Int8Export(path=path, gate=gate, method=found.method, fp32_metrics=fp32_metrics,
                      int8_metrics=int8_metrics, candidates=found.methods_tried, holdout=scored_holdout,
                      card=int8_card, float_nodes=found.float_nodes, activations=found.activations,
                      layers=found.layers, steps=found.steps, speed=found.speed, holdout_values=holdout_values)


def _card_speed(speed: dict | None) -> dict:
    """The card's record of int8 against fp32 on the export machine (what `infer` / `info` read)."""
    import platform

    if speed is None:
        return {"measured": False}
    return {"measured": True, "int8_vs_fp32": {str(b): round(r, 3) for b, r in speed["int8_vs_fp32"].items()},
            "threads": speed["threads"], "machine": _cpu_name() or platform.machine(),
            "recommended": speed["recommended"], **({"note": speed["note"]} if "note" in speed else {})}


def _cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo ("" where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def _summary_metrics(metrics: dict) -> dict:
    """The card-sized part of a metrics dict: overall and per-target RMSE and max error."""
    targets = {name: {"rmse": t["rmse"], "max_error": t["max_error"]} for name, t in metrics["targets"].items()}
    return {"rmse": metrics["rmse"], "max_error": metrics["max_error"], "targets": targets}
