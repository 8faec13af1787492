"""fp32 ONNX -> int8 QDQ ONNX with ONNX Runtime's static quantization.

The library does the work (``quant_pre_process``, ``quantize_static``, its calibrators); this
module supplies what is edgereg's: the calibration images (already through edgereg's own
preprocessing), the choice of calibration method, and which nodes stay in float.

Float head. The regressor's last learned layer (the Conv/Gemm nearest the output) and everything
after it (sigmoid range scaling, de-standardization, softmax, atan, the soft-argmax of a heatmap)
stay in float. Quantizing them puts one int8 scale across outputs of very
different ranges, which rounds the small ones to zero (Ultralytics saw exactly this on detection
heads), and for a bounded scalar it quantizes the logit right where the sigmoid is steepest. The
head is a few hundred multiply-adds; every convolution before it is int8. ``keep_head_float=False``
(``edgereg export --quantize-head``) quantizes it too, to measure the difference.

Float first layer. The first learned layer also stays in float, so the network's input (the
normalized image) is never quantized: one int8 scale and zero point shared by three channels of
different means and spreads coarsens each channel beyond its 256 original levels, and a model that
reads a value from a colour lives on exactly those levels. Measured on the demo's assay model
(cnn_small, 2,000 images, 40 epochs, 256 calibration images, minmax, val RMSE in mg/L): fp32 2.62;
int8 with only the head float 4.31 (+64%, the gate refuses it); int8 with the first Conv float too
2.48. 16-bit activations reach the same 2.50 but need opset 21 and run without int8 kernels. The
first layer is a small part of the compute (3 input channels); ``keep_first_float=False``
(``edgereg export --quantize-first``) quantizes it too.

Measured here (cnn_small, 400 synthetic images, 15 epochs, 256 calibration images, val RMSE of the
kept calibrator, float head vs quantized head): assay 4.113 vs 4.156 mg/L; gravel 0.1251 vs 0.1251;
pixelstats 0.02481 vs 0.02492. The difference is small because the head sees standardized values
(one scale suits every output) and the de-standardization after it is float either way; the float
head is also the smaller file (95.2 vs 98.3 KiB: fewer QDQ nodes). It stays the default as the safe
side for heads whose raw outputs differ in range.

These are the starting point. :class:`Quantizer` prepares and calibrates a model once and then
quantizes it with any set of float nodes in tens of milliseconds, which lets
``edgereg.export.int8.search`` decide per layer (:func:`quantizable_layers`): layers that damage
accuracy stay float until the gate passes, slow int8 layers stay float while int8 is slow, and a
float first layer is tried in int8 when that makes the model faster and still passes.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from edgereg.core.card import INPUT_NAME
from edgereg.errors import EdgeregError, did_you_mean, require_extra

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
ACTIVATION_TYPES = ("int8", "uint8")
LEARNED_OPS = ("Conv", "ConvTranspose", "Gemm")  # ops torch emits only for layers with weights


@dataclass(frozen=True)
class QuantizeOptions:
    """How to quantize; the defaults are what ``edgereg export --int8`` uses."""

    method: str = "minmax"  # calibrator: minmax (exact ranges), entropy (KL-optimal), percentile (clips outliers)
    per_channel: bool = True  # one weight scale per output channel: BN-folded convs differ a lot per channel
    keep_head_float: bool = True  # last learned layer + output transform in float (see module docstring)
    keep_first_float: bool = True  # first learned layer in float: the input image is never quantized
    calibration_batch: int = 16  # images per calibration run: bounds memory, not the result
    percentile: float = 99.999  # percentile calibrator's clip point, in percent of |activation|
    activations: str = "int8"  # int8 (S8S8) or uint8 (U8S8: x86's VNNI / VPMADDUBSW path)

    def __post_init__(self) -> None:
        if self.method not in CALIBRATION_METHODS:
            hint = did_you_mean(self.method, CALIBRATION_METHODS)
            raise EdgeregError(f"unknown calibration method {self.method!r}{hint}; "
                               f"expected one of {', '.join(CALIBRATION_METHODS)}")
        if self.activations not in ACTIVATION_TYPES:
            raise EdgeregError(f"activations must be one of {', '.join(ACTIVATION_TYPES)}, got {self.activations!r}")
        if self.calibration_batch < 1:
            raise EdgeregError(f"calibration_batch must be >= 1, got {self.calibration_batch}")


@dataclass(frozen=True)
class QuantizedModel:
    """The result of :func:`quantize_int8`.

    Attributes:
        path: the int8 QDQ model (no card yet: the gate embeds it once the model passes).
        options: what was asked for.
        float_nodes: names of the nodes kept in float.
        n_calibration: images the calibrator saw (fewer than offered when its time plan subsampled).
    """

    path: Path
    options: QuantizeOptions
    float_nodes: tuple[str, ...]
    n_calibration: int


class ArrayCalibrationReader:
    """Feeds preprocessed images to ONNX Runtime's calibrator, one batch at a time.

    Implements ``onnxruntime.quantization.CalibrationDataReader``: ``get_next`` returns one input
    dict, then None when the current range is used up. ``__len__`` counts batches and
    ``set_range(start, end)`` selects batches ``start..end-1``; :func:`calibrate` feeds one batch
    per call, so the histogram calibrators hold one batch of activations in memory instead of all
    of them (and never stack batches of unequal sizes, which they cannot).

    Args:
        images: (N, C, H, W) float32, normalized exactly as the runtime does
            (``edgereg.preprocess.preprocess_batch``).
        batch_size: images per calibration run.
        input_name: the model's input name.
    """

    def __init__(self, images: np.ndarray, *, batch_size: int = 16, input_name: str = INPUT_NAME) -> None:
        self.images = np.ascontiguousarray(images, dtype=np.float32)
        self.batch_size = int(batch_size)
        self.input_name = input_name
        self.set_range(0, len(self))

    def __len__(self) -> int:
        return -(-len(self.images) // self.batch_size)  # ceil(N / batch_size) batches

    def set_range(self, start_index: int, end_index: int) -> None:
        self._next, self._end = int(start_index), min(int(end_index), len(self))

    def rewind(self) -> None:
        self.set_range(0, len(self))

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= self._end:
            return None
        start = self._next * self.batch_size
        self._next += 1
        return {self.input_name: self.images[start:start + self.batch_size]}


def pick_calibration(index: np.ndarray, *, limit: int = 256, seed: int = 0) -> np.ndarray:
    """At most ``limit`` rows of ``index`` (the training split), drawn without replacement, sorted.

    Args:
        index: (N,) int row indices of the training split.
        limit: the most calibration images to use (calibration time grows linearly with it).
        seed: the draw's seed, so that an export is reproducible.

    Returns:
        (min(N, limit),) int64.
    """
    index = np.asarray(index, dtype=np.int64)
    if limit < 1:
        raise EdgeregError(f"--calib-images must be >= 1, got {limit}")
    if len(index) <= limit:
        return np.sort(index)
    return np.sort(np.random.default_rng(seed).choice(index, size=limit, replace=False))


def frames_from_dir(directory: str | Path, config, *, limit: int = 256) -> tuple[np.ndarray, list[str]]:
    """Calibration frames from a folder of images (e.g. frames from the deployed camera).

    Images are read, cropped and resized with ``edgereg.preprocess.read_frame`` under the model's
    preprocessing; files are taken in sorted order, at most ``limit``; unreadable files are skipped.

    Args:
        directory: a folder of images (searched recursively; the suffixes folder scoring reads,
            ``edgereg.batch.sources.IMAGE_EXTENSIONS``).
        config: the model's ``PreprocessConfig``.
        limit: the most images to use.

    Returns:
        ((N, H, W, 3) uint8 BGR at the model input size, the N paths used).

    Raises:
        EdgeregError: the folder is missing or has no readable image.
    """
    from edgereg.batch.sources import IMAGE_EXTENSIONS, is_image_file
    from edgereg.preprocess.frames import read_frames

    directory = Path(directory)
    if not directory.is_dir():
        raise EdgeregError(f"--calib-dir '{directory}' is not a folder; pass a folder of calibration images")
    paths = sorted(p for p in directory.rglob("*") if is_image_file(p))[:limit]
    frames, used = [], []
    for i, loaded in read_frames([str(p) for p in paths], config):  # decoded as the runtime decodes them
        if not isinstance(loaded, Exception):
            frames.append(loaded[0])
            used.append(str(paths[i]))
    if not frames:
        kinds = ", ".join(sorted(IMAGE_EXTENSIONS)[:6])
        raise EdgeregError(f"--calib-dir '{directory}' has no readable image ({kinds}, "
                           "...); "
                           "add some, or calibrate on the training split (leave out --calib-dir)")
    return np.stack(frames), used


def calibration_fingerprint(images: np.ndarray) -> str:
    """sha256 (first 16 hex digits) of the calibration images' bytes, shape and dtype.

    Args:
        images: any array; e.g. (N, H, W, 3) uint8 frames or (N, C, H, W) float32 inputs.
    """
    digest = hashlib.sha256(f"{images.shape}{images.dtype}".encode())
    digest.update(np.ascontiguousarray(images).tobytes())
    return digest.hexdigest()[:16]


def head_nodes(model) -> tuple[str, ...]:
    """Names of the head's last learned layer and every node downstream of it.

    The last learned layer is the Conv/Gemm nearest the graph output (a MatMul only when the graph
    has neither: torch exports a biased ``nn.Linear`` as Gemm, while a MatMul near the output is as
    likely a constant, e.g. the coordinate grid of a soft-argmax head). Everything it feeds,
    directly or not, is the output transform. Nodes must be named (see :func:`name_nodes`).

    Args:
        model: an onnx.ModelProto.

    Returns:
        Node names in graph order; empty when the graph has no linear node.
    """
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    consumers = _consumers(graph)
    last = _nearest_to_output(graph, producer, LEARNED_OPS) or _nearest_to_output(graph, producer, ("MatMul",))
    if last is None:
        return ()
    keep = {last.name}
    stack = list(last.output)
    while stack:
        for node in consumers.get(stack.pop(), []):
            if node.name not in keep:
                keep.add(node.name)
                stack.extend(node.output)
    return tuple(node.name for node in graph.node if node.name in keep)


FIXED_FEATURES = "fixed_features"  # module name of the feature blocks of edgereg.training.blocks


def fixed_feature_nodes(model) -> tuple[str, ...]:
    """Nodes of fixed (not learned) feature blocks, named ``.../fixed_features/...`` by the exporter.

    They stay float: they hold no learned weight to shrink, are a small share of the work, and
    quantizing the pixel values or order statistics they compute only loses precision.
    """
    return tuple(n.name for n in model.graph.node if f"/{FIXED_FEATURES}" in n.name) + novelty_nodes(model)


def novelty_nodes(model) -> tuple[str, ...]:
    """Nodes only the optional ``novelty`` output needs (``edgereg.export.uncertainty.novelty``): kept float, like
    the fixed features (a distance of features is what int8 rounding would blur most)."""
    from edgereg.core.card import NOVELTY_NAME, OUTPUT_NAME

    graph = model.graph
    if NOVELTY_NAME not in {o.name for o in graph.output}:
        return ()
    producer = {out: node for node in graph.node for out in node.output}

    def needed(output: str) -> set[str]:
        names, stack, seen = set(), [output], set()
        while stack:
            tensor = stack.pop()
            if tensor in seen or tensor not in producer:
                continue
            seen.add(tensor)
            names.add(producer[tensor].name)
            stack.extend(i for i in producer[tensor].input if i)
        return names

    only = needed(NOVELTY_NAME) - needed(OUTPUT_NAME)
    return tuple(n.name for n in graph.node if n.name in only)


def first_nodes(model) -> tuple[str, ...]:
    """Name of the first learned layer (the Conv/Gemm nearest the graph input), as a 1-tuple.

    Everything between the input and that layer (reshapes, slices, concats of CoordConv channels)
    needs no quantization of its own; only the layer's input tensor matters, and it stays float.
    Nodes must be named (see :func:`name_nodes`).
    """
    graph = model.graph
    consumers = _consumers(graph)
    start = [node for i in graph.input for node in consumers.get(i.name, [])]
    first = _first_of_type(start, lambda n: [c for out in n.output for c in consumers.get(out, [])], LEARNED_OPS)
    return (first.name,) if first is not None else ()


def _consumers(graph) -> dict[str, list]:
    """{tensor name: the nodes that read it}."""
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    return consumers


def _nearest_to_output(graph, producer: dict, op_types: tuple[str, ...]):
    """The first node of ``op_types`` met walking back from the ``value`` output (the optional
    ``novelty`` output is not the head), breadth first, or None."""
    from edgereg.core.card import NOVELTY_NAME

    start = [producer[o.name] for o in graph.output if o.name in producer and o.name != NOVELTY_NAME]
    return _first_of_type(start, lambda n: [producer[i] for i in n.input if i in producer], op_types)


def _first_of_type(frontier: list, neighbours, op_types: tuple[str, ...]):
    """Breadth first from ``frontier`` along ``neighbours(node)``: the first node of ``op_types``, or None."""
    seen: set[str] = set()
    while frontier:
        following = []
        for node in frontier:
            if node.name in seen:
                continue
            seen.add(node.name)
            if node.op_type in op_types:
                return node
            following += neighbours(node)
        frontier = following
    return None


def name_nodes(model) -> None:
    """Give every unnamed node a unique name (``op_type_index``); quantization selects nodes by name."""
    taken = {node.name for node in model.graph.node if node.name}
    for index, node in enumerate(model.graph.node):
        if not node.name:
            candidate = f"{node.op_type}_{index}"
            while candidate in taken:
                candidate += "_"
            node.name = candidate
            taken.add(candidate)


# Activations merged into the learned layer before them: ONNX Runtime fuses Conv+Relu into one int8
# kernel, so keeping one of them float without the other only adds a Q/DQ pair.
FUSED_ACTIVATIONS = ("Relu", "Clip", "LeakyRelu", "Sigmoid")
# Ops that only move or select data: int8 in, int8 out, no arithmetic; never worth a float decision.
DATA_MOVEMENT = ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Split", "Gather", "GatherElements",
                 "Slice", "Pad", "Where", "TopK", "CumSum", "ArgMax")


@dataclass(frozen=True)
class Layer:
    """A unit of the int8 search: a node ONNX Runtime can quantize, with its fused activation.

    Attributes:
        name: the main node's name (a Conv, Gemm, MaxPool, Add, Concat, ...).
        op_type: its op type.
        nodes: the node names kept float together (the node and an activation fused into it).
        output: the tensor the layer produces (after the fused activation); its SQNR describes it.
        learned: the layer has weights (Conv, ConvTranspose, Gemm, MatMul with a constant input).
    """

    name: str
    op_type: str
    nodes: tuple[str, ...]
    output: str
    learned: bool


def quantizable_layers(model, exclude: tuple[str, ...] = ()) -> tuple[Layer, ...]:
    """The layers of a named, shape-inferred fp32 model that ONNX Runtime's QDQ quantizer would quantize.

    A learned layer followed by an activation that only it feeds (Conv -> Relu) is one layer, as ONNX
    Runtime fuses the pair. Data-movement ops (Reshape, Transpose, ...) are not layers: they carry
    whatever type reaches them. Nodes in ``exclude`` (the float head, the float first layer) are left out.

    Args:
        model: an onnx.ModelProto whose nodes are named (:func:`name_nodes`).
        exclude: node names that are not candidates.

    Returns:
        Layers in graph order.
    """
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    quantizable = (set(QDQRegistry) | set(QLinearOpsRegistry)) - set(DATA_MOVEMENT)
    graph = model.graph
    constants = {init.name for init in graph.initializer}
    consumers = _consumers(graph)
    producer = {out: node for node in graph.node for out in node.output}
    merged: set[str] = set()
    layers = []
    for node in graph.node:
        if node.name in exclude or node.name in merged or node.op_type not in quantizable:
            continue
        learned = node.op_type in LEARNED_OPS or (node.op_type == "MatMul" and any(i in constants for i in node.input))
        nodes, output = [node.name], node.output[0]
        following = consumers.get(output, [])
        if learned and len(following) == 1 and following[0].op_type in FUSED_ACTIVATIONS \
                and following[0].name not in exclude:
            nodes.append(following[0].name)
            merged.add(following[0].name)
            output = following[0].output[0]
        elif node.op_type in FUSED_ACTIVATIONS and node.input[0] in producer \
                and producer[node.input[0]].name in merged:
            continue
        layers.append(Layer(name=node.name, op_type=node.op_type, nodes=tuple(nodes), output=output,
                            learned=bool(learned)))
    return tuple(layers)


class Quantizer:
    """One fp32 model, prepared and calibrated once, quantized to int8 QDQ with any set of float nodes.

    Preparing (``quant_pre_process``: shape inference and ONNX Runtime's basic graph optimizations)
    happens once; the activation ranges of each calibration method are measured once, on first use,
    and kept in ``workdir``; :meth:`quantize` then only runs ``quantize_static`` fed those ranges, a
    few tens of milliseconds for edgereg's models. That is what makes a search over which layers stay
    float affordable.

    Args:
        fp32_path: the fp32 ONNX model (input ``image``).
        calibration: (N, C, H, W) float32 normalized images, N >= 1 (``preprocess_batch`` output).
        workdir: a scratch folder that outlives the Quantizer's use.
        options: per-channel weights, float head/first layer, calibration batch and percentile.

    Raises:
        EdgeregError: no calibration images.
    """

    def __init__(self, fp32_path: str | Path, calibration: np.ndarray, *, workdir: str | Path,
                 options: QuantizeOptions = QuantizeOptions()) -> None:
        onnx = require_extra("onnx")
        from onnxruntime.quantization.shape_inference import quant_pre_process

        if calibration.ndim != 4 or not len(calibration):
            raise EdgeregError(f"expected calibration images (N, C, H, W) with N >= 1, got {calibration.shape}; "
                               "the training split is empty, or pass --calib-dir with images")
        self.calibration = calibration
        self.options = options
        self.workdir = Path(workdir)
        self.prepared = self.workdir / "prepared.onnx"
        # Shape inference + ORT's basic graph optimizations: shapes let every tensor be quantized.
        quant_pre_process(str(fp32_path), str(self.prepared), skip_symbolic_shape=True)
        self.model = onnx.load(str(self.prepared))
        name_nodes(self.model)
        onnx.save(self.model, str(self.prepared))
        self.head = head_nodes(self.model)
        self.first = first_nodes(self.model)
        fixed = (self.first if options.keep_first_float else ()) + (self.head if options.keep_head_float else ())
        self.fixed = fixed_feature_nodes(self.model)  # always float (see fixed_feature_nodes)
        self.base_float = tuple(dict.fromkeys(fixed + self.fixed))
        excluded = (self.head if options.keep_head_float else ()) + self.fixed
        self.layers = quantizable_layers(self.model, exclude=excluded)
        self._ranges: dict[str, Path] = {}
        self.plans: dict = {}  # method -> edgereg.export.int8.calib_budget.CalibrationPlan, once calibrated

    def calibrate(self, method: str, *, seconds: float | None = None,
                  clock: Callable[[], float] = time.perf_counter):
        """Measure ``method``'s activation ranges within ``seconds`` (see :func:`calibrate`), once.

        Returns:
            its ``CalibrationPlan`` (``skipped`` when it did not fit, or when a histogram calibrator
            failed on these activations; :meth:`quantize` with that method then raises).
        """
        if method not in self.plans:
            from onnxruntime.quantization.calibrate import save_tensors_data

            from edgereg.export.int8.calib_budget import CalibrationPlan

            options = QuantizeOptions(method=method, percentile=self.options.percentile,
                                      calibration_batch=self.options.calibration_batch)
            with contextlib.redirect_stdout(io.StringIO()):  # the calibrators print progress
                try:
                    measured, plan = calibrate(self.prepared, self.calibration, options, workdir=self.workdir,
                                               seconds=seconds, clock=clock)
                except ValueError as exc:  # e.g. numpy: "Too many bins for data range" on a near-constant tensor
                    if method == "minmax":
                        raise
                    measured, plan = None, CalibrationPlan(method, 0, len(self.calibration), skipped=True,
                                                           note=f"skipped: ONNX Runtime's {method} calibrator "
                                                                f"failed on these activations ({exc})")
            if measured is not None:
                cache = self.workdir / f"ranges-{method}.json"
                save_tensors_data(measured, cache)
                self._ranges[method] = cache
            self.plans[method] = plan
        return self.plans[method]

    def ranges(self, method: str) -> Path:
        """The calibration cache (JSON) of ``method``, measured on first use (no time limit)."""
        if self.calibrate(method).skipped:
            raise EdgeregError(f"calibration method {method!r} was skipped ({self.plans[method].note}); "
                               "allow more time with --int8-budget")
        return self._ranges[method]

    def quantize(self, out_path: str | Path, *, method: str, activations: str = "int8",
                 float_nodes: tuple[str, ...] | None = None) -> QuantizedModel:
        """Write an int8 QDQ model with ``float_nodes`` (default: the base float set) left in float.

        Args:
            out_path: where the model goes.
            method: calibration method (its ranges are measured on first use).
            activations: "int8" (S8S8) or "uint8" (U8S8, x86's fast int8 path).
            float_nodes: node names kept float; None = ``base_float``.
        """
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        if activations not in ACTIVATION_TYPES:
            raise EdgeregError(f"activations must be one of {ACTIVATION_TYPES}, got {activations!r}")
        float_nodes = self.base_float if float_nodes is None else tuple(dict.fromkeys(float_nodes))
        cache = self.ranges(method)
        quantize_static(
            str(self.prepared), str(out_path), None,
            quant_format=QuantFormat.QDQ,
            per_channel=self.options.per_channel,
            activation_type=QuantType.QUInt8 if activations == "uint8" else QuantType.QInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=list(float_nodes),
            calibrate_method={"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                              "percentile": CalibrationMethod.Percentile}[method],
            calibration_cache_path=str(cache),
        )
        options = QuantizeOptions(method=method, per_channel=self.options.per_channel,
                                  keep_head_float=self.options.keep_head_float,
                                  keep_first_float=self.options.keep_first_float, activations=activations,
                                  calibration_batch=self.options.calibration_batch,
                                  percentile=self.options.percentile)
        return QuantizedModel(path=Path(out_path), options=options, float_nodes=float_nodes,
                              n_calibration=self.plans[method].images)


def quantize_int8(fp32_path: str | Path, out_path: str | Path, calibration: np.ndarray, *,
                  options: QuantizeOptions = QuantizeOptions()) -> QuantizedModel:
    """Quantize an fp32 model to int8 QDQ (int8 weights per channel, int8 or uint8 activations).

    Three steps, each ONNX Runtime's: ``quant_pre_process`` (shape inference and basic graph
    optimizations), a calibrator that measures activation ranges on ``calibration`` one batch at a
    time, and ``quantize_static`` fed those ranges through its calibration cache (see
    :class:`Quantizer`, which keeps the first two for many quantizations of one model).

    Args:
        fp32_path: the fp32 ONNX model (input ``image``).
        out_path: where the int8 model is written.
        calibration: (N, C, H, W) float32 normalized images, N >= 1, e.g. up to 256 training images
            through ``edgereg.preprocess.preprocess_batch``.
        options: calibration method, activation type, per-channel, float head / first layer.

    Returns:
        QuantizedModel.

    Raises:
        EdgeregError: no calibration images.
    """
    with tempfile.TemporaryDirectory(prefix="edgereg-int8-") as tmp:
        quantizer = Quantizer(fp32_path, calibration, workdir=tmp, options=options)
        return quantizer.quantize(out_path, method=options.method, activations=options.activations)


def calibrate(model_path: Path, calibration: np.ndarray, options: QuantizeOptions, *, workdir: Path,
              seconds: float | None = None, clock: Callable[[], float] = time.perf_counter):
    """Activation ranges of every float tensor, measured by ONNX Runtime's calibrator within ``seconds``.

    One batch per ``collect_data`` call: the histogram calibrators merge histograms across calls,
    so memory holds one batch of activations, not all of them. Entropy searches a histogram of at
    most 2048 bins (fewer when the budget demands) for the clipping threshold whose 128-level
    quantization loses least information (KL divergence). ONNX Runtime's own defaults give it 128
    bins for 128 levels, which leaves a single candidate, the min/max range, so "entropy" would
    silently equal "minmax"; edgereg starts its histograms at 512 bins. The collector widens a
    histogram whenever a later batch reaches further than the first (to tens of thousands of bins)
    and the search is quadratic in bins, so merges are bounded and the collected histograms are
    merged down to the planned bins before the search (``edgereg.export.int8.calib_budget``).

    The histogram calibrators are timed on their first batch (the pilot; for entropy also one
    threshold search at 512 bins), then :func:`edgereg.export.int8.calib_budget.plan_calibrator` decides
    how many more images (a seeded random subset) and how many bins fit in ``seconds``, or skips.
    minmax always runs in full (one pass, no search).

    Args:
        model_path: the prepared fp32 model.
        calibration: (N, C, H, W) float32 normalized images.
        options: method, percentile, batch size.
        workdir: a scratch folder for the calibrator's augmented model.
        seconds: wall seconds this calibration may take; None = no limit (every image, 2048 bins).
        clock: seconds, monotonic (tests pass a fake one).

    Returns:
        (onnxruntime.quantization.calibrate.TensorsData or None when skipped, CalibrationPlan with
        ``seconds`` measured).
    """
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import create_calibrator

    from edgereg.export.int8.calib_budget import HISTOGRAM_BINS, CalibrationPlan, plan_calibrator

    started = clock()
    available = len(calibration)
    if options.method == "minmax":
        calibrator = create_calibrator(model_path, None, augmented_model_path=str(workdir / "augmented.onnx"),
                                       calibrate_method=CalibrationMethod.MinMax, extra_options={})
        reader = ArrayCalibrationReader(calibration, batch_size=options.calibration_batch)
        _collect(calibrator, reader, 0, len(reader))
        data = calibrator.compute_data()
        return data, CalibrationPlan("minmax", available, available, seconds=clock() - started)
    if seconds is not None and seconds <= 0:
        return None, CalibrationPlan(options.method, 0, available, skipped=True,
                                     note="skipped: no time left of the budget")
    methods = {
        "entropy": (CalibrationMethod.Entropy, {"num_bins": HISTOGRAM_BINS, "num_quantized_bins": 128}),
        "percentile": (CalibrationMethod.Percentile, {"num_bins": 2048, "percentile": options.percentile}),
    }
    method, settings = methods[options.method]
    calibrator = create_calibrator(model_path, None, augmented_model_path=str(workdir / "augmented.onnx"),
                                   calibrate_method=method, extra_options=settings)
    order = np.random.default_rng(0).permutation(available)  # a subsample is then a random draw
    reader = ArrayCalibrationReader(calibration[order], batch_size=options.calibration_batch)
    pilot_started = clock()
    _collect(calibrator, reader, 0, 1)
    collected = min(options.calibration_batch, available)
    per_image = (clock() - pilot_started) / collected
    histograms = _histograms(calibrator)
    if options.method == "entropy" and histograms is not None:
        _bound_merges(calibrator.collector)
    search = None
    if options.method == "entropy":
        if histograms is None:  # an ONNX Runtime that hides them: the search cannot be bounded
            if seconds is not None:
                return None, CalibrationPlan(options.method, 0, available, skipped=True,
                                             note="skipped: this ONNX Runtime's entropy search cannot be bounded")
        else:
            search = _entropy_search_cost(calibrator, histograms, clock)
    left = None if seconds is None else seconds - (clock() - started)
    plan = plan_calibrator(options.method, available=available, collected=collected, seconds_per_image=per_image,
                           threshold_seconds=search, seconds_left=left, batch=options.calibration_batch)
    if plan.skipped:
        return None, replace(plan, seconds=clock() - started)
    _collect(calibrator, reader, 1, -(-plan.images // options.calibration_batch))
    if plan.num_bins is not None and histograms is not None:
        from edgereg.export.int8.calib_budget import coarsen_histogram

        for name, histogram in histograms.items():
            histograms[name] = coarsen_histogram(histogram, plan.num_bins)
    data = calibrator.compute_data()
    return data, replace(plan, seconds=clock() - started)


def _collect(calibrator, reader: ArrayCalibrationReader, start: int, end: int) -> None:
    """Feed batches ``start..end-1`` to the calibrator, one ``collect_data`` call each."""
    for batch in range(start, min(end, len(reader))):
        reader.set_range(batch, batch + 1)
        calibrator.collect_data(reader)


def _bound_merges(collector) -> None:
    """Make this collector's histogram merges stay within ``COLLECT_BINS`` bins (``merge_bounded``)."""
    from edgereg.export.int8.calib_budget import COLLECT_BINS, merge_bounded

    merge = collector.merge_histogram

    def bounded(old_histogram, data, new_min, new_max, new_threshold):
        merged = merge_bounded(old_histogram, data, new_min, new_max, new_threshold, max_bins=COLLECT_BINS)
        return merge(old_histogram, data, new_min, new_max, new_threshold) if merged is None else merged

    collector.merge_histogram = bounded


def _histograms(calibrator) -> dict | None:
    """The histogram collector's {tensor: (hist, edges, min, max, threshold)}, or None where this
    ONNX Runtime keeps them otherwise (the entropy collector's layout since 1.8)."""
    histograms = getattr(getattr(calibrator, "collector", None), "histogram_dict", None)
    if not isinstance(histograms, dict) or not all(isinstance(h, tuple) and len(h) == 5 for h in histograms.values()):
        return None
    return histograms


def _entropy_search_cost(calibrator, histograms: dict, clock) -> Callable[[int], float]:
    """Predicted seconds of the entropy threshold search over every tensor at a given bin count.

    Times one search on this machine (the first tensor's pilot histogram merged down to 512 bins)
    and scales it by :func:`edgereg.export.int8.calib_budget.entropy_search_work`.
    """
    from edgereg.export.int8.calib_budget import HISTOGRAM_BINS, coarsen_histogram, entropy_search_work

    name = next(iter(histograms))
    probe = coarsen_histogram(histograms[name], HISTOGRAM_BINS)
    started = clock()
    calibrator.collector.get_entropy_threshold(probe, calibrator.num_quantized_bins)
    per_work = (clock() - started) / entropy_search_work(len(probe[0]))
    tensors = len(histograms)
    return lambda bins: tensors * per_work * entropy_search_work(bins)
