"""fp32 ONNX -> ``model.fp16.onnx`` for CUDA / TensorRT (e.g. a Jetson).

Weights and activations become float16 with ONNX Runtime's converter
(``onnxruntime.transformers.float16.convert_float_to_float16``); inputs and outputs stay float32
(``keep_io_types``) so the runtime feeds it exactly like the fp32 model. The head's last learned layer
and the output transform stay float32, as for int8: float16 has ~3 significant digits, so a reading
of 215 mg/L would otherwise come out in steps of 0.125.

The converted graph is checked with ``onnx.checker`` and run on the CPU provider against the fp32
model: it must agree to ``tolerance`` relative to each target's scale (float16's precision, not
fp32's 1e-4).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgereg.core.card import INPUT_NAME, OUTPUT_NAME, ModelCard
from edgereg.errors import ModelFileError, require_extra
from edgereg.export.onnx_export import Agreement, check_agreement
from edgereg.files import atomic_path

FP16_RTOL = 1e-2


@dataclass(frozen=True)
class Fp16Export:
    """The result of :func:`convert_fp16`.

    Attributes:
        path: the written fp16 model.
        agreement: fp16 (CPU provider) vs fp32 on the check images (see onnx_export.Agreement).
        float_nodes: nodes kept in float32.
    """

    path: Path
    agreement: Agreement
    float_nodes: tuple[str, ...]


def convert_fp16(fp32_path: str | Path, out_path: str | Path, *, card: ModelCard, check_inputs: np.ndarray,
                 tolerance: float = FP16_RTOL) -> Fp16Export:
    """Convert an fp32 model to float16 (float32 I/O), check it, and write it.

    Args:
        fp32_path: the exported fp32 model.
        out_path: where ``model.fp16.onnx`` goes; written only when the checks pass.
        card: the card to embed (``quantization`` records the precision).
        check_inputs: (N, C, H, W) float32 normalized images to compare fp16 with fp32 on.
        tolerance: relative agreement required, per target scale.

    Raises:
        ModelFileError: the converted model fails ``onnx.checker`` or disagrees with fp32.
    """
    onnx = require_extra("onnx")
    import onnxruntime as ort
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    from edgereg.export.card_io import embed_card
    from edgereg.export.int8.quantize import head_nodes, name_nodes

    model = onnx.load(str(fp32_path))
    name_nodes(model)
    float_nodes = head_nodes(model)
    half = convert_float_to_float16(model, keep_io_types=True, node_block_list=list(float_nodes))
    # The converter appends its I/O casts at the end of the node list; onnx.checker wants them sorted.
    OnnxModel.graph_topological_sort(half.graph, is_deterministic=True)
    onnx.checker.check_model(half, full_check=True)
    embed_card(half, card.with_(quantization={"precision": "float16 weights and activations, float32 I/O",
                                              "float_nodes": list(float_nodes)}))
    out_path = Path(out_path)
    with atomic_path(out_path, temp_name=out_path.name + ".partial") as partial:  # written only if it agrees
        onnx.save(half, str(partial))
        reference = ort.InferenceSession(str(fp32_path), providers=["CPUExecutionProvider"]).run(
            [OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(check_inputs)})[0]
        agreement = check_agreement(partial, check_inputs, reference, kind=card.kind, rtol=tolerance)
        if not agreement.passed:
            raise ModelFileError(f"the fp16 model disagrees with fp32 on {agreement.n_images} images: max relative "
                                 f"difference {agreement.max_rel_diff:.2e}, expected <= {tolerance:.0e}; "
                                 "model.fp16.onnx not written (deploy the fp32 or int8 model instead)")
    return Fp16Export(path=out_path, agreement=agreement, float_nodes=float_nodes)
