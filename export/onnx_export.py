"""torch -> ``model.onnx``: export, fold BatchNorm, embed the card, prove ONNX Runtime agrees with torch.

The exported graph is the deployed model: input ``image (N, C, H, W) float32`` (normalized by the
runtime), output ``value (N, T) float32`` in physical units (every output transform baked in), and
optionally ``novelty (N, 1) float32`` (``edgereg.export.uncertainty.novelty``), a
dynamic batch axis, opset >= 17, BatchNorm folded into the convolutions, and the model card in
``metadata_props``. Nothing is written at ``out_path`` until ``onnx.checker`` passes and ONNX Runtime
reproduces torch on the validation images to a relative 1e-4.
"""

from __future__ import annotations

import datetime as _dt
import platform
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgereg.core.card import INPUT_NAME, NOVELTY_NAME, OUTPUT_NAME, ModelCard
from edgereg.core.kinds import TargetKind, target_kind
from edgereg.errors import EdgeregError, ModelFileError, require_extra
from edgereg.export.card_io import embed_card
from edgereg.files import atomic_path

MIN_OPSET = 17
AGREEMENT_RTOL = 1e-4


@dataclass(frozen=True)
class Agreement:
    """How closely ONNX Runtime fp32 reproduces torch on real images.

    Attributes:
        max_abs_diff: largest ``|ort - torch|`` over all images and targets, in the model's output
            units (physical; [0, 1] of the input for coords; circular difference for angles).
        max_rel_diff: the largest, over targets, of ``max |ort - torch| / scale``, where ``scale`` is
            the largest ``|torch|`` of that target (360 for angles): the number held to ``tolerance``.
        n_images: images compared (all in one batch, plus the first alone, to exercise batch 1).
        tolerance: the relative tolerance it was held to.
    """

    max_abs_diff: float
    max_rel_diff: float
    n_images: int
    tolerance: float

    @property
    def passed(self) -> bool:
        return bool(self.max_rel_diff <= self.tolerance)

    def to_dict(self) -> dict:
        return {"max_abs_diff": self.max_abs_diff, "max_rel_diff": self.max_rel_diff,
                "n_images": self.n_images, "tolerance": self.tolerance, "passed": self.passed}


@dataclass(frozen=True)
class Fp32Export:
    """The result of :func:`export_fp32`.

    Attributes:
        path: the written ``model.onnx``.
        card: the card embedded in it.
        agreement: torch vs ONNX Runtime on the check images.
        opset: the default-domain opset of the written graph.
        batchnorm_folded: BatchNormalization nodes folded by ONNX Runtime's optimizer after the torch
            export (0 when torch had already folded them all).
    """

    path: Path
    card: ModelCard
    agreement: Agreement
    opset: int
    batchnorm_folded: int


def library_versions() -> dict[str, str]:
    """Versions of the libraries that made (and will run) the exported model."""
    import onnxruntime

    from edgereg import __version__

    versions = {"edgereg": __version__, "numpy": np.__version__, "onnxruntime": onnxruntime.__version__,
                "python": platform.python_version()}
    for name in ("torch", "onnx"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:  # fp32 export needs both, but eval/fp16 callers may lack torch
            continue
    return versions


def export_card(card: ModelCard, *, opset: int) -> ModelCard:
    """The training card plus export provenance (library versions, date, opset).

    The run's provenance (dataset fingerprint, metrics, seed, training versions) is kept; export
    facts go under ``provenance["export"]`` so they never overwrite what training recorded.
    """
    export = {
        "versions": library_versions(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "opset": int(opset),
    }
    return card.with_(provenance={**card.provenance, "export": export}, quantization={})


def export_fp32(regressor, card: ModelCard, out_path: str | Path, *, check_inputs: np.ndarray,
                opset: int = MIN_OPSET, rtol: float = AGREEMENT_RTOL, novelty=None) -> Fp32Export:
    """Export a trained regressor to ONNX and check it before writing ``out_path``.

    Args:
        regressor: an ``edgereg.training.targets.regressor.Regressor`` in eval mode; ``forward(x)`` returns
            physical units and ``export_onnx(path, opset=...)`` writes the raw graph.
        card: the model card to embed (see :func:`export_card`).
        out_path: where ``model.onnx`` goes; written only when every check passes.
        check_inputs: (N, C, H, W) float32, normalized images (``edgereg.preprocess.preprocess_batch``
            of the validation split) on which torch and ONNX Runtime must agree; N >= 1.
        opset: ONNX opset, >= 17.
        rtol: relative tolerance of the agreement (see :class:`Agreement`).
        novelty: an ``edgereg.training.targets.regressor.NoveltyHead`` for the second output ``novelty
            (N, 1) float32`` (``edgereg.export.uncertainty.novelty``), or None for ``value`` alone.

    Returns:
        Fp32Export.

    Raises:
        EdgeregError: opset below 17, or check_inputs of the wrong shape.
        ModelFileError: the graph breaks the I/O contract, fails ``onnx.checker``, or disagrees
            with torch; nothing is written.
    """
    onnx = require_extra("onnx")
    torch = require_extra("torch")
    check_opset(opset)
    expected = (card.n_channels, *card.input_size)
    if check_inputs.ndim != 4 or tuple(check_inputs.shape[1:]) != expected or not len(check_inputs):
        raise EdgeregError(f"check images must be (N, {expected[0]}, {expected[1]}, {expected[2]}) with "
                           f"N >= 1, got {check_inputs.shape}; the run's validation split is empty?")
    out_path = Path(out_path)
    with tempfile.TemporaryDirectory(prefix="edgereg-export-") as tmp:
        raw_path = Path(tmp) / "raw.onnx"
        regressor.eval()
        regressor.export_onnx(raw_path, opset=opset, novelty=novelty)
        _check_io(onnx.load(str(raw_path)), card, source="the torch export")
        folded = fold_batchnorm(raw_path, Path(tmp) / "folded.onnx")
        model = onnx.load(str(folded.path))
        onnx.checker.check_model(model, full_check=True)
        embed_card(model, card)
        # written only if ONNX Runtime agrees with torch; otherwise nothing appears
        with atomic_path(out_path, temp_name=out_path.name + ".partial") as candidate:
            onnx.save(model, str(candidate))
            with torch.no_grad():
                reference = regressor(torch.from_numpy(np.ascontiguousarray(check_inputs))).numpy()
            agreement = check_agreement(candidate, check_inputs, reference, kind=card.kind, rtol=rtol)
            if not agreement.passed:
                raise ModelFileError(
                    f"ONNX Runtime disagrees with torch on {agreement.n_images} validation images: max relative "
                    f"difference {agreement.max_rel_diff:.2e}, expected <= {rtol:.0e}; model.onnx not written "
                    "(an op the exporter mistranslates: try another --opset and report the model name)")
    return Fp32Export(path=out_path, card=card, agreement=agreement, opset=_default_opset(model),
                      batchnorm_folded=folded.count)


def check_opset(opset: int) -> None:
    """Raise EdgeregError unless ``opset`` is one the runtime contract allows (>= 17)."""
    if opset < MIN_OPSET:
        raise EdgeregError(f"--opset must be >= {MIN_OPSET} (the runtime's contract), got {opset}; "
                           f"leave it out for {MIN_OPSET}")


@dataclass(frozen=True)
class FoldedModel:
    """The result of :func:`fold_batchnorm`.

    Attributes:
        path: the graph without BatchNormalization (the source itself when it had none).
        count: BatchNormalization nodes folded away.
    """

    path: Path
    count: int


def fold_batchnorm(src: Path, dst: Path) -> FoldedModel:
    """Fold BatchNormalization into the preceding convolutions with ONNX Runtime's basic optimizer.

    torch's exporter already folds Conv+BN in eval mode; this catches what it left. Basic-level
    optimizations only rewrite standard ONNX ops (constant folding, Conv+BN/Mul/Add fusion), so the
    result stays a portable graph. Returns ``src`` unchanged when there is nothing to fold.

    Raises:
        ModelFileError: a BatchNormalization that no convolution precedes (it cannot be folded).
    """
    import onnx
    import onnxruntime as ort

    before = sum(node.op_type == "BatchNormalization" for node in onnx.load(str(src)).graph.node)
    if not before:
        return FoldedModel(src, 0)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(dst)
    ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"])
    left = [node.name for node in onnx.load(str(dst)).graph.node if node.op_type == "BatchNormalization"]
    if left:
        raise ModelFileError(f"{len(left)} BatchNormalization node(s) could not be folded ({', '.join(left[:3])}): "
                             "expected every BN right after a Conv; put BN after convolutions in the model")
    return FoldedModel(dst, before)


def check_agreement(model_path: str | Path, inputs: np.ndarray, reference: np.ndarray, *, kind: str | TargetKind,
                    rtol: float = AGREEMENT_RTOL) -> Agreement:
    """Compare an ONNX model's outputs on ``inputs`` with ``reference`` (torch's).

    Args:
        model_path: the ONNX file.
        inputs: (N, C, H, W) float32, normalized.
        reference: (N, T) float, the reference outputs for ``inputs``.
        kind: target kind; angles compare circularly (359.9999 vs 0.0001 degrees agree).
        rtol: tolerance the result is held to.
    """
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    batched = session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(inputs)})[0]
    single = session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(inputs[:1])})[0]
    reference = np.asarray(reference, dtype=np.float64)
    if batched.shape != reference.shape:
        raise ModelFileError(f"ONNX output is {batched.shape}, expected {reference.shape} (N, T) like torch")
    outputs = np.concatenate([batched, single]).astype(np.float64)  # (N+1, T)
    expected = np.concatenate([reference, reference[:1]])  # (N+1, T)
    target = target_kind(kind)
    diff = np.abs(target.residual(outputs, expected))  # (N+1, T); circular for angles
    scale = target.agreement_scale(expected)  # (T,)
    relative = (diff.max(axis=0) / scale).max()
    return Agreement(max_abs_diff=float(diff.max()), max_rel_diff=float(relative), n_images=len(inputs),
                     tolerance=float(rtol))


def _check_io(model, card: ModelCard, *, source: str) -> None:
    """Hold a graph to the runtime's I/O contract (docs/CONTRACTS.md, "ONNX model I/O")."""
    graph = model.graph
    inputs = [i for i in graph.input if i.name not in {init.name for init in graph.initializer}]
    outputs = [o.name for o in graph.output]
    if len(inputs) != 1 or inputs[0].name != INPUT_NAME or outputs not in ([OUTPUT_NAME], [OUTPUT_NAME, NOVELTY_NAME]):
        raise ModelFileError(f"{source} has inputs {[i.name for i in inputs]} and outputs {outputs}; expected "
                             f"['{INPUT_NAME}'] -> ['{OUTPUT_NAME}'] (and optionally '{NOVELTY_NAME}')")
    dims = inputs[0].type.tensor_type.shape.dim
    shape = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in dims]
    expected = [card.n_channels, *card.input_size]
    if len(dims) != 4 or dims[0].HasField("dim_value") or shape[1:] != expected:
        raise ModelFileError(f"{source} has input shape {shape}; expected (N, {', '.join(map(str, expected))}) "
                             "with a dynamic batch axis N, as the card says")
    if _default_opset(model) < MIN_OPSET:
        raise ModelFileError(f"{source} uses opset {_default_opset(model)}; expected >= {MIN_OPSET}")


def _default_opset(model) -> int:
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
