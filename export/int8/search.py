"""Accuracy- and speed-controlled int8: which layers stay float, decided by measurement.

What NNCF's ``quantize_with_accuracy_control`` does for OpenVINO, done on ONNX Runtime's own tooling
(``quantize_static`` with ``nodes_to_exclude``, its calibrators, ``qdq_loss_debug`` and its profiler):

1. Calibration method: every method asked for is quantized with the base float set (the float head
   and, by default, the float first layer) and scored in the user's units on the gate split; the
   most accurate is kept. The calibrators share a time budget (``budget_s``, ``--int8-budget``):
   minmax always runs in full; entropy and percentile are timed on a first batch and then
   subsampled (fewer images, fewer histogram bins) or skipped to fit (``edgereg.export.int8.calib_budget``),
   and the report says which and why.
2. Activation type: int8 (S8S8) and uint8 (U8S8) activations are timed side by side against fp32.
   The CPU's fast path is kept (uint8 on x86, where ONNX Runtime's fused QLinearAdd, QLinearConcat,
   ... exist for uint8 and VNNI multiplies u8 by s8; int8 on ARM) unless the other is at least
   ``MIN_GAIN`` faster, or only the other passes the gate.
3. Sensitivity: every quantized layer (a Conv/Gemm with its fused activation, or an Add, Concat,
   MaxPool, GlobalAveragePool) is in turn kept float while the rest stays int8, and the model is
   scored on the gate split: the gate's worst relative RMSE increase with that layer float is the
   layer's damage. The export report lists it for every layer, next to the layer's SQNR (signal to
   quantization noise of its output, in dB, from ``onnxruntime.quantization.qdq_loss_debug``).
4. Accuracy control: when the gate fails, the layers whose float copy helps most are kept float
   one at a time, most helpful first, each step scored again (damage is not additive), until the
   gate passes or ``max_float_layers`` are float (then no int8 model is written). The gate stays
   the judge.
5. Speed control: the int8 model is timed against fp32 at batch 32. While it is below
   ``SPEED_GOAL``, the layers whose int8 form costs more time than their float form (ONNX Runtime's
   profiler, per layer, int8 model against fp32 model: e.g. QDQ around an op without a fast int8
   kernel, a dilated 12-channel convolution, an int8 MaxPool in NCHW) are kept float one at a time,
   slowest first, and a step is kept only when the whole model gets measurably faster and still
   passes the gate; a float first layer is tried in int8 too (it is most of the work of an MLP).
   The verdict: int8 is recommended when it is faster than fp32 at batch 32 on this machine,
   otherwise the card and report recommend fp32 and ``edgereg infer`` / ``info`` say so.

Speed decisions are taken on single-thread timings (:func:`edgereg.export.speed.compare_speed` with
one ONNX Runtime thread, timed by the CPU time of the thread that runs the model): on a shared
machine they move least with other processes' load (identical models measure within ~3% of each
other here, against 2x in wall time with two threads), and int8 against fp32 is a question about
kernels, which one thread answers. A step must gain ``MIN_GAIN`` to be kept, so noise does not
accumulate float layers. Per-layer times come from ONNX Runtime's profiler (wall time), used only
to rank the candidates; every decision is taken on a whole-model comparison.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgereg.export.int8.verdict import check_gate

SPEED_GOAL = 1.3  # int8 / fp32 images/s at batch 32 the speed control aims for
MIN_GAIN = 1.05  # a speed step is kept only when it is at least this much faster than the model before it
SPEED_BATCH = 32  # batch size of speed decisions
MAX_SPEED_STEPS = 4  # slow layers tried in float, slowest first
SQNR_IMAGES = 32  # gate images the per-layer SQNR is measured on
CALIBRATION_BUDGET_S = 100.0  # default wall seconds for all calibrators together (--int8-budget)


@dataclass(frozen=True)
class LayerReport:
    """One quantizable layer: how much int8 hurts it, and whether it stayed float.

    Attributes:
        name: the layer's main node; op_type: its op.
        drop_if_float: the gate's worst relative RMSE increase (overall or per target) of the model
            with only this layer (beyond the base float set) in float; lower = this layer does more
            damage in int8. None when not measured.
        sqnr_db: signal-to-quantization-noise ratio of the layer's output in the final int8 model
            against fp32, in dB (higher = closer), None where the tensor was not compared.
        int8_us, fp32_us: profiler time of the layer per batch-32 run in the int8 and fp32 models.
        float: whether the layer stayed float in the written model; why: "first layer", "accuracy",
            "speed" or "" (int8).
    """

    name: str
    op_type: str
    drop_if_float: float | None = None
    sqnr_db: float | None = None
    int8_us: float | None = None
    fp32_us: float | None = None
    float: bool = False
    why: str = ""

    def to_dict(self) -> dict:
        return {"name": self.name, "op_type": self.op_type, "drop_if_float": self.drop_if_float,
                "sqnr_db": self.sqnr_db, "int8_us": self.int8_us, "fp32_us": self.fp32_us,
                "float": self.float, "why": self.why}


@dataclass(frozen=True)
class SearchResult:
    """What the search settled on.

    Attributes:
        path: the chosen int8 model (in the search's scratch folder).
        method, activations: calibration method and activation type.
        float_nodes: every node kept float (base set included).
        metrics: the chosen model's metrics on the gate split.
        methods_tried: {method: overall RMSE of the base configuration}.
        layers: per-layer sensitivity and decisions, in graph order.
        steps: one line per decision, in order (for the report).
        speed: {"int8_vs_fp32": {batch: ratio}, "images_per_s": {...}, "threads": 1,
            "recommended": "int8" | "fp32", "note": str} or None when speed was not measured.
        calibration: {method: ``CalibrationPlan.to_dict()``}: images and bins each calibrator
            used, its predicted and measured seconds, and what was subsampled or skipped and why.
    """

    path: Path
    method: str
    activations: str
    float_nodes: tuple[str, ...]
    metrics: dict
    methods_tried: dict[str, float]
    layers: tuple[LayerReport, ...]
    steps: tuple[str, ...]
    speed: dict | None = None
    gate_passed: bool = False
    calibration: dict[str, dict] = field(default_factory=dict)


@dataclass
class _State:
    """The configuration under consideration and its scores."""

    float_layers: dict[str, str] = field(default_factory=dict)  # layer name -> why
    path: Path | None = None
    metrics: dict | None = None
    drop: float = float("inf")


def search_int8(quantizer, evaluate: Callable[[Path], dict], fp32_metrics: dict, fp32_path: Path, *,
                methods: Sequence[str], max_drop: float, max_float_layers: int | None = None,
                measure_speed: bool = True, gate_images: np.ndarray | None = None,
                budget_s: float | None = CALIBRATION_BUDGET_S, clock: Callable[[], float] = time.perf_counter,
                log: Callable[[str], None] = lambda line: None) -> SearchResult:
    """Run the search described in the module docstring.

    Args:
        quantizer: an ``edgereg.export.int8.quantize.Quantizer`` of the fp32 model.
        evaluate: scores a model path on the gate split (``edgereg.export.int8.gate.evaluate``).
        fp32_metrics: the fp32 model's metrics on the same split.
        fp32_path: the fp32 model (for speed and SQNR comparisons).
        methods: calibration methods to try.
        max_drop: the gate's allowed relative RMSE increase.
        max_float_layers: the most layers accuracy control may keep float beyond the base set
            (default: half of the quantizable layers, rounded up); 0 turns accuracy control off.
        measure_speed: time int8 against fp32 and run the speed control.
        gate_images: (N, C, H, W) float32 normalized gate images for the SQNR, or None to skip it.
        budget_s: wall seconds the calibrators may take together (minmax always runs in full; the
            histogram calibrators are subsampled or skipped to fit); None = no limit.
        clock: seconds, monotonic (tests pass a fake one).
        log: receives one line per decision.

    Returns:
        SearchResult; ``gate_passed`` False when no configuration passed.
    """
    workdir = quantizer.workdir
    layers = {layer.name: layer for layer in quantizer.layers}
    first = set(quantizer.first)
    if max_float_layers is None:
        max_float_layers = -(-len(layers) // 2)
    steps: list[str] = []
    counter = iter(range(1_000_000))

    def note(line: str) -> None:
        steps.append(line)
        log(line)

    head = (quantizer.head if quantizer.options.keep_head_float else ()) + quantizer.fixed

    def nodes_for(float_layers: dict[str, str]) -> tuple[str, ...]:
        """The head (when kept float), the fixed feature blocks and every node of the float layers."""
        return tuple(dict.fromkeys([*head, *(node for name in float_layers for node in layers[name].nodes)]))

    def build(method: str, activations: str, float_layers: dict[str, str]) -> _State:
        path = workdir / f"candidate-{next(counter)}.onnx"
        quantizer.quantize(path, method=method, activations=activations, float_nodes=nodes_for(float_layers))
        metrics = evaluate(path)
        drop = check_gate(fp32_metrics, metrics, max_drop=max_drop).worst_drop
        return _State(dict(float_layers), path, metrics, drop)

    initial = {name: "first layer" for name in layers if name in first and quantizer.options.keep_first_float}

    # 1. calibration method, on the base configuration, within the calibration budget
    tried = {method: build(method, "int8", initial)
             for method in _calibrate_within(quantizer, methods, budget_s, clock, note)}
    method = min(tried, key=lambda m: tried[m].metrics["rmse"])
    state = tried[method]
    note(f"calibration: {method} (overall RMSE by method: "
         + ", ".join(f"{m} {tried[m].metrics['rmse']:.4g}" for m in tried) + ")")

    # 2. activation type: the platform's fast path unless the other is measurably faster
    activations = "int8"
    if measure_speed:
        unsigned = build(method, "uint8", initial)
        candidates = {"int8": state, "uint8": unsigned}
        rates = _compare(fp32_path, {"int8": state.path, "uint8": unsigned.path}, batches=(SPEED_BATCH,))
        preferred = preferred_activations()
        other = "int8" if preferred == "uint8" else "uint8"
        activations = other if rates[other] >= MIN_GAIN * rates[preferred] else preferred
        if candidates[activations].drop > max_drop >= candidates[other if activations == preferred else preferred].drop:
            activations = other if activations == preferred else preferred  # only the other one passes the gate
        state = candidates[activations]
        note(f"activations: {activations} (batch {SPEED_BATCH}, 1 thread, int8/fp32: int8 {rates['int8']:.2f}x, "
             f"uint8 {rates['uint8']:.2f}x; {preferred} preferred on this CPU)")

    # 3. sensitivity of every layer that is int8 in the base configuration
    drops: dict[str, float] = {}
    for name in layers:
        if name in state.float_layers:
            continue
        trial = build(method, activations, {**state.float_layers, name: "accuracy"})
        drops[name] = trial.drop

    # 4. accuracy control
    if state.drop > max_drop:
        note(f"gate fails with {len(state.float_layers)} float layer(s): worst {state.drop:+.1%} "
             f"(allowed {max_drop:+.1%}); keeping the most damaging layers float")
        ranked = sorted(drops, key=lambda n: drops[n])
        added = 0
        for name in ranked:
            if added >= max_float_layers or state.drop <= max_drop:
                break
            state = build(method, activations, {**state.float_layers, name: "accuracy"})
            added += 1
            note(f"  float {name} ({layers[name].op_type}): worst {state.drop:+.1%}")
    passed = state.drop <= max_drop
    if not passed:
        note(f"gate still fails with {len(state.float_layers)} float layer(s) (at most {max_float_layers} "
             "beyond the first layer may be float)")

    # 5. speed control
    speed = None
    times: dict[str, tuple[float, float]] = {}
    if measure_speed and passed:
        state, times = _speed_control(state, build, method, activations, fp32_path, layers, quantizer, max_drop,
                                      note)
        rates = compare_both(fp32_path, state.path)
        recommended = "int8" if rates["int8_vs_fp32"][SPEED_BATCH] > 1.0 else "fp32"
        speed = {**rates, "threads": 1, "recommended": recommended}
        if recommended == "fp32":
            speed["note"] = (f"int8 is not faster than fp32 at batch {SPEED_BATCH} on the export machine "
                             f"({rates['int8_vs_fp32'][SPEED_BATCH]:.2f}x); use model.onnx here")
        note("speed: int8/fp32 " + ", ".join(f"batch {b} {r:.2f}x" for b, r in rates["int8_vs_fp32"].items())
             + f" -> recommended {recommended}")

    sqnr = _layer_sqnr(fp32_path, state.path, quantizer, gate_images) if gate_images is not None and passed else {}
    reports = tuple(
        LayerReport(name=name, op_type=layer.op_type, drop_if_float=drops.get(name),
                    sqnr_db=sqnr.get(layer.output), int8_us=times.get(name, (None, None))[0],
                    fp32_us=times.get(name, (None, None))[1], float=name in state.float_layers,
                    why=state.float_layers.get(name, ""))
        for name, layer in layers.items())
    return SearchResult(path=state.path, method=method, activations=activations,
                        float_nodes=nodes_for(state.float_layers), metrics=state.metrics,
                        methods_tried={m: tried[m].metrics["rmse"] for m in tried}, layers=reports,
                        steps=tuple(steps), speed=speed, gate_passed=passed,
                        calibration={m: plan.to_dict() for m, plan in quantizer.plans.items()})


def _calibrate_within(quantizer, methods: Sequence[str], budget_s: float | None, clock, note) -> list[str]:
    """Calibrate ``methods`` in ``budget_s`` seconds; the methods that ran, in the order asked.

    minmax runs first and in full (one pass, no search). Each histogram calibrator then gets an
    equal share of what is left (a share it does not use passes to the next); its time plan
    (``edgereg.export.int8.calib_budget``) subsamples images or bins to fit, or skips it. When every
    method asked for was skipped, minmax is used instead.
    """
    ordered = sorted(methods, key=lambda m: m != "minmax")
    started = clock()
    for index, method in enumerate(ordered):
        share = None
        if budget_s is not None and method != "minmax":
            share = (budget_s - (clock() - started)) / (len(ordered) - index)
        plan = quantizer.calibrate(method, seconds=share, clock=clock)
        if plan.note:
            note(f"calibration {method}: {plan.note}")
    ran = [m for m in methods if not quantizer.plans[m].skipped]
    if not ran:
        note("calibration: every method asked for was skipped; using minmax")
        quantizer.calibrate("minmax", clock=clock)
        ran = ["minmax"]
    return ran


def preferred_activations() -> str:
    """ONNX Runtime's fast int8 path on this CPU: uint8 activations (U8S8) on x86, int8 (S8S8) elsewhere.

    On x86 the fused int8 kernels for Add, Concat, ... exist for uint8 and VNNI multiplies u8 by s8;
    on ARM the S8S8 dot-product kernels are the fast ones (ONNX Runtime's quantization guide).
    """
    import platform

    return "uint8" if platform.machine().lower() in ("x86_64", "amd64", "i386", "i686") else "int8"


def _speed_control(state: _State, build, method: str, activations: str, fp32_path: Path, layers: dict,
                   quantizer, max_drop: float, note) -> tuple[_State, dict[str, tuple[float, float]]]:
    """Keep slow layers float (and try an int8 first layer) while int8 is below SPEED_GOAL."""
    ratio = _compare(fp32_path, {"int8": state.path}, batches=(SPEED_BATCH,))["int8"]
    times = layer_times(fp32_path, state.path, quantizer)
    if ratio >= SPEED_GOAL:
        return state, times
    note(f"int8 is {ratio:.2f}x fp32 at batch {SPEED_BATCH} (goal {SPEED_GOAL}x); trying slow layers in float")
    slow = sorted((name for name, (int8_us, fp32_us) in times.items()
                   if name not in state.float_layers and int8_us > fp32_us),
                  key=lambda name: times[name][1] - times[name][0])
    moves = [(name, "speed") for name in slow[:MAX_SPEED_STEPS]]
    moves += [(name, "quantize") for name, why in state.float_layers.items() if why == "first layer"]
    for name, action in moves:
        if ratio >= SPEED_GOAL:
            break
        float_layers = dict(state.float_layers)
        if action == "speed":
            float_layers[name] = "speed"
        else:
            float_layers.pop(name)
        trial = build(method, activations, float_layers)
        verb = "float" if action == "speed" else "int8"
        if trial.drop > max_drop:
            note(f"  {verb} {name}: gate would fail ({trial.drop:+.1%}); not kept")
            continue
        rates = _compare(fp32_path, {"current": state.path, "trial": trial.path}, batches=(SPEED_BATCH,))
        if rates["trial"] >= MIN_GAIN * rates["current"]:
            state, ratio = trial, rates["trial"]
            note(f"  {verb} {name}: {rates['trial']:.2f}x fp32 (was {rates['current']:.2f}x); kept")
        else:
            note(f"  {verb} {name}: {rates['trial']:.2f}x fp32 against {rates['current']:.2f}x; not kept")
    return state, times


def _compare(fp32_path: Path, models: dict[str, Path], *, batches: Sequence[int]) -> dict[str, float]:
    """{name: images/s ratio to fp32 at the first batch size}, single-thread, measured side by side."""
    from edgereg.export.speed import compare_speed

    rates = compare_speed({"fp32": fp32_path, **models}, batch_sizes=batches, threads=1, rounds=7, repeats=3)
    batch = batches[0]
    return {name: rates[name][batch] / rates["fp32"][batch] for name in models}


def compare_both(fp32_path: Path, int8_path: Path, *, batches: Sequence[int] = (1, SPEED_BATCH)) -> dict:
    """int8 against fp32 at each batch size: {"int8_vs_fp32": {b: ratio}, "images_per_s": {...}}."""
    from edgereg.export.speed import compare_speed

    rates = compare_speed({"fp32": fp32_path, "int8": int8_path}, batch_sizes=batches, threads=1, rounds=7,
                          repeats=3)
    return {"int8_vs_fp32": {b: rates["int8"][b] / rates["fp32"][b] for b in batches},
            "images_per_s": {name: {b: rates[name][b] for b in batches} for name in rates}}


_SUFFIXES = re.compile(r"(_token_\d+|_nchwc|_QuantizeLinear|_DequantizeLinear|_quantized|_output_quantized)+$")


def layer_times(fp32_path: Path, int8_path: Path, quantizer) -> dict[str, tuple[float, float]]:
    """{layer name: (microseconds in the int8 model, in the fp32 model)} per batch-32 run, single thread.

    Profiler events are mapped back to the graph the quantizer prepared: a fused node keeps the name
    of the node it grew from (``..._token_N``); an NCHWc convolution is named after its output tensor
    (``<tensor>_nchwc``); a QuantizeLinear / DequantizeLinear after the tensor it converts, whose
    producer's layer pays for it. Layout conversions ONNX Runtime inserted (Transpose, Reorder*)
    belong to no layer and are left out.
    """
    from edgereg.export.speed import profile_nodes

    owner: dict[str, str] = {}
    for layer in quantizer.layers:
        for node in layer.nodes:
            owner[node] = layer.name
    producer = {out: node.name for node in quantizer.model.graph.node for out in node.output}

    def attribute(profile: dict[str, float]) -> dict[str, float]:
        totals: dict[str, float] = {}
        for key, microseconds in profile.items():
            name = _SUFFIXES.sub("", key.rsplit("|", 1)[0])
            node = name if name in owner else producer.get(name)
            layer = owner.get(node) if node else None
            if layer is not None:
                totals[layer] = totals.get(layer, 0.0) + microseconds
        return totals

    int8 = attribute(profile_nodes(int8_path, batch_size=SPEED_BATCH, threads=1))
    fp32 = attribute(profile_nodes(fp32_path, batch_size=SPEED_BATCH, threads=1))
    return {name: (int8.get(name, 0.0), fp32.get(name, 0.0)) for name in owner.values() if name in int8 or name in fp32}


def _layer_sqnr(fp32_path: Path, int8_path: Path, quantizer, images: np.ndarray) -> dict[str, float]:
    """{tensor name: SQNR in dB of the int8 model's activation against fp32's} on up to SQNR_IMAGES images.

    Uses ``onnxruntime.quantization.qdq_loss_debug``: both models get every intermediate tensor as an
    output, run on the same images, and each QDQ'd activation is compared with its float original.
    """
    import contextlib
    import io

    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        compute_activation_error,
        create_activation_matching,
        modify_model_output_intermediate_tensors,
    )

    from edgereg.core.card import INPUT_NAME

    workdir = quantizer.workdir
    batch = np.ascontiguousarray(images[:SQNR_IMAGES], dtype=np.float32)
    augmented = {}
    for name, path in (("fp32", quantizer.prepared), ("int8", int8_path)):
        augmented[name] = workdir / f"sqnr-{name}.onnx"
        modify_model_output_intermediate_tensors(str(path), str(augmented[name]))
    with contextlib.redirect_stdout(io.StringIO()):
        acts = {name: collect_activations(str(path), [{INPUT_NAME: batch}]) for name, path in augmented.items()}
    matching = create_activation_matching(acts["int8"], acts["fp32"])
    errors = compute_activation_error(matching)
    return {name: float(err["xmodel_err"]) for name, err in errors.items() if "xmodel_err" in err}
