"""The C operations the generator emits: a small IR of tensors plus one class per C step.

Everything here is independent of ONNX; :mod:`edgereg.export.c.lowering` builds these objects from a
graph and :mod:`edgereg.export.c.codegen` plans their memory and writes the files.

* The tensor model: :class:`Tensor` (a block of the static arena, or a view of another's),
  :class:`Quant` (how int8 encodes reals; uint8 is stored as int8 shifted by -128, same real values),
  :class:`Dequantized` (the float value of an int8 tensor, not materialized) and
  :class:`QuantizedConst` (an int8 weight).
* :class:`COp` and its subclasses -- :class:`Conv2D`, :class:`Dense`, :class:`Pool2D`,
  :class:`GlobalPool`, :class:`Softmax`, :class:`Elementwise`, :class:`Reduce`, :class:`Gather`,
  :class:`Concat` -- each know the tensors they read and write, the C template kernels they call, and
  emit their C through an :class:`Emitter` (the file writer: arena pointers and flash constants).
* C helpers: :func:`c_float` (bit-exact float literals) and :func:`loop_nest` /
  :func:`contiguous_strides` / :func:`broadcast_strides` (collapsed, broadcasting loops).
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
        """The C template fragments (templates/NAME.c) its code calls."""
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


def _weight_and_bias(e: Emitter, weight: np.ndarray, bias: np.ndarray | None, hint: str, *,
                     quantized: bool) -> tuple[str, str]:
    """Flash names of a layer's weight and bias: float and float, or (quantized) int8 and int32
    (the bias in accumulator units); ``NULL`` for no bias. The weight is emitted first."""
    weight_type, bias_type = ("int8_t", "int32_t") if quantized else ("float", "float")
    weight_name = e.array(weight, weight_type, f"{hint}_weight")
    return weight_name, (e.array(bias, bias_type, f"{hint}_bias") if bias is not None else "NULL")


class _ReadsXWritesY:
    """``reads()`` is ``[x]`` and ``writes()`` is ``[y]``: for the ops with one input and one output."""

    x: Tensor
    y: Tensor

    def reads(self) -> list[Tensor]:
        return [self.x]

    def writes(self) -> list[Tensor]:
        return [self.y]


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
class Conv2D(_ReadsXWritesY, COp):
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

    def emit(self, e):
        hint = "conv"
        geometry = e.struct("conv2d_geometry", self.geometry, hint)
        weight, bias = _weight_and_bias(e, self.weight, self.bias, hint, quantized=self.output is not None)
        if self.output is None:
            return [f"conv2d_f32({e.pointer(self.x)}, &{geometry}, {weight}, {bias}, "
                    f"{_act_args(self.act)}, {e.pointer(self.y)});"]
        return ["{", *self.output.declare(e, self.y, hint),
                f"    conv2d_q8({e.pointer(self.x)}, &{geometry}, {weight}, {bias}, {self.x_zero}, &out);", "}"]


@dataclass(eq=False)
class Dense(_ReadsXWritesY, COp):
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

    def emit(self, e):
        n, k = self.weight.shape
        weight, bias = _weight_and_bias(e, self.weight, self.bias, "dense", quantized=self.output is not None)
        if self.output is None:
            return [f"dense_f32({e.pointer(self.x)}, {self.rows}, {k}, {weight}, {bias}, {n}, "
                    f"{_act_args(self.act)}, {e.pointer(self.y)});"]
        return ["{", *self.output.declare(e, self.y, "dense"),
                f"    dense_q8({e.pointer(self.x)}, {self.rows}, {k}, {weight}, {bias}, {n}, {self.x_zero}, &out);",
                "}"]


@dataclass(eq=False)
class Pool2D(_ReadsXWritesY, COp):
    """MaxPool / AveragePool; on int8 data input and output share one Quant."""

    kind: str  # "max" or "avg"
    x: Tensor
    y: Tensor
    geometry: dict[str, int]
    zero_point: int = 0  # int8 average: the shared zero point

    @property
    def kernels(self):
        return (f"{self.kind}pool2d_{'q8' if self.x.dtype == 'i8' else 'f32'}",)

    def emit(self, e):
        geometry = e.struct("pool2d_geometry", self.geometry, "pool")
        name = self.kernels[0]
        extra = f", {self.zero_point}" if name == "avgpool2d_q8" else ""
        return [f"{name}({e.pointer(self.x)}, &{geometry}{extra}, {e.pointer(self.y)});"]


@dataclass(eq=False)
class GlobalPool(_ReadsXWritesY, COp):
    """GlobalAveragePool / GlobalMaxPool over each channel plane, on float or int8 data."""

    kind: str  # "avg" or "max"
    x: Tensor
    y: Tensor
    quant: Quant | None = None  # int8 average: the input's Quant (the output is float)

    @property
    def kernels(self):
        return (f"global_{self.kind}pool_{'q8' if self.x.dtype == 'i8' else 'f32'}",)

    def emit(self, e):
        channels = self.x.shape[1]
        size = self.x.size // channels
        extra = f", {self.quant.zero_point}, {c_float(self.quant.scale)}" if self.quant else ""
        return [f"{self.kernels[0]}({e.pointer(self.x)}, {channels}, {size}{extra}, {e.pointer(self.y)});"]


@dataclass(eq=False)
class Softmax(_ReadsXWritesY, COp):
    """Softmax along one axis of x viewed as (outer, n, inner)."""

    x: Tensor
    y: Tensor
    outer: int  # product of the dims before the axis
    n: int  # the axis length
    inner: int  # product of the dims after the axis

    @property
    def kernels(self):
        return ("softmax_f32",)

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
class Reduce(_ReadsXWritesY, COp):
    """ReduceSum / ReduceMean / ReduceMax / ReduceMin over some axes (keepdims decides y's shape)."""

    kind: str  # "sum", "mean", "max" or "min"
    x: Tensor
    y: Tensor
    axes: tuple[int, ...] = ()

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
class Gather(_ReadsXWritesY, COp):
    """A pure data movement (Transpose, Slice, Gather, Split, Expand, Tile...): ``y[i] = x[index[i]]``.

    ``index`` holds, for every element of y, the flat index in x it copies; an affine index becomes
    strided loops, anything else a constant index table.
    """

    x: Tensor
    y: Tensor
    index: np.ndarray  # int64, shaped like y

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
                          f"        memcpy(y + o * {total} + {offset}, {source} + o * {block}, "
                          f"{block} * sizeof({ctype}));",
                          "    }"]
            offset += block
        lines.append("}")
        return lines
