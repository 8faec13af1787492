"""Rendering generated C: ``model.c`` and ``model.h`` text from a lowered program and its arena plan.

:class:`CRenderer` implements ``edgereg.export.c.ops.Emitter`` (arena pointers, flash constants)
while the ops emit their calls, then assembles the kernels (``templates/*.c``, in dependency
order), the constants, the preprocessing of the card, the public API and the lab post-processing
(``edgereg.export.c.lab``), and the documented header.
"""

from __future__ import annotations

import importlib.resources
import re

import numpy as np

from edgereg import __version__
from edgereg.core.card import ModelCard
from edgereg.errors import ModelFileError
from edgereg.export.c.arena import ArenaPlan
from edgereg.export.c.lab import LabC, comment_safe
from edgereg.export.c.lowering import Program
from edgereg.export.c.ops import C_TYPES, Tensor, c_float
from edgereg.preprocess.config import PreprocessConfig
from edgereg.preprocess.geometry import crop_box

_REQUIRES = re.compile(r"/\* edgereg-requires: ([\w ]+) \*/")


def _template(name: str) -> str:
    return importlib.resources.files("edgereg.export.c").joinpath("templates", f"{name}.c").read_text("utf-8")


def _with_dependencies(names) -> list[str]:
    """Kernel fragments in an order where each comes after the fragments it requires."""
    ordered: list[str] = []

    def visit(name: str) -> None:
        if name in ordered:
            return
        match = _REQUIRES.search(_template(name))
        for dependency in (match.group(1).split() if match else []):
            visit(dependency)
        ordered.append(name)

    for name in sorted(names):
        visit(name)
    return ordered


def _float_literals(values: np.ndarray) -> list[str]:
    """C literals for float32 values: 9 significant digits always read back bit-exactly."""
    if not np.all(np.isfinite(values)):
        raise ModelFileError("the model holds a NaN or infinite weight; re-export it from finite weights")
    return [f"{v:#.9g}f" for v in values.astype(np.float64).tolist()]


def c_string(text: str) -> str:
    """A C string literal (UTF-8 bytes; quotes, backslashes and non-ASCII as octal escapes)."""
    out = []
    for byte in text.encode("utf-8"):
        char = chr(byte)
        out.append(char if 32 <= byte < 127 and char not in '"\\?' else f"\\{byte:03o}")
    return '"' + "".join(out) + '"'


class CRenderer:
    """Renders model.c / model.h; implements c_ops.Emitter (arena pointers and flash constants)."""

    def __init__(self, program: Program, plan: ArenaPlan, card: ModelCard, *, prefix: str, source: str) -> None:
        self.program, self.plan, self.card = program, plan, card
        self.prefix, self.macro, self.source = prefix, prefix.upper(), source
        self.constants: list[str] = []
        self.flash_bytes = 0
        self._names: dict[tuple, str] = {}
        self._counts: dict[str, int] = {}
        self.lab = LabC(card, prefix, self.macro)  # calibration, intervals and lab flags after the network

    # -- Emitter -----------------------------------------------------------------------------------

    def pointer(self, tensor: Tensor) -> str:
        return f"ARENA({C_TYPES[tensor.dtype]}, {self.plan.offset(tensor)})"

    def _name(self, hint: str) -> str:
        n = self._counts.get(hint, 0)
        self._counts[hint] = n + 1
        return f"{hint}{n}"

    def array(self, values: np.ndarray, ctype: str, hint: str) -> str:
        numpy_type = {"float": np.float32, "int8_t": np.int8, "int32_t": np.int32, "uint16_t": np.uint16}[ctype]
        flat = np.ascontiguousarray(values, dtype=numpy_type).reshape(-1)
        key = (ctype, flat.tobytes())
        if key in self._names:
            return self._names[key]
        name = self._name(hint)
        per_line = 8 if ctype == "float" else 16
        items = _float_literals(flat) if ctype == "float" else [str(v) for v in flat.tolist()]
        rows = [", ".join(items[i:i + per_line]) for i in range(0, len(items), per_line)]
        body = ",\n    ".join(rows)
        self.constants.append(f"static const {ctype} {name}[{flat.size}] = {{\n    {body}\n}};")
        self.flash_bytes += flat.nbytes
        self._names[key] = name
        return name

    def struct(self, struct_type: str, fields: dict[str, int], hint: str) -> str:
        key = (struct_type, tuple(fields.items()))
        if key in self._names:
            return self._names[key]
        name = self._name(hint)
        body = ", ".join(f".{k} = {int(v)}" for k, v in fields.items())
        self.constants.append(f"static const struct {struct_type} {name} = {{{body}}};")
        self.flash_bytes += 4 * len(fields)
        self._names[key] = name
        return name

    # -- files -------------------------------------------------------------------------------------

    def render(self) -> tuple[str, str]:
        network = self._network()
        kernels = _with_dependencies({k for op in self.program.ops for k in op.kernels})
        card = self.card
        names = ", ".join(c_string(t) for t in card.targets)
        units = ", ".join(c_string(u) for u in (card.units or ("",) * len(card.targets)))
        self.flash_bytes += sum(len(t.encode()) + 1 for t in card.targets + (card.units or ("",) * len(card.targets)))
        preprocess = self._preprocess()
        m, p = self.macro, self.prefix
        parts = [
            self._banner(),
            '#include "model.h"\n\n#include <math.h>\n#include <stddef.h>\n#include <string.h>',
            "/* ---- kernels ---------------------------------------------------------------------- */",
            *[_template(k).strip() for k in kernels],
            "/* ---- weights and tables (flash) --------------------------------------------------- */",
            *self.constants,
            f"const char *const {p}_output_names[{m}_N_OUTPUTS] = {{{names}}};",
            f"const char *const {p}_output_units[{m}_N_OUTPUTS] = {{{units}}};",
            f"const char {p}_kind[] = {c_string(card.kind)};",
            "/* ---- activations (RAM): one static arena, tensors placed by lifetime --------------- */",
            f"static float arena[{self.plan.size // 4}];\n"
            "#define ARENA(type, offset) ((type *)(void *)((unsigned char *)arena + (offset)))",
            network,
            "/* ---- preprocessing ---------------------------------------------------------------- */",
            preprocess,
            "/* ---- public API ------------------------------------------------------------------- */",
            self._api(),
            "/* ---- lab-grade readings: calibration, conformal intervals, flags (edgereg.lab.readout) ------- */",
            self.lab.source(),
            self._read_api(),
        ]
        self.flash_bytes += self.lab.flash_bytes
        return "\n\n".join(parts) + "\n", self._header()

    def _banner(self) -> str:
        kind = "int8 (onnxruntime QDQ: integer kernels, float where the graph is float)" \
            if self.program.quantized else "float32"
        return (f"/* Generated by edgereg {__version__} from {comment_safe(self.source)}; "
                "do not edit (regenerate with\n"
                f" * `edgereg export RUN_DIR --c`). Weights: {kind}. ONNX ops: {', '.join(self.program.onnx_ops)}.\n"
                " * Compiles with any C99 compiler: cc -std=c99 -O2 -c model.c (link with -lm). */")

    def _network(self) -> str:
        lines = ["/* The network: the normalized input at the arena's input offset -> the output tensor. */",
                 "static void network(void)", "{"]
        for k, op in enumerate(self.program.ops):
            shapes = " ".join(f"{t.name}{t.shape}" for t in op.reads()) + " -> " + \
                " ".join(f"{t.name}{t.shape} {t.dtype}" for t in op.writes())
            lines.append(f"    /* {k}: {op.onnx_op} '{comment_safe(op.node)}': {comment_safe(shapes)} */")
            lines += ["    " + line for line in op.emit(self)]
        lines.append("}")
        return "\n".join(lines)

    def _preprocess(self) -> str:
        card = self.card
        config = PreprocessConfig.from_card(card)
        scale, offset = config.affine()
        height, width = card.input_size
        lines = [f"#define PRE_IN_C {card.n_channels}", f"#define PRE_IN_H {height}", f"#define PRE_IN_W {width}",
                 "#define PRE_CROP_NONE 0", "#define PRE_CROP_CENTER 1", "#define PRE_CROP_ROI 2"]
        if card.roi is not None:
            box = crop_box(height, width, config)  # a fixed ROI does not depend on the frame size
            lines += ["#define PRE_CROP_MODE PRE_CROP_ROI", f"#define PRE_ROI_X0 {int(box.x0)}",
                      f"#define PRE_ROI_Y0 {int(box.y0)}", f"#define PRE_ROI_SIDE {int(box.w)}"]
        else:
            lines.append(f"#define PRE_CROP_MODE {'PRE_CROP_NONE' if card.crop == 'none' else 'PRE_CROP_CENTER'}")
        lines += [f"#define PRE_CIRCLE_MASK {int(card.circle)}", f"#define PRE_FILL {c_float(card.fill)}",
                  f"static const float norm_scale[PRE_IN_C] = {{{', '.join(c_float(v) for v in scale)}}};",
                  f"static const float norm_offset[PRE_IN_C] = {{{', '.join(c_float(v) for v in offset)}}};"]
        self.flash_bytes += 8 * card.n_channels
        return "\n".join(lines) + "\n\n" + _template("preprocess").strip()

    def _api(self) -> str:
        m, p = self.macro, self.prefix
        inp, out = self.pointer(self.program.input), self.pointer(self.program.output)
        coords = []
        if self.card.target_kind.xy_points:
            coords = ["    for (int t = 0; t + 1 < @M_N_OUTPUTS; t += 2) {",
                      "        out[t] = (float)box.x0 + value[t] * (float)box.w - 0.5f;",
                      "        out[t + 1] = (float)box.y0 + value[t + 1] * (float)box.h - 0.5f;",
                      "        if (scale != NULL) {", "            scale[t] = (float)box.w;",
                      "            scale[t + 1] = (float)box.h;", "        }", "    }"]
        text = "\n".join([
            "static int check_frame(const uint8_t *pixels, int width, int height, int stride, int channels)",
            "{",
            "    if (pixels == NULL) {", "        return @M_ERR_NULL;", "    }",
            "    if (width < 1 || height < 1 || stride < width * channels) {", "        return @M_ERR_SIZE;", "    }",
            "    return @M_OK;",
            "}",
            "",
            "static int predict(const uint8_t *pixels, int width, int height, int stride, int channels, float *out,",
            "                   float *scale)",
            "{",
            "    const int status = check_frame(pixels, width, height, stride, channels);",
            "    if (status != @M_OK) {", "        return status;", "    }",
            "    if (out == NULL) {", "        return @M_ERR_NULL;", "    }",
            "    const struct frame f = {pixels, width, height, stride, channels};",
            f"    {'const struct crop_box box = ' if coords else ''}preprocess_frame(&f, {inp});",
            "    network();",
            f"    const float *value = {out};",
            "    for (int t = 0; t < @M_N_OUTPUTS; ++t) {", "        out[t] = value[t];",
            "        if (scale != NULL) {", "            scale[t] = 1.0f;", "        }", "    }",
            *coords,
            "    return @M_OK;",
            "}",
            "",
            "static int preprocess(const uint8_t *pixels, int width, int height, int stride, int channels, "
            "float *input)",
            "{",
            "    const int status = check_frame(pixels, width, height, stride, channels);",
            "    if (status != @M_OK) {", "        return status;", "    }",
            "    if (input == NULL) {", "        return @M_ERR_NULL;", "    }",
            "    const struct frame f = {pixels, width, height, stride, channels};",
            "    preprocess_frame(&f, input);",
            "    return @M_OK;",
            "}",
            "",
            "int @P_predict_rgb888(const uint8_t *pixels, int width, int height, int stride, float out[@M_N_OUTPUTS])",
            "{", "    return predict(pixels, width, height, stride, 3, out, NULL);", "}",
            "",
            "int @P_predict_gray8(const uint8_t *pixels, int width, int height, int stride, float out[@M_N_OUTPUTS])",
            "{", "    return predict(pixels, width, height, stride, 1, out, NULL);", "}",
            "",
            "int @P_preprocess_rgb888(const uint8_t *pixels, int width, int height, int stride, float *input)",
            "{", "    return preprocess(pixels, width, height, stride, 3, input);", "}",
            "",
            "int @P_preprocess_gray8(const uint8_t *pixels, int width, int height, int stride, float *input)",
            "{", "    return preprocess(pixels, width, height, stride, 1, input);", "}",
            "",
            "int @P_infer(const float *input, float out[@M_N_OUTPUTS])",
            "{",
            "    if (input == NULL || out == NULL) {", "        return @M_ERR_NULL;", "    }",
            f"    float *arena_input = {inp};",
            "    if (input != arena_input) {",
            "        memcpy(arena_input, input, sizeof(float) * @M_INPUT_LENGTH);",
            "    }",
            "    network();",
            f"    memcpy(out, {out}, sizeof(float) * @M_N_OUTPUTS);",
            "    return @M_OK;",
            "}",
        ])
        return text.replace("@M_", f"{m}_").replace("@P_", f"{p}_")

    def _read_api(self) -> str:
        """The frame -> lab reading entry points (network, then ``<prefix>_postprocess``)."""
        m, p = self.macro, self.prefix
        text = "\n".join([
            "static int read_frame(const uint8_t *pixels, int width, int height, int stride, int channels,",
            "                      float confidence, struct @P_reading *out)",
            "{",
            "    float raw[@M_N_OUTPUTS];",
            "    float scale[@M_N_OUTPUTS];",
            "    if (out == NULL) {", "        return @M_ERR_NULL;", "    }",
            "    if (lab_level(confidence) < 0) {", "        return @M_ERR_CONFIDENCE;", "    }",
            "    const int status = predict(pixels, width, height, stride, channels, raw, scale);",
            "    if (status != @M_OK) {", "        return status;", "    }",
            "    return @P_postprocess(raw, scale, confidence, out);",
            "}",
            "",
            "int @P_read_rgb888(const uint8_t *pixels, int width, int height, int stride, float confidence,",
            "                   struct @P_reading *out)",
            "{", "    return read_frame(pixels, width, height, stride, 3, confidence, out);", "}",
            "",
            "int @P_read_gray8(const uint8_t *pixels, int width, int height, int stride, float confidence,",
            "                  struct @P_reading *out)",
            "{", "    return read_frame(pixels, width, height, stride, 1, confidence, out);", "}",
        ])
        return text.replace("@M_", f"{m}_").replace("@P_", f"{p}_")

    def _preprocessing_steps(self) -> list[str]:
        """The card's preprocessing, step by step, for model.h."""
        card = self.card
        height, width = card.input_size
        if card.roi is not None:
            box = crop_box(height, width, PreprocessConfig.from_card(card))
            crop = (f"the fixed ROI square x {int(box.x0)}..{int(box.x0 + box.w) - 1}, "
                    f"y {int(box.y0)}..{int(box.y0 + box.h) - 1} (black past the frame)")
        else:
            crop = "the whole frame" if card.crop == "none" else "the largest centred square"
        fmt = lambda values: ", ".join(f"{v:g}" for v in values)  # noqa: E731
        steps = [f"crop {crop};",
                 f"resize to {height} x {width}: area average (OpenCV INTER_AREA) when the crop is at least",
                 "  that size, else bilinear (INTER_LINEAR); each channel rounded to an integer level;"]
        if card.channels == "gray":
            steps.append("gray = 0.299 R + 0.587 G + 0.114 B;")
        steps.append(f"normalize (pixel / 255 - mean) / std, mean ({fmt(card.mean)}), std ({fmt(card.std)});")
        if card.circle:
            steps.append(f"circle mask: pixels outside the inscribed circle get {card.fill:g}.")
        return steps

    def _header(self) -> str:
        card, m, p = self.card, self.macro, self.prefix
        height, width = card.input_size
        units = card.units or ("",) * len(card.targets)
        targets = ", ".join(f"{t}{f' [{u}]' if u else ''}" for t, u in zip(card.targets, units))
        steps = "\n".join(f" *         {step}" for step in self._preprocessing_steps())
        coords = ("\n *       Coordinates come back in frame pixels (the centre of the top-left pixel is (0, 0)),\n"
                  " *       mapped through the crop as edgereg's Predictor does: x = x0 + u * w - 0.5."
                  if card.target_kind.xy_points else "")
        guard = f"{m}_H"
        source = comment_safe(self.source)
        return f"""/* {p}: an edgereg image regressor, generated by edgereg {__version__} from {source}.
 * Do not edit; regenerate with `edgereg export RUN_DIR --c`.
 *
 * Kind {card.kind}; outputs: {comment_safe(targets)}; input {card.n_channels} x {height} x {width} ({card.channels}).
 * Flash (constant data): {self.flash_bytes} bytes. RAM: {self.plan.size} bytes of static arena.
 *
 * Every entry point returns {m}_OK (0) or a negative error code and allocates nothing. They share one
 * static arena, so they are not re-entrant: call them from one task (or guard them with a mutex).
 *
 *   {p}_predict_rgb888(pixels, width, height, stride, out)
 *   {p}_predict_gray8(pixels, width, height, stride, out)
 *       A frame -> out[{m}_N_OUTPUTS] in physical units. pixels: `height` rows of `stride`
 *       bytes; 3 bytes per pixel R, G, B (rgb888) or 1 byte gray (gray8). Preprocessing, as
 *       edgereg's runtime does it (equal when shrinking, within one pixel level when enlarging):
{comment_safe(steps)}{coords}
 *
 *   {p}_preprocess_rgb888(pixels, width, height, stride, input)
 *   {p}_preprocess_gray8(pixels, width, height, stride, input)
 *       Only the preprocessing: writes the normalized input[{m}_INPUT_LENGTH], (C, H, W) order.
 *
 *   {p}_infer(input, out)
 *       Only the network: a normalized (C, H, W) input -> the ONNX model's output `value`
 *       ({"coordinates in [0, 1] of the model input" if card.target_kind.xy_points else "physical units"}).
 *
{self.lab.header_doc()} */
#ifndef {guard}
#define {guard}

#include <stdint.h>

#ifdef __cplusplus
extern "C" {{
#endif

#define {m}_N_OUTPUTS {len(card.targets)}
#define {m}_INPUT_CHANNELS {card.n_channels}
#define {m}_INPUT_HEIGHT {height}
#define {m}_INPUT_WIDTH {width}
#define {m}_INPUT_LENGTH ({m}_INPUT_CHANNELS * {m}_INPUT_HEIGHT * {m}_INPUT_WIDTH)
#define {m}_ARENA_BYTES {self.plan.size}

#define {m}_OK 0
#define {m}_ERR_NULL (-1) /* a NULL pointer argument */
#define {m}_ERR_SIZE (-2) /* width or height < 1, or stride < width * bytes per pixel */

extern const char *const {p}_output_names[{m}_N_OUTPUTS]; /* the card's target names */
extern const char *const {p}_output_units[{m}_N_OUTPUTS]; /* their units ("" when unitless) */
extern const char {p}_kind[]; /* "scalar", "vector", "distribution", "coords" or "angle" */

int {p}_predict_rgb888(const uint8_t *pixels, int width, int height, int stride, float out[{m}_N_OUTPUTS]);
int {p}_predict_gray8(const uint8_t *pixels, int width, int height, int stride, float out[{m}_N_OUTPUTS]);
int {p}_preprocess_rgb888(const uint8_t *pixels, int width, int height, int stride, float *input);
int {p}_preprocess_gray8(const uint8_t *pixels, int width, int height, int stride, float *input);
int {p}_infer(const float *input, float out[{m}_N_OUTPUTS]);

{self.lab.header()}

#ifdef __cplusplus
}}
#endif

#endif /* {guard} */
"""


__all__ = ["CRenderer", "c_string"]
