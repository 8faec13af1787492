"""Lower an ONNX graph to a list of C operations with static shapes (batch 1).

This is the half of the C generator that knows ONNX; :mod:`edgereg.export.c_codegen` plans memory and
writes the files. Lowering walks the graph in topological order and, per node:

* folds it at generation time when every input is a constant (weights, the Q/DQ of weights, shape
  arithmetic; ``Shape`` of a tensor whose shape is static), with onnx's reference evaluator (Q/DQ of
  constants with numpy, by their ONNX definition);
* otherwise turns it into a :class:`COp` that knows the tensors it reads and writes and emits its C.

Quantized (QDQ) graphs as ``onnxruntime.quantization.quantize_static`` writes them run on int8:
a ``DequantizeLinear`` of a runtime tensor produces no code but a :class:`Dequantized` view; a Conv,
Gemm or MatMul whose input is such a view and whose weight is a symmetric int8 constant becomes an
integer kernel (int32 accumulation, per-channel requantization into the output's ``QuantizeLinear``,
which it absorbs); MaxPool, reshapes, slices and concatenations move int8 data unchanged; element-wise
ops dequantize on load and quantize on store in one loop. Anything else runs in float on a
dequantized copy. uint8 tensors are stored as int8 shifted by -128 (same real values).

Fusions in float graphs: BatchNormalization into the preceding Conv, Relu/Clip into Conv/Gemm/MatMul.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from edgereg.errors import ModelFileError

C_TYPES = {"f32": "float", "i8": "int8_t", "bool": "uint8_t"}
ITEM_BYTES = {"f32": 4, "i8": 1, "bool": 1}


# --------------------------------------------------------------------------------------------------
# The intermediate representation
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Quant:
    """How an int8 tensor encodes real numbers: ``real = (q - zero_point) * scale``."""

    scale: float  # a float32 value, > 0
    zero_point: int  # in the int8 representation (uint8 zero points are shifted by -128)


@dataclass(eq=False)
class Tensor:
    """A runtime tensor: a block of the static arena, or a view (reshape, in-place) of another's."""

    name: str  # the ONNX value name (for comments)
    shape: tuple[int, ...]
    dtype: str  # "f32", "i8" or "bool"
    alias_of: Tensor | None = None  # shares this tensor's storage

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * ITEM_BYTES[self.dtype]

    @property
    def root(self) -> Tensor:
        tensor = self
        while tensor.alias_of is not None:
            tensor = tensor.alias_of
        return tensor


@dataclass(frozen=True, eq=False)
class Dequantized:
    """The float value ``(tensor - zero_point) * scale`` of an int8 tensor, not materialized."""

    tensor: Tensor
    quant: Quant

    @property
    def shape(self) -> tuple[int, ...]:
        return self.tensor.shape


@dataclass(frozen=True, eq=False)
class QuantizedConst:
    """A constant int8 weight as a DequantizeLinear of an initializer sees it."""

    values: np.ndarray  # int8 (uint8 shifted by -128)
    scale: np.ndarray  # float32, scalar or per channel along `axis`
    zero_point: np.ndarray  # int32, same shape as scale, in the int8 representation
    axis: int


class Emitter(Protocol):
    """What an op needs from the file writer while it emits C (see c_codegen)."""

    def pointer(self, tensor: Tensor) -> str:
        """A C expression of type ``T *`` for the tensor's place in the arena."""

    def array(self, values: np.ndarray, ctype: str, hint: str) -> str:
        """Declare a ``static const`` array (flash) and return its name."""

    def struct(self, struct_type: str, fields: dict[str, int], hint: str) -> str:
        """Declare a ``static const struct`` (flash) and return its name."""


def c_float(value: float) -> str:
    """A C float literal for a float32 value that reads back bit-exactly (``INFINITY`` for inf)."""
    v = np.float32(value)
    if np.isnan(v):
        raise ModelFileError("the model holds a NaN constant; re-export it from a model without NaN weights")
    if np.isinf(v):
        return "INFINITY" if v > 0 else "-INFINITY"
    text = str(v)
    if "." not in text and "e" not in text:
        text += ".0"
    return text + "f"


# --------------------------------------------------------------------------------------------------
# Loops
# --------------------------------------------------------------------------------------------------

def _collapse(shape: tuple[int, ...], strides: list[list[int]]) -> tuple[list[int], list[list[int]]]:
    """Drop size-1 dims and merge adjacent dims wherever every stride set allows it."""
    dims = [(n, [s[d] for s in strides]) for d, n in enumerate(shape) if n != 1]
    merged: list[tuple[int, list[int]]] = []
    for n, st in dims:
        if merged:
            prev_n, prev_st = merged[-1]
            if all(p == s * n for p, s in zip(prev_st, st)):
                merged[-1] = (prev_n * n, st)
                continue
        merged.append((n, st))
    return [n for n, _ in merged], [[st[k] for _, st in merged] for k in range(len(strides))]


def contiguous_strides(shape: tuple[int, ...]) -> list[int]:
    strides, step = [], 1
    for n in reversed(shape):
        strides.append(step)
        step *= n
    return strides[::-1]


def broadcast_strides(shape: tuple[int, ...], out_shape: tuple[int, ...]) -> list[int]:
    """Element strides of a C-contiguous ``shape`` read at the indices of ``out_shape`` (numpy rules)."""
    padded = (1,) * (len(out_shape) - len(shape)) + tuple(shape)
    return [0 if n == 1 else s for n, s in zip(padded, contiguous_strides(padded))]


def loop_nest(shape: tuple[int, ...], strides: list[list[int]], indent: str) -> tuple[list[str], list[str], str]:
    """Nested ``for`` loops over ``shape`` and one index expression per stride set.

    Returns:
        (opening lines, index expressions, closing text). Dims are collapsed first, so an
        element-wise op on same-shaped tensors is a single loop.
    """
    dims, collapsed = _collapse(shape, strides)
    if not dims:
        return [], ["0"] * len(strides), ""
    lines = []
    for d, n in enumerate(dims):
        lines.append(f"{indent}{'    ' * d}for (int i{d} = 0; i{d} < {n}; ++i{d}) {{")
    exprs = []
    for st in collapsed:
        terms = [f"i{d}" if s == 1 else f"i{d} * {s}" for d, s in enumerate(st) if s != 0]
        exprs.append(" + ".join(terms) if terms else "0")
    closing = "".join(f"{indent}{'    ' * d}}}\n" for d in reversed(range(len(dims))))
    return lines, exprs, closing.rstrip("\n")


# --------------------------------------------------------------------------------------------------
# C operations
# --------------------------------------------------------------------------------------------------

@dataclass(eq=False)
class COp:
    """One step of the generated network function."""

    onnx_op: str  # the ONNX op type it implements (for comments and the report)
    node: str  # the ONNX node name

    @property
    def kernels(self) -> tuple[str, ...]:
        """The C template fragments (c_templates/NAME.c) its code calls."""
        return ()

    def reads(self) -> list[Tensor]:
        raise NotImplementedError

    def writes(self) -> list[Tensor]:
        raise NotImplementedError

    def in_place_input(self) -> Tensor | None:
        """An input the output may overwrite (same shape and element size, read at the same index)."""
        return None

    def emit(self, e: Emitter) -> list[str]:
        raise NotImplementedError


def _act_args(act: tuple[float, float]) -> str:
    return f"{c_float(act[0])}, {c_float(act[1])}"


@dataclass(eq=False)
class QOutput:
    """How an int8 kernel stores its int32 accumulators (see q8_output.c)."""

    multiplier: np.ndarray  # (channels,) float32: x_scale * w_scale[c] (/ y_scale for int8 output)
    zero_point: int = 0  # of the int8 output
    q_min: int = -128  # int8 clamp (fused ReLU/Clip)
    q_max: int = 127
    act: tuple[float, float] = (-math.inf, math.inf)  # float clamp for float output

    def declare(self, e: Emitter, y: Tensor, hint: str) -> list[str]:
        multiplier = e.array(self.multiplier, "float", f"{hint}_multiplier")
        int8_out = y.dtype == "i8"
        return [
            "    const struct q8_output out = {",
            f"        .multiplier = {multiplier}, .zero_point = {self.zero_point}, "
            f".min = {self.q_min}, .max = {self.q_max},",
            f"        .act_min = {c_float(self.act[0])}, .act_max = {c_float(self.act[1])},",
            f"        .q = {e.pointer(y) if int8_out else 'NULL'}, .f = {'NULL' if int8_out else e.pointer(y)},",
            "    };",
        ]


@dataclass(eq=False)
class Conv2D(COp):
    """Conv (dense, grouped or depthwise): float, or int8 in and int8/float out with ``output`` set."""

    x: Tensor
    y: Tensor
    geometry: dict[str, int]
    weight: np.ndarray  # (M, C/groups, KH, KW) float32 or int8
    bias: np.ndarray | None = None  # (M,) float32, or int32 in accumulator units
    act: tuple[float, float] = (-math.inf, math.inf)  # float path: fused Relu/Clip
    x_zero: int = 0  # int8 path: input zero point
    output: QOutput | None = None  # int8 path: requantization

    @property
    def kernels(self):
        return ("conv2d_q8",) if self.output else ("conv2d_f32",)

    def reads(self):
        return [self.x]

    def writes(self):
        return [self.y]

    def emit(self, e):
        hint = "conv"
        geometry = e.struct("conv2d_geometry", self.geometry, hint)
        if self.output is None:
            weight = e.array(self.weight, "float", f"{hint}_weight")
            bias = e.array(self.bias, "float", f"{hint}_bias") if self.bias is not None else "NULL"
            return [f"conv2d_f32({e.pointer(self.x)}, &{geometry}, {weight}, {bias}, "
                    f"{_act_args(self.act)}, {e.pointer(self.y)});"]
        weight = e.array(self.weight, "int8_t", f"{hint}_weight")
        bias = e.array(self.bias, "int32_t", f"{hint}_bias") if self.bias is not None else "NULL"
        return ["{", *self.output.declare(e, self.y, hint),
                f"    conv2d_q8({e.pointer(self.x)}, &{geometry}, {weight}, {bias}, {self.x_zero}, &out);", "}"]


@dataclass(eq=False)
class Dense(COp):
    """Gemm / MatMul with a constant weight: ``y[r, n] = x[r, :] . weight[n, :] + bias[n]``."""

    x: Tensor
    y: Tensor
    rows: int  # prod of the input dims but the last
    weight: np.ndarray  # (N, K) float32 or int8
    bias: np.ndarray | None = None
    act: tuple[float, float] = (-math.inf, math.inf)
    x_zero: int = 0
    output: QOutput | None = None

    @property
    def kernels(self):
        return ("dense_q8",) if self.output else ("dense_f32",)

    def reads(self):
        return [self.x]

    def writes(self):
        return [self.y]

    def emit(self, e):
        n, k = self.weight.shape
        if self.output is None:
            weight = e.array(self.weight, "float", "dense_weight")
            bias = e.array(self.bias, "float", "dense_bias") if self.bias is not None else "NULL"
            return [f"dense_f32({e.pointer(self.x)}, {self.rows}, {k}, {weight}, {bias}, {n}, "
                    f"{_act_args(self.act)}, {e.pointer(self.y)});"]
        weight = e.array(self.weight, "int8_t", "dense_weight")
        bias = e.array(self.bias, "int32_t", "dense_bias") if self.bias is not None else "NULL"
        return ["{", *self.output.declare(e, self.y, "dense"),
                f"    dense_q8({e.pointer(self.x)}, {self.rows}, {k}, {weight}, {bias}, {n}, {self.x_zero}, &out);",
                "}"]


@dataclass(eq=False)
class Pool2D(COp):
    """MaxPool / AveragePool; on int8 data input and output share one Quant."""

    kind: str  # "max" or "avg"
    x: Tensor
    y: Tensor
    geometry: dict[str, int]
    zero_point: int = 0  # int8 average: the shared zero point

    @property
    def kernels(self):
        return (f"{self.kind}pool2d_{'q8' if self.x.dtype == 'i8' else 'f32'}",)

    def reads(self):
        return [self.x]

    def writes(self):
        return [self.y]

    def emit(self, e):
        geometry = e.struct("pool2d_geometry", self.geometry, "pool")
        name = self.kernels[0]
        extra = f", {self.zero_point}" if name == "avgpool2d_q8" else ""
        return [f"{name}({e.pointer(self.x)}, &{geometry}{extra}, {e.pointer(self.y)});"]


@dataclass(eq=False)
class GlobalPool(COp):
    """GlobalAveragePool / GlobalMaxPool over each channel plane, on float or int8 data."""

    kind: str  # "avg" or "max"
    x: Tensor
    y: Tensor
    quant: Quant | None = None  # int8 average: the input's Quant (the output is float)

    @property
    def kernels(self):
        return (f"global_{self.kind}pool_{'q8' if self.x.dtype == 'i8' else 'f32'}",)

    def reads(self):
        return [self.x]

    def writes(self):
        return [self.y]

    def emit(self, e):
        channels = self.x.shape[1]
        size = self.x.size // channels
        extra = f", {self.quant.zero_point}, {c_float(self.quant.scale)}" if self.quant else ""
        return [f"{self.kernels[0]}({e.pointer(self.x)}, {channels}, {size}{extra}, {e.pointer(self.y)});"]


@dataclass(eq=False)
class Softmax(COp):
    """Softmax along one axis of x viewed as (outer, n, inner)."""

    x: Tensor
    y: Tensor
    outer: int  # product of the dims before the axis
    n: int  # the axis length
    inner: int  # product of the dims after the axis

    @property
    def kernels(self):
        return ("softmax_f32",)

    def reads(self):
        return [self.x]

    def writes(self):
        return [self.y]

    def in_place_input(self):
        return self.x

    def emit(self, e):
        return [f"softmax_f32({e.pointer(self.x)}, {self.outer}, {self.n}, {self.inner}, {e.pointer(self.y)});"]


@dataclass(eq=False)
class Operand:
    """One input of an element-wise loop, loaded as float."""

    shape: tuple[int, ...]
    tensor: Tensor | None = None  # runtime f32 / bool tensor, or the int8 tensor of `quant`
    quant: Quant | None = None  # dequantize on load
    values: np.ndarray | None = None  # a constant (scalar constants become literals)

    def load(self, pointer: str, index: str) -> str:
        """The C float expression of this operand at ``index`` (``pointer`` names its array)."""
        if self.values is not None:
            if self.values.size == 1:
                return c_float(self.values.reshape(-1)[0])
            return f"{pointer}[{index}]"
        element = f"{pointer}[{index}]"
        if self.quant is None:
            return element if self.tensor.dtype == "f32" else f"(float){element}"
        zero = self.quant.zero_point
        centred = (f"(int32_t){element}" if zero == 0
                   else f"((int32_t){element} {'-' if zero > 0 else '+'} {abs(zero)})")
        return f"(float){centred} * {c_float(self.quant.scale)}"


@dataclass(eq=False)
class Elementwise(COp):
    """``y = expression(a0, a1, ...)`` with numpy broadcasting; a_k are the operands loaded as float.

    The store converts to the output type: float, bool (``!= 0``) or int8 (``QuantizeLinear``).
    """

    y: Tensor
    operands: list[Operand]
    expression: str = "a0"
    store: Quant | None = None  # int8 output

    @property
    def kernels(self):
        return ("q8_round",) if self.store else ()

    def reads(self):
        return [op.tensor for op in self.operands if op.tensor is not None]

    def writes(self):
        return [self.y]

    def in_place_input(self):
        for op in self.operands:
            if (op.tensor is not None and op.tensor.shape == self.y.shape
                    and ITEM_BYTES[op.tensor.dtype] == ITEM_BYTES[self.y.dtype]):
                return op.tensor
        return None

    def emit(self, e):
        lines = ["{"]
        pointers, strides = [], []
        for k, op in enumerate(self.operands):
            if op.values is not None and op.values.size == 1:
                pointers.append("")
            elif op.values is not None:
                name = e.array(np.ascontiguousarray(op.values, dtype=np.float32), "float", "operand")
                pointers.append(name)
            else:
                lines.append(f"    const {C_TYPES[op.tensor.dtype]} *x{k} = {e.pointer(op.tensor)};")
                pointers.append(f"x{k}")
            strides.append(broadcast_strides(op.shape, self.y.shape))
        lines.append(f"    {C_TYPES[self.y.dtype]} *y = {e.pointer(self.y)};")
        opening, indices, closing = loop_nest(self.y.shape, [contiguous_strides(self.y.shape), *strides], "    ")
        body_indent = "    " * (len(opening) + 1)
        lines += opening
        for k, op in enumerate(self.operands):
            lines.append(f"{body_indent}const float a{k} = {op.load(pointers[k], indices[k + 1])};")
        value = self.expression
        if self.y.dtype == "i8":
            value = f"q8_quantize({value}, {c_float(self.store.scale)}, {self.store.zero_point})"
        elif self.y.dtype == "bool":
            value = f"(uint8_t)(({value}) != 0.0f)"
        lines.append(f"{body_indent}y[{indices[0]}] = {value};")
        if closing:
            lines += closing.split("\n")
        lines.append("}")
        return lines


@dataclass(eq=False)
class Reduce(COp):
    """ReduceSum / ReduceMean / ReduceMax / ReduceMin over some axes (keepdims decides y's shape)."""

    kind: str  # "sum", "mean", "max" or "min"
    x: Tensor
    y: Tensor
    axes: tuple[int, ...] = ()

    def reads(self):
        return [self.x]

    def writes(self):
        return [self.y]

    def emit(self, e):
        kept = [1 if d in self.axes else n for d, n in enumerate(self.x.shape)]
        out_strides = broadcast_strides(tuple(kept), self.x.shape)
        count = math.prod(self.x.shape[d] for d in self.axes)
        init = {"sum": "0.0f", "mean": "0.0f", "max": "-INFINITY", "min": "INFINITY"}[self.kind]
        opening, (i_in, i_out), closing = loop_nest(self.x.shape, [contiguous_strides(self.x.shape), out_strides],
                                                    "    ")
        body = "    " * (len(opening) + 1)
        update = {"sum": f"y[{i_out}] += x[{i_in}];", "mean": f"y[{i_out}] += x[{i_in}];",
                  "max": f"y[{i_out}] = fmaxf(y[{i_out}], x[{i_in}]);",
                  "min": f"y[{i_out}] = fminf(y[{i_out}], x[{i_in}]);"}[self.kind]
        lines = ["{", f"    const float *x = {e.pointer(self.x)};", f"    float *y = {e.pointer(self.y)};",
                 f"    for (int i = 0; i < {self.y.size}; ++i) {{", f"        y[i] = {init};", "    }",
                 *opening, body + update]
        if closing:
            lines += closing.split("\n")
        if self.kind == "mean":
            lines += [f"    for (int i = 0; i < {self.y.size}; ++i) {{", f"        y[i] /= {c_float(count)};", "    }"]
        lines.append("}")
        return lines


@dataclass(eq=False)
class Gather(COp):
    """A pure data movement (Transpose, Slice, Gather, Split, Expand, Tile...): ``y[i] = x[index[i]]``.

    ``index`` holds, for every element of y, the flat index in x it copies; an affine index becomes
    strided loops, anything else a constant index table.
    """

    x: Tensor
    y: Tensor
    index: np.ndarray  # int64, shaped like y

    def reads(self):
        return [self.x]

    def writes(self):
        return [self.y]

    def emit(self, e):
        ctype = C_TYPES[self.x.dtype]
        lines = ["{", f"    const {ctype} *x = {e.pointer(self.x)};", f"    {ctype} *y = {e.pointer(self.y)};"]
        affine = _affine_strides(self.index)
        if affine is None:
            table_type = "uint16_t" if self.x.size <= 0xFFFF else "int32_t"
            table = e.array(self.index.reshape(-1), table_type, "gather_index")
            lines += [f"    for (int i = 0; i < {self.y.size}; ++i) {{", f"        y[i] = x[{table}[i]];", "    }"]
        else:
            base, strides = affine
            opening, (i_out, i_in), closing = loop_nest(self.y.shape, [contiguous_strides(self.y.shape), strides],
                                                        "    ")
            source = f"{base} + {i_in}" if base else i_in
            lines += [*opening, "    " * (len(opening) + 1) + f"y[{i_out}] = x[{source}];"]
            if closing:
                lines += closing.split("\n")
        lines.append("}")
        return lines


def _affine_strides(index: np.ndarray) -> tuple[int, list[int]] | None:
    """(base, strides) when ``index[i0, i1, ...] == base + sum(i_d * strides[d])``, else None."""
    base = int(index.reshape(-1)[0]) if index.size else 0
    strides = []
    for d, n in enumerate(index.shape):
        if n == 1:
            strides.append(0)
            continue
        step = [0] * index.ndim
        step[d] = 1
        strides.append(int(index[tuple(step)]) - base)
    grids = np.indices(index.shape, sparse=True) if index.ndim else []
    predicted = base + sum(g * s for g, s in zip(grids, strides))
    return (base, strides) if np.array_equal(predicted, index) else None


@dataclass(eq=False)
class Concat(COp):
    """Concatenation along one axis: per input, ``outer`` blocks of ``axis_len * inner`` elements.

    For an int8 output (``store``), a part whose Quant differs from the output's (``part_quants``)
    is requantized element by element, which is what DequantizeLinear -> Concat -> QuantizeLinear means.
    """

    parts: list[Tensor | np.ndarray]  # runtime tensors or float constants
    y: Tensor
    axis: int = 1
    part_quants: list[Quant | None] | None = None  # int8 output: each part's Quant
    store: Quant | None = None  # int8 output: the output's Quant

    @property
    def kernels(self):
        requantizes = self.store is not None and any(q != self.store for q in self.part_quants)
        return ("q8_round",) if requantizes else ()

    def reads(self):
        return [p for p in self.parts if isinstance(p, Tensor)]

    def writes(self):
        return [self.y]

    def emit(self, e):
        ctype = C_TYPES[self.y.dtype]
        outer = math.prod(self.y.shape[:self.axis])
        inner = math.prod(self.y.shape[self.axis + 1:])
        total = self.y.shape[self.axis] * inner
        lines, offset = ["{", f"    {ctype} *y = {e.pointer(self.y)};"], 0
        for k, part in enumerate(self.parts):
            block = part.shape[self.axis] * inner
            if isinstance(part, Tensor):
                source = e.pointer(part)
            else:
                source = e.array(np.ascontiguousarray(part, dtype=np.float32), "float", "concat_part")
            quant = self.part_quants[k] if self.store is not None else None
            if quant is not None and quant != self.store:
                load = Operand(part.shape, part, quant).load(f"x{k}", f"o * {block} + i")
                lines += [f"    const int8_t *x{k} = {source};",
                          f"    for (int o = 0; o < {outer}; ++o) {{",
                          f"        for (int i = 0; i < {block}; ++i) {{",
                          f"            y[o * {total} + {offset} + i] = q8_quantize({load}, "
                          f"{c_float(self.store.scale)}, {self.store.zero_point});",
                          "        }", "    }"]
            elif outer == 1:
                lines.append(f"    memcpy(y + {offset}, {source}, {block} * sizeof({ctype}));")
            else:
                lines += [f"    for (int o = 0; o < {outer}; ++o) {{",
                          f"        memcpy(y + o * {total} + {offset}, {source} + o * {block}, {block} * sizeof({ctype}));",
                          "    }"]
            offset += block
        lines.append("}")
        return lines


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
                         "change the model (supported ops: edgereg.export.c_ops.SUPPORTED_OPS) or deploy it "
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
            drop = {int(d) % len(shape) for d in axes} if axes is not None else {d for d, n in enumerate(shape) if n == 1}
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
