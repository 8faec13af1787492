"""Generate self-contained C99 (``model.c`` / ``model.h``) from an edgereg ONNX model, for firmware.

    >>> report = generate_c("runs/assay/model.int8.onnx", "firmware/model")
    >>> report.flash_bytes, report.ram_bytes

The generated code needs only a C99 compiler and libm: no malloc, no runtime library. Weights and
tables are ``static const`` (flash); every activation lives in one static arena whose layout is
planned here from tensor lifetimes (a tensor's bytes are reused once nothing reads it any more, and
element-wise ops write over an input that dies with them). The preprocessing of the model card
(crop, resize, gray, normalization, circle mask) and the output transform (baked into the graph;
coordinates are mapped back to frame pixels in C) are included, so the firmware gets physical units
from a camera buffer. ``model.h`` documents the entry points.

fp32 models run in float; int8 models as ``onnxruntime.quantization.quantize_static`` writes them (QDQ,
per-channel weights) run integer kernels (see :mod:`edgereg.export.c.ops`). The files are always named
``model.c`` and ``model.h``; ``prefix`` names the symbols, so two models can live in one firmware.

This module is the entry point; the work is split along its concerns: :mod:`edgereg.export.c.lowering`
(ONNX graph -> ops of :mod:`edgereg.export.c.ops`), :mod:`edgereg.export.c.arena` (the activation
arena's layout) and :mod:`edgereg.export.c.render` (the text of the two files).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path

from edgereg.core.card import ModelCard, card_from_metadata
from edgereg.errors import EdgeregError, ModelFileError, require_extra
from edgereg.export.c.arena import ArenaPlan, plan_arena
from edgereg.export.c.lowering import Program, lower
from edgereg.export.c.render import CRenderer, c_string


@dataclass(frozen=True)
class CReport:
    """What :func:`generate_c` wrote and what it costs on the device.

    Attributes:
        paths: (model.c, model.h).
        flash_bytes: constant data: weights, biases, requantization scales, layer geometry tables,
            normalization constants and output names (code size is not included: it depends on the
            compiler; see ``arm-none-eabi-size``).
        ram_bytes: the static activation arena, with buffer reuse (the stack use of the kernels is
            a few hundred bytes and not included).
        ops: ONNX op types that became C code (constant-folded ones are not listed).
        quantized: whether int8 kernels are used (an int8 QDQ model).
        prefix: the C symbol prefix.
    """

    paths: tuple[Path, Path]
    flash_bytes: int
    ram_bytes: int
    ops: tuple[str, ...]
    quantized: bool
    prefix: str

    def to_dict(self) -> dict:
        """JSON-ready: paths as strings (for export_report.json)."""
        data = asdict(self)
        data["paths"] = [str(p) for p in self.paths]
        data["ops"] = list(self.ops)
        return data


def value_only(model):
    """The graph with its ``value`` output alone: the ``novelty`` output and the nodes only it needs
    are dropped (the C code reads values, intervals and lab flags; not the novelty score)."""
    from edgereg.core.card import NOVELTY_NAME, OUTPUT_NAME

    graph = model.graph
    if [o.name for o in graph.output] != [OUTPUT_NAME, NOVELTY_NAME]:
        return model
    import onnx

    pruned = onnx.ModelProto()
    pruned.CopyFrom(model)
    graph = pruned.graph
    needed, keep = {OUTPUT_NAME}, []
    for node in reversed(list(graph.node)):
        if any(out in needed for out in node.output):
            keep.append(node)
            needed.update(i for i in node.input if i)
    del graph.node[:]
    graph.node.extend(reversed(keep))
    kept_outputs = [o for o in graph.output if o.name == OUTPUT_NAME]
    del graph.output[:]
    graph.output.extend(kept_outputs)
    initializers = [t for t in graph.initializer if t.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    return pruned


def generate_c(onnx_path: str | Path, out_dir: str | Path, *, card: ModelCard | None = None,
               prefix: str = "edgereg_model", int8: bool | None = None) -> CReport:
    """Write ``model.c`` and ``model.h`` for an edgereg ONNX model into ``out_dir``.

    Args:
        onnx_path: an fp32 ``model.onnx`` or an int8 QDQ ``model.int8.onnx`` with an edgereg card.
        out_dir: the folder to write into (created if missing).
        card: the card to use (default: the one embedded in the file).
        prefix: C identifier that starts every public symbol (``{prefix}_predict_rgb888``, ...) and,
            upper-cased, every macro.
        int8: when given, what the caller expects the model to be; a mismatch (e.g. the fp32 file
            passed for the int8 one) raises instead of silently generating float code.

    Returns:
        CReport with the paths, flash and RAM bytes, and the ops used.

    Raises:
        ModelFileError: a missing or unreadable file, an op or quantization scheme the generator
            does not support (the message names the node), or a graph that does not match its card.
        CardError: a missing or invalid card.
        EdgeregError: a prefix that is not a C identifier.
    """
    onnx = require_extra("onnx")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", prefix):
        raise EdgeregError(f"C prefix {prefix!r} is not a C identifier; use letters, digits and '_' "
                           "(e.g. 'edgereg_model')")
    path = Path(onnx_path)
    if not path.is_file():
        raise ModelFileError(f"model file not found: '{path}'; check the path (expected an .onnx file)")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # onnx raises DecodeError and others for bad files
        raise ModelFileError(f"'{path}' is not a loadable ONNX model ({type(exc).__name__}); "
                             "export it again with `edgereg export`") from None
    if card is None:
        card = card_from_metadata({p.key: p.value for p in model.metadata_props}, source=str(path))
    program = lower(value_only(model), source=str(path))
    _check_against_card(program, card, path)
    if int8 is not None and int8 != program.quantized:
        expected, got = ("an int8 QDQ model", "no int8 layers") if int8 else ("a float model", "int8 layers")
        raise ModelFileError(f"'{path}': expected {expected}, but the graph has {got}; pass "
                             f"{'model.int8.onnx' if int8 else 'model.onnx'} (or int8={not int8})")
    plan = plan_arena(program)
    writer = CRenderer(program, plan, card, prefix=prefix, source=path.name)
    c_text, h_text = writer.render()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    c_path, h_path = out / "model.c", out / "model.h"
    for target, text in ((c_path, c_text), (h_path, h_text)):
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(target)
    return CReport((c_path, h_path), writer.flash_bytes, plan.size, program.onnx_ops, program.quantized, prefix)


def _check_against_card(program: Program, card: ModelCard, path: Path) -> None:
    expected_in = (1, card.n_channels, *card.input_size)
    if program.input.shape != expected_in:
        raise ModelFileError(f"'{path}': the graph input is {program.input.shape} but the card says "
                             f"{expected_in} (N, C, H, W); the card does not belong to this model — re-export it")
    if program.output.shape != (1, len(card.targets)):
        raise ModelFileError(f"'{path}': the graph output is {program.output.shape} but the card has "
                             f"{len(card.targets)} targets {card.targets}; re-export the model")


__all__ = ["ArenaPlan", "CReport", "c_string", "generate_c", "plan_arena"]
