"""Lower an ONNX graph to a list of C operations with static shapes (batch 1).

This is the half of the C generator that knows ONNX: :func:`lower` returns a :class:`Program` of the
operations defined in :mod:`edgereg.export.c.ops`; :mod:`edgereg.export.c.codegen` plans memory and
writes the files. :data:`SUPPORTED_OPS` lists the ONNX op types it accepts. Lowering walks the graph
in topological order and, per node:

* folds it at generation time when every input is a constant (weights, the Q/DQ of weights, shape
  arithmetic; ``Shape`` of a tensor whose shape is static), with onnx's reference evaluator (Q/DQ of
  constants with numpy, by their ONNX definition);
* otherwise turns it into a :class:`~edgereg.export.c.ops.COp` that knows the tensors it reads and
  writes and emits its C.

Quantized (QDQ) graphs as ``onnxruntime.quantization.quantize_static`` writes them run on int8:
a ``DequantizeLinear`` of a runtime tensor produces no code but a
:class:`~edgereg.export.c.ops.Dequantized` view; a Conv, Gemm or MatMul whose input is such a view and
whose weight is a symmetric int8 constant becomes an integer kernel (int32 accumulation, per-channel
requantization into the output's ``QuantizeLinear``, which it absorbs); MaxPool, reshapes, slices and
concatenations move int8 data unchanged; element-wise ops dequantize on load and quantize on store in
one loop. Anything else runs in float on a dequantized copy. uint8 tensors are stored as int8 shifted
by -128 (same real values).

Fusions in float graphs: BatchNormalization into the preceding Conv, Relu/Clip into Conv/Gemm/MatMul.
The conv/pool geometry helpers (ONNX padding and ceil-mode rules) are at the end of the module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edgereg.errors import ModelFileError
from edgereg.export.c.ops import (
    Concat,
    Conv2D,
    COp,
    Dense,
    Dequantized,
    Elementwise,
    Gather,
    GlobalPool,
    Operand,
    Pool2D,
    QOutput,
    Quant,
    QuantizedConst,
    Reduce,
    Softmax,
    Tensor,
    c_float,
)

# --------------------------------------------------------------------------------------------------
# Lowering: ONNX nodes -> C operations
# --------------------------------------------------------------------------------------------------

UNARY = {
    "Relu": "a0 > 0.0f ? a0 : 0.0f", "Sigmoid": "1.0f / (1.0f + expf(-a0))", "Tanh": "tanhf(a0)",
    "Exp": "expf(a0)", "Log": "logf(a0)", "Sqrt": "sqrtf(a0)", "Abs": "fabsf(a0)", "Neg": "-a0",
    "Atan": "atanf(a0)", "Sin": "sinf(a0)", "Cos": "cosf(a0)", "Floor": "floorf(a0)", "Ceil": "ceilf(a0)",
    "Round": "nearbyintf(a0)", "Reciprocal": "1.0f / a0", "Sign": "(float)((a0 > 0.0f) - (a0 < 0.0f))",
    "Softplus": "logf(1.0f + expf(a0))", "Erf": "erff(a0)", "Not": "(float)(a0 == 0.0f)",
    "HardSwish": "a0 * fmaxf(0.0f, fminf(1.0f, a0 / 6.0f + 0.5f))",
}
BINARY = {
    "Add": "a0 + a1", "Sub": "a0 - a1", "Mul": "a0 * a1", "Div": "a0 / a1", "Pow": "powf(a0, a1)",
    "Less": "(float)(a0 < a1)", "Greater": "(float)(a0 > a1)", "Equal": "(float)(a0 == a1)",
    "LessOrEqual": "(float)(a0 <= a1)", "GreaterOrEqual": "(float)(a0 >= a1)",
    "And": "(float)(a0 != 0.0f && a1 != 0.0f)", "Or": "(float)(a0 != 0.0f || a1 != 0.0f)",
    "Xor": "(float)((a0 != 0.0f) != (a1 != 0.0f))",
}
VARIADIC = {"Max": "fmaxf", "Min": "fminf", "Sum": "+", "Mean": "+"}
BOOL_RESULTS = {"Less", "Greater", "Equal", "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor", "Not"}
ELEMENTWISE_WITH_ATTRIBUTES = ("Clip", "LeakyRelu", "HardSigmoid", "Elu", "Where", "Cast", "Mod")
ALIASES = ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Dropout")
DATA_MOVEMENT = ("Transpose", "Slice", "Gather", "Split", "Expand", "Tile", "DepthToSpace", "SpaceToDepth")
REDUCTIONS = ("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin")
HANDLERS = {  # ONNX op type -> the _Lowering method that lowers a node with a runtime input
    **{op: "elementwise" for op in (*UNARY, *BINARY, *VARIADIC, *ELEMENTWISE_WITH_ATTRIBUTES)},
    **{op: "alias" for op in ALIASES},
    **{op: "data_movement" for op in DATA_MOVEMENT},
    **{op: "reduce" for op in REDUCTIONS},
    "QuantizeLinear": "quantize", "DequantizeLinear": "dequantize", "Conv": "conv", "Gemm": "dense",
    "MatMul": "dense", "MaxPool": "pool", "AveragePool": "pool", "GlobalAveragePool": "global_pool",
    "GlobalMaxPool": "global_pool", "Softmax": "softmax", "Concat": "concat", "BatchNormalization": "batch_norm",
}
SUPPORTED_OPS = tuple(sorted({*HANDLERS, "Shape", "Constant"}))  # Shape and Constant are always folded


ONNX_FLOAT, ONNX_BOOL = 1, 9  # onnx.TensorProto.FLOAT / BOOL, the Cast targets with runtime inputs


def elementwise_expression(op: str, attrs: dict, arity: int) -> str:
    """The C expression of an element-wise op over float operands ``a0 .. a{arity-1}``."""
    if op in UNARY:
        return UNARY[op]
    if op in BINARY:
        return BINARY[op]
    if op in VARIADIC:
        fn, expression = VARIADIC[op], "a0"
        for k in range(1, arity):
            expression = f"{expression} + a{k}" if fn == "+" else f"{fn}({expression}, a{k})"
        return f"({expression}) / {c_float(arity)}" if op == "Mean" else expression
    alpha = attrs.get("alpha")
    return {
        "LeakyRelu": lambda: f"a0 >= 0.0f ? a0 : {c_float(0.01 if alpha is None else alpha)} * a0",
        "Elu": lambda: f"a0 >= 0.0f ? a0 : {c_float(1.0 if alpha is None else alpha)} * (expf(a0) - 1.0f)",
        "HardSigmoid": lambda: (f"fmaxf(0.0f, fminf(1.0f, {c_float(0.2 if alpha is None else alpha)} * a0 + "
                                f"{c_float(attrs.get('beta', 0.5))}))"),
        "Where": lambda: "a0 != 0.0f ? a1 : a2",
        "Mod": lambda: "fmodf(a0, a1)",  # fmod=1 (the float Mod)
        "Cast": lambda: "a0",  # to float or bool: the store converts
    }[op]()


@dataclass(frozen=True)
class Program:
    """A lowered model: run ``ops`` in order on ``input`` to get ``output``."""

    ops: tuple[COp, ...]
    input: Tensor  # (1, C, H, W) float32, the normalized image
    output: Tensor  # (1, T) float32, physical units
    onnx_ops: tuple[str, ...]  # ONNX op types that produced code (sorted)
    quantized: bool  # integer kernels are used


def lower(model, *, source: str) -> Program:
    """Lower an ONNX ModelProto (one input ``(N, C, H, W)``, one output ``(N, T)``) to C operations.

    Raises:
        ModelFileError: an op, attribute or quantization the generator does not support (one line
            naming the node and the fix), or a graph that is not an edgereg model.
    """
    return _Lowering(model, source=source).run()


class _Lowering:
    def __init__(self, model, *, source: str) -> None:
        from onnx import numpy_helper

        self.model = model
        self.source = source
        self.graph = model.graph
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
        self.values: dict[str, np.ndarray | Tensor | Dequantized] = {
            init.name: numpy_helper.to_array(init) for init in self.graph.initializer}
        self.quantized_consts: dict[str, QuantizedConst] = {}
        self.ops: list[COp] = []
        self.onnx_ops: set[str] = set()
        self.claimed: set[int] = set()
        self.materialized: dict[int, Tensor] = {}
        self.outputs = {o.name for o in self.graph.output}
        self.consumers: dict[str, list] = {}
        for node in self.graph.node:
            for name in node.input:
                if name:
                    self.consumers.setdefault(name, []).append(node)

    # -- errors and small helpers ------------------------------------------------------------------

    def fail(self, node, what: str, fix: str) -> ModelFileError:
        return ModelFileError(f"{self.source}: {node.op_type} node '{node.name or node.output[0]}': {what}; {fix}")

    def unsupported(self, node, what: str) -> ModelFileError:
        return self.fail(node, f"{what} is not supported by the C generator",
                         "change the model (supported ops: edgereg.export.c.lowering.SUPPORTED_OPS) or deploy it "
                         "with ONNX Runtime instead of C")

    @staticmethod
    def attrs(node) -> dict:
        from onnx import helper

        out = {}
        for a in node.attribute:
            value = helper.get_attribute_value(a)
            out[a.name] = value.decode() if isinstance(value, bytes) else value
        return out

    def const(self, name: str | None) -> np.ndarray | None:
        value = self.values.get(name) if name else None
        return value if isinstance(value, np.ndarray) else None

    def value(self, node, name: str):
        if name not in self.values:
            raise self.fail(node, f"input '{name}' is not produced by any node", "check the ONNX file (onnx.checker)")
        return self.values[name]

    def new_tensor(self, name: str, shape, dtype: str = "f32", *, alias_of: Tensor | None = None) -> Tensor:
        return Tensor(name, tuple(int(n) for n in shape), dtype, alias_of)

    def float_tensor(self, node, name: str) -> Tensor:
        """The runtime float tensor for ``name``, dequantizing an int8 view once if needed."""
        value = self.value(node, name)
        if isinstance(value, Tensor):
            if value.dtype != "f32":
                raise self.unsupported(node, f"a {value.dtype} input '{name}' where float is expected")
            return value
        if isinstance(value, Dequantized):
            return self.materialize(value, name)
        raise self.unsupported(node, f"a constant input '{name}' here")

    def materialize(self, value: Dequantized, name: str) -> Tensor:
        """A float copy of an int8 view (made once, for consumers that have no int8 kernel)."""
        if id(value) not in self.materialized:
            y = self.new_tensor(name, value.shape)
            self.emit(Elementwise("DequantizeLinear", name, y=y,
                                  operands=[Operand(value.shape, value.tensor, value.quant)]))
            self.materialized[id(value)] = y
        return self.materialized[id(value)]

    def emit(self, op: COp) -> None:
        self.ops.append(op)

    def sole_consumer(self, name: str, op_types: tuple[str, ...]):
        users = self.consumers.get(name, [])
        if name in self.outputs or len(users) != 1 or users[0].op_type not in op_types:
            return None
        return users[0]

    def quant_of(self, node) -> Quant:
        """The (scalar) Quant of a QuantizeLinear / DequantizeLinear node."""
        scale = self.const(node.input[1])
        zero = self.const(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros((), np.uint8)
        if scale is None or zero is None:
            raise self.unsupported(node, "a runtime scale or zero point")
        if scale.size != 1:
            raise self.unsupported(node, "per-axis quantization of an activation")
        if zero.dtype not in (np.int8, np.uint8):
            raise self.unsupported(node, f"{zero.dtype} quantization (only int8 and uint8)")
        shift = 128 if zero.dtype == np.uint8 else 0
        return Quant(float(np.float32(scale.reshape(-1)[0])), int(zero.reshape(-1)[0]) - shift)

    def take_quantize(self, name: str) -> tuple[str, Quant] | None:
        """Absorb the QuantizeLinear that is the only consumer of ``name``: (its output, its Quant)."""
        q = self.sole_consumer(name, ("QuantizeLinear",))
        if q is None or self.const(q.input[1]) is None:
            return None
        quant = self.quant_of(q)
        self.claimed.add(id(q))
        self.onnx_ops.add("QuantizeLinear")
        return q.output[0], quant

    def take_activation(self, name: str) -> tuple[str, tuple[float, float]] | None:
        """Absorb a Relu / constant Clip that is the only consumer of ``name``: (its output, (lo, hi))."""
        node = self.sole_consumer(name, ("Relu", "Clip"))
        if node is None:
            return None
        if node.op_type == "Relu":
            bounds = (0.0, math.inf)
        else:
            bounds = self.clip_bounds(node)
            if bounds is None:
                return None
        self.claimed.add(id(node))
        self.onnx_ops.add(node.op_type)
        return node.output[0], bounds

    def clip_bounds(self, node) -> tuple[float, float] | None:
        if self.opset < 11:
            a = self.attrs(node)
            return float(a.get("min", -math.inf)), float(a.get("max", math.inf))
        names = list(node.input[1:]) + ["", ""]
        lo, hi = self.const(names[0]), self.const(names[1])
        if (names[0] and lo is None) or (names[1] and hi is None):
            return None
        return (float(lo) if lo is not None else -math.inf, float(hi) if hi is not None else math.inf)

    # -- the walk ----------------------------------------------------------------------------------

    def run(self) -> Program:
        image = self.graph_input()
        for node in self.topological_nodes():
            if id(node) in self.claimed:
                continue
            if node.domain not in ("", "ai.onnx"):
                raise self.unsupported(node, f"op '{node.op_type}' of domain '{node.domain}'")
            inputs = [name for name in node.input if name]
            if all(self.const(name) is not None for name in inputs) and node.op_type != "Shape":
                self.fold(node)
            elif node.op_type == "Shape":
                self.fold_shape(node)
            else:
                self.lower_node(node)
        output = self.graph_output()
        ops = self.live_ops(output)
        quantized = any(t.dtype == "i8" for op in ops for t in op.reads() + op.writes())
        return Program(tuple(ops), image, output, tuple(sorted(self.onnx_ops)), quantized)

    def graph_input(self) -> Tensor:
        inits = {i.name for i in self.graph.initializer}
        inputs = [i for i in self.graph.input if i.name not in inits]
        if len(inputs) != 1:
            raise ModelFileError(f"{self.source}: expected one graph input (the image), got "
                                 f"{[i.name for i in inputs]}; export with `edgereg export`")
        tensor_type = inputs[0].type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim]
        if len(dims) != 4 or any(d is None for d in dims[1:]) or dims[0] not in (None, 1) or tensor_type.elem_type != 1:
            raise ModelFileError(f"{self.source}: expected input '{inputs[0].name}' (N, C, H, W) float32 with "
                                 f"fixed C, H, W, got {dims}; export with `edgereg export`")
        image = self.new_tensor(inputs[0].name, (1, *dims[1:]))
        self.values[inputs[0].name] = image
        return image

    def graph_output(self) -> Tensor:
        if len(self.graph.output) != 1:
            raise ModelFileError(f"{self.source}: expected one graph output (value), got "
                                 f"{[o.name for o in self.graph.output]}; export with `edgereg export`")
        name = self.graph.output[0].name
        value = self.values.get(name)
        if isinstance(value, Dequantized):
            value = self.materialize(value, name)
        if not isinstance(value, Tensor) or value.dtype != "f32" or len(value.shape) != 2:
            raise ModelFileError(f"{self.source}: output '{name}' must be a (N, T) float32 tensor computed from "
                                 f"the image, got {getattr(value, 'shape', None)}; export with `edgereg export`")
        return value

    def topological_nodes(self) -> list:
        """The nodes in an order where every input is produced before it is used (Kahn's algorithm)."""
        producers = {name: index for index, node in enumerate(self.graph.node) for name in node.output}
        waiting = [{producers[n] for n in node.input if n in producers} for node in self.graph.node]
        users: dict[int, list[int]] = {}
        for index, needs in enumerate(waiting):
            for producer in needs:
                users.setdefault(producer, []).append(index)
        ready = [index for index, needs in enumerate(waiting) if not needs]
        ordered = []
        while ready:
            index = ready.pop(0)
            ordered.append(self.graph.node[index])
            for user in users.get(index, []):
                waiting[user].discard(index)
                if not waiting[user]:
                    ready.append(user)
        if len(ordered) != len(self.graph.node):
            raise ModelFileError(f"{self.source}: the graph has a cycle; check it with onnx.checker")
        return ordered

    def live_ops(self, output: Tensor) -> list[COp]:
        """Drop ops whose results nothing reads (e.g. an unused branch)."""
        needed = {id(output.root)}
        kept = []
        for op in reversed(self.ops):
            if any(id(t.root) in needed for t in op.writes()):
                kept.append(op)
                needed.update(id(t.root) for t in op.reads())
        return kept[::-1]

    # -- constant folding --------------------------------------------------------------------------

    def fold(self, node) -> None:
        names = [name for name in node.input if name]
        inputs = [self.const(name) for name in names]
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            self.fold_qdq(node, inputs)
            return
        from onnx import ValueInfoProto, helper
        from onnx.reference import ReferenceEvaluator

        graph = helper.make_graph(
            [node], "fold",
            [helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(value.dtype), value.shape)
             for name, value in zip(names, inputs)],
            [ValueInfoProto(name=name) for name in node.output if name])
        model = helper.make_model(graph, opset_imports=list(self.model.opset_import))
        try:
            results = ReferenceEvaluator(model).run(None, dict(zip(names, inputs)))
        except Exception as exc:  # the reference evaluator raises many untyped errors
            raise self.fail(node, f"cannot evaluate this constant expression ({type(exc).__name__}: {exc})",
                            "simplify the exported graph (onnx-simplifier) or report a bug") from None
        for name, result in zip([n for n in node.output if n], results):
            self.values[name] = np.asarray(result)

    def fold_qdq(self, node, inputs: list[np.ndarray]) -> None:
        """QuantizeLinear / DequantizeLinear of constants (per tensor or per axis), as ONNX defines them.

        A dequantized int8 constant is also remembered as a QuantizedConst, for the integer kernels.
        """
        x, scale = inputs[0], inputs[1].astype(np.float32)
        zero = inputs[2] if len(inputs) > 2 else np.zeros(scale.shape, dtype=np.uint8)
        axis = int(self.attrs(node).get("axis", 1))
        shape = [1] * x.ndim
        if scale.ndim == 1 and x.ndim:
            shape[axis % x.ndim] = scale.size
        scale_b, zero_b = scale.reshape(shape), zero.astype(np.int64).reshape(shape)
        if node.op_type == "DequantizeLinear":
            self.values[node.output[0]] = np.asarray((x.astype(np.int64) - zero_b) * scale_b, dtype=np.float32)
            if x.dtype in (np.int8, np.uint8):
                shift = 128 if x.dtype == np.uint8 else 0
                self.quantized_consts[node.output[0]] = QuantizedConst(
                    (x.astype(np.int16) - shift).astype(np.int8), scale, zero.astype(np.int32) - shift, axis)
            return
        info = np.iinfo(zero.dtype)
        levels = np.rint(x.astype(np.float32) / scale_b) + zero_b
        self.values[node.output[0]] = np.asarray(np.clip(levels, info.min, info.max), dtype=zero.dtype)

    def fold_shape(self, node) -> None:
        shape = np.array(self.value(node, node.input[0]).shape, dtype=np.int64)
        a = self.attrs(node)
        self.values[node.output[0]] = shape[a.get("start", 0):a.get("end", None)]

    # -- dispatch ----------------------------------------------------------------------------------

    def lower_node(self, node) -> None:
        handler = HANDLERS.get(node.op_type)
        if handler is None:
            raise self.unsupported(node, f"op '{node.op_type}'")
        self.onnx_ops.add(node.op_type)
        getattr(self, handler)(node)

    # -- quantization ------------------------------------------------------------------------------

    def dequantize(self, node) -> None:
        x = self.value(node, node.input[0])
        if not isinstance(x, Tensor) or x.dtype != "i8":
            raise self.unsupported(node, "dequantizing a tensor that is not int8")
        self.values[node.output[0]] = Dequantized(x, self.quant_of(node))

    def quantize(self, node) -> None:
        x = self.value(node, node.input[0])
        quant = self.quant_of(node)
        if isinstance(x, Dequantized) and x.quant == quant:
            self.values[node.output[0]] = x.tensor  # a DQ -> Q round trip is the identity
            return
        y = self.new_tensor(node.output[0], x.shape, "i8")
        self.emit(Elementwise("QuantizeLinear", node.name, y=y, operands=[self.operand(node, node.input[0])],
                              store=quant))
        self.values[node.output[0]] = y

    # -- element-wise ------------------------------------------------------------------------------

    def operand(self, node, name: str) -> Operand:
        value = self.value(node, name)
        if isinstance(value, np.ndarray):
            if value.dtype.kind not in "fiub":
                raise self.unsupported(node, f"a {value.dtype} constant")
            return Operand(value.shape, values=value.astype(np.float32))
        if isinstance(value, Dequantized):
            return Operand(value.shape, value.tensor, value.quant)
        if value.dtype == "i8":
            raise self.unsupported(node, "arithmetic on a raw int8 tensor")
        return Operand(value.shape, value)

    def elementwise(self, node) -> None:
        a = self.attrs(node)
        names = [n for n in node.input if n]
        if node.op_type == "Clip":
            bounds = self.clip_bounds(node)
            if bounds is None:
                raise self.unsupported(node, "Clip with runtime bounds")
            names, expression = names[:1], f"fminf(fmaxf(a0, {c_float(bounds[0])}), {c_float(bounds[1])})"
        elif node.op_type == "Mod" and not a.get("fmod", 0):
            raise self.unsupported(node, "integer Mod (fmod=0)")
        elif node.op_type == "Cast" and a["to"] not in (ONNX_FLOAT, ONNX_BOOL):
            raise self.unsupported(node, f"Cast of a runtime tensor to ONNX type {a['to']}")
        else:
            expression = elementwise_expression(node.op_type, a, len(names))
        operands = [self.operand(node, name) for name in names]
        shape = np.broadcast_shapes(*[o.shape for o in operands])
        out_bool = node.op_type in BOOL_RESULTS or (node.op_type == "Cast" and a["to"] == ONNX_BOOL)
        out_name, store = node.output[0], None
        taken = None if out_bool else self.take_quantize(out_name)
        if taken:
            out_name, store = taken
        y = self.new_tensor(out_name, shape, "bool" if out_bool else ("i8" if store else "f32"))
        self.emit(Elementwise(node.op_type, node.name, y=y, operands=operands, expression=expression, store=store))
        self.values[out_name] = y

    def batch_norm(self, node) -> None:
        scale, shift = self.batch_norm_affine(node)
        x = self.value(node, node.input[0])
        channel_shape = (scale.size,) + (1,) * (len(x.shape) - 2)
        operands = [self.operand(node, node.input[0]), Operand(channel_shape, values=scale.reshape(channel_shape)),
                    Operand(channel_shape, values=shift.reshape(channel_shape))]
        out_name, store = node.output[0], None
        taken = self.take_quantize(out_name)
        if taken:
            out_name, store = taken
        y = self.new_tensor(out_name, x.shape, "i8" if store else "f32")
        self.emit(Elementwise("BatchNormalization", node.name, y=y, operands=operands, expression="a0 * a1 + a2",
                              store=store))
        self.values[out_name] = y

    def batch_norm_affine(self, node) -> tuple[np.ndarray, np.ndarray]:
        gamma, beta, mean, var = (self.const(n) for n in node.input[1:5])
        if any(v is None for v in (gamma, beta, mean, var)) or len(node.output) > 1 and any(node.output[1:]):
            raise self.unsupported(node, "BatchNormalization in training mode or with runtime statistics")
        scale = gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + self.attrs(node).get("epsilon", 1e-5))
        return scale.astype(np.float32), (beta - mean * scale).astype(np.float32)

    # -- shapes and data movement ------------------------------------------------------------------

    def alias(self, node) -> None:
        x = self.value(node, node.input[0])
        if node.op_type == "Dropout" and len(node.output) > 1 and node.output[1] in self.consumers:
            raise self.unsupported(node, "using the Dropout mask")
        shape = self.alias_shape(node, x.shape)
        tensor = x.tensor if isinstance(x, Dequantized) else x
        view = self.new_tensor(node.output[0], shape, tensor.dtype, alias_of=tensor)
        self.values[node.output[0]] = Dequantized(view, x.quant) if isinstance(x, Dequantized) else view

    def alias_shape(self, node, shape: tuple[int, ...]) -> tuple[int, ...]:
        op, a = node.op_type, self.attrs(node)
        if op in ("Identity", "Dropout"):
            return shape
        if op == "Flatten":
            axis = a.get("axis", 1)
            axis = axis + len(shape) if axis < 0 else axis
            return (math.prod(shape[:axis]), math.prod(shape[axis:]))
        if op == "Reshape":
            target = self.const(node.input[1])
            if target is None:
                raise self.unsupported(node, "Reshape to a runtime shape")
            target = [shape[d] if n == 0 and not a.get("allowzero", 0) else int(n) for d, n in enumerate(target)]
            if -1 in target:
                known = math.prod(n for n in target if n != -1)
                target[target.index(-1)] = math.prod(shape) // known
            return tuple(target)
        axes = a.get("axes")
        if axes is None and len(node.input) > 1 and node.input[1]:
            axes = self.const(node.input[1])
            if axes is None:
                raise self.unsupported(node, f"{op} with runtime axes")
        if op == "Squeeze":
            if axes is not None:
                drop = {int(d) % len(shape) for d in axes}
            else:
                drop = {d for d, n in enumerate(shape) if n == 1}
            return tuple(n for d, n in enumerate(shape) if d not in drop)
        rank = len(shape) + len(axes)
        inserted = {int(d) % rank for d in axes}
        dims = iter(shape)
        return tuple(1 if d in inserted else next(dims) for d in range(rank))

    def data_movement(self, node) -> None:
        """Run the node on an index tensor at generation time: it tells which element goes where."""
        x = self.value(node, node.input[0])
        source = np.arange(math.prod(x.shape), dtype=np.int64).reshape(x.shape)
        saved = self.values[node.input[0]]
        self.values[node.input[0]] = source
        try:
            missing = [n for n in node.input[1:] if n and self.const(n) is None]
            if missing:
                raise self.unsupported(node, f"{node.op_type} with a runtime '{missing[0]}'")
            self.fold(node)
        finally:
            self.values[node.input[0]] = saved
        tensor = x.tensor if isinstance(x, Dequantized) else x
        for name in [n for n in node.output if n]:
            index = self.values[name]
            if index.size == tensor.size and np.array_equal(index.reshape(-1), np.arange(tensor.size)):
                y = self.new_tensor(name, index.shape, tensor.dtype, alias_of=tensor)
            else:
                y = self.new_tensor(name, index.shape, tensor.dtype)
                self.emit(Gather(node.op_type, node.name, x=tensor, y=y, index=index))
            self.values[name] = Dequantized(y, x.quant) if isinstance(x, Dequantized) else y

    def concat(self, node) -> None:
        axis = self.attrs(node)["axis"]
        parts = [self.value(node, n) for n in node.input]
        axis = axis % len(parts[0].shape)
        shape = list(parts[0].shape)
        shape[axis] = sum(p.shape[axis] for p in parts)
        if all(isinstance(p, Dequantized) for p in parts):
            quants = [p.quant for p in parts]
            if len(set(quants)) == 1:  # int8 in, int8 out, nothing to rescale
                y = self.new_tensor(node.output[0], shape, "i8")
                self.emit(Concat("Concat", node.name, parts=[p.tensor for p in parts], y=y, axis=axis,
                                 part_quants=quants, store=quants[0]))
                self.values[node.output[0]] = Dequantized(y, quants[0])
                return
            taken = self.take_quantize(node.output[0])
            if taken:  # DQ -> Concat -> Q: requantize each part into the int8 output
                out_name, quant = taken
                y = self.new_tensor(out_name, shape, "i8")
                self.emit(Concat("Concat", node.name, parts=[p.tensor for p in parts], y=y, axis=axis,
                                 part_quants=quants, store=quant))
                self.values[out_name] = y
                return
        tensors = [p if isinstance(p, np.ndarray) else self.float_tensor(node, n) for p, n in zip(parts, node.input)]
        y = self.new_tensor(node.output[0], shape)
        self.emit(Concat("Concat", node.name, parts=tensors, y=y, axis=axis))
        self.values[node.output[0]] = y

    # -- weighted layers ---------------------------------------------------------------------------

    def integer_weight(self, node, x, name: str) -> QuantizedConst | None:
        """The int8 weight for an integer kernel: input an int8 view, weight a symmetric int8 constant.

        Anything else (float input, float weight, or an asymmetric weight such as a quantized
        coordinate grid) runs in float on the dequantized values, which is what the QDQ graph means.
        """
        qc = self.quantized_consts.get(name)
        if not isinstance(x, Dequantized) or qc is None or np.any(qc.zero_point != 0):
            return None
        return qc

    def per_channel(self, node, qc: QuantizedConst, out_axis: int, channels: int) -> np.ndarray:
        """The (channels,) scale of a quantized weight whose output channels lie along ``out_axis``."""
        scale = qc.scale.reshape(-1)
        if scale.size == 1:
            return np.full(channels, scale[0], dtype=np.float32)
        if scale.size != channels or qc.axis % qc.values.ndim != out_axis:
            raise self.unsupported(node, f"weight scales along axis {qc.axis} of a {qc.values.shape} weight")
        return scale.astype(np.float32)

    def fused_output(self, name: str, *, x_quant: Quant | None,
                     w_scale: np.ndarray | None) -> tuple[str, tuple[float, float], QOutput | None, str]:
        """Claim the activation and QuantizeLinear that follow a weighted layer's output ``name``.

        Returns:
            (final value name, float activation bounds, QOutput for int8 kernels, output dtype).
        """
        act = (-math.inf, math.inf)
        taken = self.take_activation(name)
        if taken:
            name, act = taken
        if x_quant is None:
            return name, act, None, "f32"
        channel_scale = np.float32(x_quant.scale) * w_scale  # float32, as onnxruntime's QLinearConv
        quantized = self.take_quantize(name)
        if quantized is None:
            return name, act, QOutput(channel_scale.astype(np.float32), act=act), "f32"
        name, y_quant = quantized
        multiplier = (channel_scale / np.float32(y_quant.scale)).astype(np.float32)

        def level(bound: float, default: int) -> int:
            if math.isinf(bound):
                return default
            return int(np.clip(np.round(bound / y_quant.scale) + y_quant.zero_point, -128, 127))

        return name, act, QOutput(multiplier, y_quant.zero_point, level(act[0], -128), level(act[1], 127)), "i8"

    def int_bias(self, bias: np.ndarray | None, x_quant: Quant, w_scale: np.ndarray) -> np.ndarray | None:
        if bias is None:
            return None
        unit = (np.float32(x_quant.scale) * w_scale).astype(np.float64)
        return np.round(bias.astype(np.float64) / unit).astype(np.int32)

    def conv(self, node) -> None:
        a = self.attrs(node)
        x = self.value(node, node.input[0])
        weight = self.const(node.input[1])
        bias_name = node.input[2] if len(node.input) > 2 and node.input[2] else None
        bias = self.const(bias_name)
        if weight is None or (bias_name and bias is None):
            raise self.unsupported(node, "Conv with a runtime weight or bias")
        if weight.ndim != 4:
            raise self.unsupported(node, f"{weight.ndim - 2}-D convolution (only 2-D)")
        geometry, out_hw = conv_geometry(x.shape, weight.shape, a)
        qc = self.integer_weight(node, x, node.input[1])
        out_name = node.output[0]
        if qc is not None:
            w_scale = self.per_channel(node, qc, 0, weight.shape[0])
            out_name, act, output, dtype = self.fused_output(out_name, x_quant=x.quant, w_scale=w_scale)
            y = self.new_tensor(out_name, (1, weight.shape[0], *out_hw), dtype)
            self.emit(Conv2D("Conv", node.name, x=x.tensor, y=y, geometry=geometry, weight=qc.values,
                             bias=self.int_bias(bias, x.quant, w_scale), x_zero=x.quant.zero_point, output=output))
        else:
            x_tensor = self.float_tensor(node, node.input[0])
            weight, bias = weight.astype(np.float32), None if bias is None else bias.astype(np.float32)
            bn = self.sole_consumer(out_name, ("BatchNormalization",))
            if bn is not None:
                scale, shift = self.batch_norm_affine(bn)
                weight = (weight * scale[:, None, None, None]).astype(np.float32)
                bias = ((bias if bias is not None else 0.0) * scale + shift).astype(np.float32)
                self.claimed.add(id(bn))
                self.onnx_ops.add("BatchNormalization")
                out_name = bn.output[0]
            out_name, act, _, _ = self.fused_output(out_name, x_quant=None, w_scale=None)
            y = self.new_tensor(out_name, (1, weight.shape[0], *out_hw))
            self.emit(Conv2D("Conv", node.name, x=x_tensor, y=y, geometry=geometry, weight=weight, bias=bias, act=act))
        self.values[out_name] = y

    def dense(self, node) -> None:
        a = self.attrs(node)
        x = self.value(node, node.input[0])
        weight = self.const(node.input[1])
        if weight is None or weight.ndim != 2 or isinstance(x, np.ndarray):
            raise self.unsupported(node, f"{node.op_type} without a constant 2-D weight as second input")
        bias_name = node.input[2] if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2] else None
        bias = self.const(bias_name)
        if bias_name and bias is None:
            raise self.unsupported(node, "Gemm with a runtime bias")
        if node.op_type == "Gemm":
            if a.get("transA", 0) or len(x.shape) != 2:
                raise self.unsupported(node, "Gemm with transA=1 or a non-2-D input")
            out_axis = 0 if a.get("transB", 0) else 1
            alpha, beta = float(a.get("alpha", 1.0)), float(a.get("beta", 1.0))
        else:
            out_axis, alpha, beta = 1, 1.0, 1.0
        n = weight.shape[out_axis]
        if bias is not None:
            if bias.size not in (1, n):
                raise self.unsupported(node, f"a Gemm bias of shape {bias.shape} (expected ({n},))")
            bias = np.broadcast_to(bias.reshape(-1), (n,)).astype(np.float64) * beta
        rows = math.prod(x.shape[:-1])
        out_shape = (*x.shape[:-1], n)
        qc = self.integer_weight(node, x, node.input[1])
        out_name = node.output[0]
        if qc is not None:
            w_scale = self.per_channel(node, qc, out_axis, n) * np.float32(alpha)
            q_weight = qc.values if out_axis == 0 else qc.values.T  # (K,N) -> (N,K)
            out_name, act, output, dtype = self.fused_output(out_name, x_quant=x.quant, w_scale=w_scale)
            y = self.new_tensor(out_name, out_shape, dtype)
            self.emit(Dense(node.op_type, node.name, x=x.tensor, y=y, rows=rows,
                            weight=np.ascontiguousarray(q_weight), bias=self.int_bias(bias, x.quant, w_scale),
                            x_zero=x.quant.zero_point, output=output))
        else:
            x_tensor = self.float_tensor(node, node.input[0])
            matrix = weight if out_axis == 0 else weight.T  # (K,N) -> (N,K)
            out_name, act, _, _ = self.fused_output(out_name, x_quant=None, w_scale=None)
            y = self.new_tensor(out_name, out_shape)
            self.emit(Dense(node.op_type, node.name, x=x_tensor, y=y, rows=rows,
                            weight=np.ascontiguousarray(matrix * alpha, dtype=np.float32),
                            bias=None if bias is None else bias.astype(np.float32), act=act))
        self.values[out_name] = y

    # -- pooling, softmax, reductions --------------------------------------------------------------

    def pool(self, node) -> None:
        a = self.attrs(node)
        x = self.value(node, node.input[0])
        if len(x.shape) != 4:
            raise self.unsupported(node, f"{len(x.shape) - 2}-D pooling (only 2-D)")
        if len(node.output) > 1 and node.output[1] in self.consumers:
            raise self.unsupported(node, "MaxPool indices")
        if a.get("storage_order", 0):
            raise self.unsupported(node, "storage_order=1")
        geometry, out_hw = pool_geometry(x.shape, a)
        kind = "max" if node.op_type == "MaxPool" else "avg"
        shape = (1, x.shape[1], *out_hw)
        out_name = node.output[0]
        if isinstance(x, Dequantized) and kind == "max":
            y = self.new_tensor(out_name, shape, "i8")
            self.emit(Pool2D("MaxPool", node.name, kind=kind, x=x.tensor, y=y, geometry=geometry))
            self.values[out_name] = Dequantized(y, x.quant)
            return
        if isinstance(x, Dequantized):
            q = self.sole_consumer(out_name, ("QuantizeLinear",))
            if q is not None and self.const(q.input[1]) is not None and self.quant_of(q) == x.quant:
                out_name, quant = self.take_quantize(out_name)
                y = self.new_tensor(out_name, shape, "i8")
                self.emit(Pool2D("AveragePool", node.name, kind=kind, x=x.tensor, y=y, geometry=geometry,
                                 zero_point=quant.zero_point))
                self.values[out_name] = y
                return
        y = self.new_tensor(out_name, shape)
        self.emit(Pool2D(node.op_type, node.name, kind=kind, x=self.float_tensor(node, node.input[0]), y=y,
                         geometry=geometry))
        self.values[out_name] = y

    def global_pool(self, node) -> None:
        x = self.value(node, node.input[0])
        shape = (*x.shape[:2],) + (1,) * (len(x.shape) - 2)
        kind = "avg" if node.op_type == "GlobalAveragePool" else "max"
        if isinstance(x, Dequantized):
            y = self.new_tensor(node.output[0], shape, "f32" if kind == "avg" else "i8")
            self.emit(GlobalPool(node.op_type, node.name, kind=kind, x=x.tensor, y=y,
                                 quant=x.quant if kind == "avg" else None))
            self.values[node.output[0]] = y if kind == "avg" else Dequantized(y, x.quant)
            return
        y = self.new_tensor(node.output[0], shape)
        self.emit(GlobalPool(node.op_type, node.name, kind=kind, x=self.float_tensor(node, node.input[0]), y=y))
        self.values[node.output[0]] = y

    def softmax(self, node) -> None:
        x = self.float_tensor(node, node.input[0])
        rank = len(x.shape)
        if self.opset >= 13:
            axis = self.attrs(node).get("axis", -1) % rank
            outer, n, inner = math.prod(x.shape[:axis]), x.shape[axis], math.prod(x.shape[axis + 1:])
        else:
            axis = self.attrs(node).get("axis", 1) % rank
            outer, n, inner = math.prod(x.shape[:axis]), math.prod(x.shape[axis:]), 1
        y = self.new_tensor(node.output[0], x.shape)
        self.emit(Softmax("Softmax", node.name, x=x, y=y, outer=outer, n=n, inner=inner))
        self.values[node.output[0]] = y

    def reduce(self, node) -> None:
        a = self.attrs(node)
        x = self.float_tensor(node, node.input[0])
        axes = a.get("axes")
        if axes is None and len(node.input) > 1 and node.input[1]:
            axes = self.const(node.input[1])
            if axes is None:
                raise self.unsupported(node, f"{node.op_type} with runtime axes")
        rank = len(x.shape)
        if axes is None or len(axes) == 0:
            if a.get("noop_with_empty_axes", 0):
                self.values[node.output[0]] = x
                return
            axes = range(rank)
        axes = tuple(sorted({int(d) % rank for d in axes}))
        keep = a.get("keepdims", 1)
        shape = tuple(1 if d in axes else n for d, n in enumerate(x.shape) if keep or d not in axes)
        y = self.new_tensor(node.output[0], shape)
        kind = node.op_type[len("Reduce"):].lower()
        self.emit(Reduce(node.op_type, node.name, kind=kind, x=x, y=y, axes=axes))
        self.values[node.output[0]] = y


# --------------------------------------------------------------------------------------------------
# Geometry of convolutions and pools
# --------------------------------------------------------------------------------------------------

def _window(size: int, kernel: int, stride: int, dilation: int, pads: tuple[int, int], auto_pad: str,
            ceil_mode: bool) -> tuple[int, int, int]:
    """(output size, pad before, pad after) along one axis, ONNX semantics."""
    span = (kernel - 1) * dilation + 1
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        out = -(-size // stride)
        total = max(0, (out - 1) * stride + span - size)
        before = total // 2 if auto_pad == "SAME_UPPER" else total - total // 2
        return out, before, total - before
    if auto_pad == "VALID":
        pads = (0, 0)
    extent = size + pads[0] + pads[1] - span
    out = (-(-extent // stride) if ceil_mode else extent // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + pads[0]:
        out -= 1  # the last window must start inside the input or its leading padding
    return out, pads[0], pads[1]


def conv_geometry(x_shape, w_shape, a: dict) -> tuple[dict[str, int], tuple[int, int]]:
    """The conv2d_geometry fields and the output (H, W) of an ONNX Conv."""
    _, c, h, w = x_shape
    m, c_per_group, kh, kw = w_shape
    strides = a.get("strides", [1, 1])
    dilations = a.get("dilations", [1, 1])
    pads = a.get("pads", [0, 0, 0, 0])
    groups = a.get("group", 1)
    auto_pad = a.get("auto_pad", "NOTSET")
    out_h, top, _ = _window(h, kh, strides[0], dilations[0], (pads[0], pads[2]), auto_pad, False)
    out_w, left, _ = _window(w, kw, strides[1], dilations[1], (pads[1], pads[3]), auto_pad, False)
    if c_per_group * groups != c:
        raise ModelFileError(f"Conv weight {tuple(w_shape)} does not match input {tuple(x_shape)} with "
                             f"group={groups}; re-export the model")
    geometry = dict(in_c=c, in_h=h, in_w=w, out_c=m, out_h=out_h, out_w=out_w, kernel_h=kh, kernel_w=kw,
                    stride_h=strides[0], stride_w=strides[1], pad_top=top, pad_left=left,
                    dilation_h=dilations[0], dilation_w=dilations[1], groups=groups)
    return geometry, (out_h, out_w)


def pool_geometry(x_shape, a: dict) -> tuple[dict[str, int], tuple[int, int]]:
    """The pool2d_geometry fields and the output (H, W) of an ONNX MaxPool / AveragePool."""
    _, c, h, w = x_shape
    kh, kw = a["kernel_shape"]
    strides = a.get("strides", [1, 1])
    dilations = a.get("dilations", [1, 1])
    pads = a.get("pads", [0, 0, 0, 0])
    auto_pad = a.get("auto_pad", "NOTSET")
    ceil_mode = bool(a.get("ceil_mode", 0))
    out_h, top, bottom = _window(h, kh, strides[0], dilations[0], (pads[0], pads[2]), auto_pad, ceil_mode)
    out_w, left, right = _window(w, kw, strides[1], dilations[1], (pads[1], pads[3]), auto_pad, ceil_mode)
    geometry = dict(channels=c, in_h=h, in_w=w, out_h=out_h, out_w=out_w, kernel_h=kh, kernel_w=kw,
                    stride_h=strides[0], stride_w=strides[1], pad_top=top, pad_left=left, pad_bottom=bottom,
                    pad_right=right, dilation_h=dilations[0], dilation_w=dilations[1],
                    count_include_pad=int(a.get("count_include_pad", 0)))
    return geometry, (out_h, out_w)
