"""Output transforms and the Regressor: a model plus the map from raw outputs to physical units.

The transform travels with the model: it is a layer of the network (constants as buffers), so the
exported ONNX graph outputs physical units exactly as the ONNX contract says:

What each kind's raw output, ``forward`` (and the ONNX ``value``) and encoded target are is the
table of :mod:`edgereg.training.targets.kind_training`; the transform asks the kind's object.

Losses (:mod:`edgereg.training.targets.losses`) compare ``forward_raw`` with ``encode_targets`` and apply
the kind's link (sigmoid, softmax) themselves, so the trainer has no kind-specific code.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgereg.core.card import INPUT_NAME, OUTPUT_NAME
from edgereg.core.kinds import target_kind
from edgereg.errors import DatasetError, EdgeregError, ShapeError, require_extra
from edgereg.training.targets.kind_training import kind_training


@dataclass(frozen=True)
class OutputTransform:
    """How raw model outputs become physical units, and targets become loss targets.

    Build it from the training split with :meth:`from_targets`; store it with :meth:`to_dict`.
    """

    kind: str  # a kind of edgereg.training.targets.kind_training: picks the link (sigmoid range, softmax, atan2, ...)
    n_targets: int  # T: columns of the physical output (1 per angle, 2 per coords point)
    mean: tuple[float, ...] = ()  # vector and count: training-split mean per target, physical units
    std: tuple[float, ...] = ()  # vector only: training-split std per target (> 0)
    lo: tuple[float, ...] = ()  # scalar only: lower end of each target's range, physical units
    hi: tuple[float, ...] = ()  # scalar only: upper end of each target's range (> lo)

    def __post_init__(self) -> None:
        kind = kind_training(self.kind)
        if isinstance(self.n_targets, bool) or int(self.n_targets) != self.n_targets or self.n_targets < 1:
            raise EdgeregError(f"n_targets must be a positive integer, got {self.n_targets!r}")
        object.__setattr__(self, "n_targets", int(self.n_targets))
        if target_kind(self.kind).xy_points and self.n_targets % 2:
            raise ShapeError(
                f"coords targets come as (x, y) pairs; got {self.n_targets} columns, expected an even number"
            )
        for name in ("mean", "std", "lo", "hi"):
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))
        needed = kind.transform_fields
        for name in ("mean", "std", "lo", "hi"):
            values = getattr(self, name)
            if name in needed and len(values) != self.n_targets:
                raise ShapeError(
                    f"{self.kind} output transform needs {name} for each of {self.n_targets} targets, "
                    f"got {len(values)}"
                )
            if name not in needed and values:
                raise EdgeregError(f"{name} is not used by kind {self.kind!r}; leave it empty")
            if not all(math.isfinite(v) for v in values):
                raise EdgeregError(f"{name} must be finite, got {values}")
        if any(s <= 0 for s in self.std):
            raise DatasetError(
                f"target std must be > 0, got {self.std}: a constant target cannot be learned; drop it"
            )
        if any(high <= low for low, high in zip(self.lo, self.hi)):
            raise EdgeregError(
                f"range must have lo < hi per target, got lo={self.lo} hi={self.hi}; fix --range"
            )

    @property
    def n_outputs(self) -> int:
        """Width of the raw model output: 2 per angle target (sin, cos), else one per target."""
        return kind_training(self.kind).outputs_per_target * self.n_targets

    @classmethod
    def from_targets(cls, kind: str, targets: np.ndarray, *,
                     value_range: Sequence[float] | Sequence[Sequence[float]] | None = None,
                     ) -> OutputTransform:
        """Fit the transform on training targets.

        Args:
            kind: target kind.
            targets: (N, T) float, physical units, the training split only.
            value_range: scalar only: (lo, hi) for every target or one (lo, hi) per target.
        """
        y = np.asarray(targets, dtype=np.float64)
        if y.ndim != 2 or y.shape[0] < 1:
            raise ShapeError(f"targets must be (N, T) with N >= 1, got shape {y.shape}")
        return cls(kind, y.shape[1], **kind_training(kind).fit(y, value_range))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (lists for tuples)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OutputTransform:
        """Inverse of :meth:`to_dict`."""
        known = {"kind", "n_targets", "mean", "std", "lo", "hi"}
        unknown = set(data) - known
        if unknown:
            raise EdgeregError(f"unknown output transform fields {sorted(unknown)}; expected {sorted(known)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})

    def encode(self, targets: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Physical targets -> what the loss compares with the raw output.

        Args:
            targets: (N, T) physical units (degrees for angle, [0, 1] of the input for coords).

        Returns:
            (N, n_outputs) float32 tensor on the targets' device (CPU for numpy input).
        """
        y = torch.as_tensor(targets).to(torch.float32)
        if y.ndim != 2 or y.shape[1] != self.n_targets:
            raise ShapeError(f"targets must be (N, {self.n_targets}) for this model, got {tuple(y.shape)}")
        if not bool(torch.isfinite(y).all()):
            raise DatasetError("targets contain NaN or infinity; fix or drop those rows")
        return kind_training(self.kind).encode(y, self)


class OutputLayer(nn.Module):
    """The output transform as a layer: ``(B, n_outputs)`` raw -> ``(B, T)`` physical units."""

    def __init__(self, transform: OutputTransform):
        super().__init__()
        self.kind = kind_training(transform.kind)
        self.n_targets = transform.n_targets
        for name, values in self.kind.output_constants(transform).items():
            self._constant(name, values)

    def _constant(self, name: str, values: np.ndarray) -> None:
        self.register_buffer(name, torch.tensor(values, dtype=torch.float32)[None], persistent=False)  # (1,T)

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        return self.kind.output(self, raw)


class Regressor(nn.Module):
    """A model and its output transform.

    Args:
        reference: an optional module applied to the normalized images before ``model`` (reference
            normalisation); it is traced into the exported graph with the rest.
        model: maps ``(B, C, H, W) float32`` normalized images to raw ``(B, n_outputs)``; models
            from ``create_model`` carry ``input_shape = (C, H, W)``, used to check the output
            width here and by :meth:`export_onnx`.
        output_transform: the kind's transform, fitted on the training split.
    """

    def __init__(self, model: nn.Module, output_transform: OutputTransform, reference: nn.Module | None = None):
        super().__init__()
        self.reference = reference  # optional input transform (edgereg.training.planning.reference.ReferenceNorm)
        self.model = model
        self.output_transform = output_transform
        self.output = OutputLayer(output_transform)
        self.input_shape: tuple[int, int, int] | None = getattr(model, "input_shape", None)
        if self.input_shape is not None:
            width = self._raw_width()
            if width != output_transform.n_outputs:
                raise ShapeError(
                    f"the model returns {width} raw outputs but the {output_transform.kind} transform of "
                    f"{output_transform.n_targets} targets needs {output_transform.n_outputs}; "
                    f"build the model with n_outputs=output_transform.n_outputs"
                )

    @property
    def kind(self) -> str:
        return self.output_transform.kind

    def forward_raw(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) float32 normalized -> (B, n_outputs) raw outputs (what losses see)."""
        if self.reference is not None:
            images = self.reference(images)
        return self.model(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) float32 normalized -> (B, T) float32 physical units (the ONNX ``value``)."""
        return self.output(self.forward_raw(images))

    def encode_targets(self, targets: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(N, T) physical targets -> (N, n_outputs) float32 loss targets on the model's device."""
        device = next(self.model.parameters()).device
        return self.output_transform.encode(torch.as_tensor(targets).to(device))

    def export_onnx(self, path: str | Path, *, opset: int = 17,
                    input_shape: tuple[int, int, int] | None = None, novelty: NoveltyHead | None = None) -> Path:
        """Write the model, output transform included, as ONNX (eval mode, BN folded).

        Input ``image (N, C, H, W) float32``, output ``value (N, T) float32``, dynamic batch axis;
        with ``novelty`` a second output ``novelty (N, 1) float32``: the head's distance of the
        penultimate features (:func:`feature_layer`).
        Uses the TorchScript exporter (``dynamo=False``: faster and more robust than the dynamo
        exporter for these small graphs, and it folds BN into the preceding conv in eval mode) with
        constant folding, then runs ``onnx.checker``. The train/eval mode is restored afterwards.

        Args:
            path: the .onnx file to write.
            opset: ONNX opset, >= 17.
            input_shape: (C, H, W); default: the model's ``input_shape``.

        Returns:
            ``path`` as a Path.
        """
        onnx = require_extra("onnx")
        shape = tuple(input_shape or self.input_shape or ())
        if len(shape) != 3:
            raise EdgeregError("export needs the input shape; pass input_shape=(C, H, W) or build the model "
                               "with create_model")
        if opset < 17:
            raise EdgeregError(f"opset must be >= 17 (the ONNX contract), got {opset}")
        path = Path(path)
        was_training = self.training
        self.eval()
        example = torch.zeros(2, *shape, device=next(self.model.parameters()).device)
        module: nn.Module = self if novelty is None else WithNovelty(self, novelty)
        outputs = [OUTPUT_NAME] + ([] if novelty is None else [NOVELTY_NAME])
        try:
            with warnings.catch_warnings(), torch.no_grad():
                # dynamo=False is deliberate (see the docstring); its deprecation notices are noise here
                warnings.filterwarnings("ignore", category=DeprecationWarning)
                torch.onnx.export(
                    module, (example,), str(path), input_names=[INPUT_NAME], output_names=outputs,
                    dynamic_axes={INPUT_NAME: {0: "batch"}, **{name: {0: "batch"} for name in outputs}},
                    opset_version=opset, do_constant_folding=True, dynamo=False,
                )
        finally:
            if novelty is not None:
                module.remove()
            self.train(was_training)
        onnx.checker.check_model(str(path))
        return path

    def _raw_width(self) -> int:
        was_training = self.model.training
        self.model.eval()
        with torch.no_grad():
            device = next(self.model.parameters()).device
            width = self.model(torch.zeros(1, *self.input_shape, device=device)).shape[1]
        self.model.train(was_training)
        return int(width)


# ----------------------------------------------------------------------------------------------------
# Penultimate features and the novelty output (docs/lab-grade.md, "Unfamiliar photos").

NOVELTY_NAME = "novelty"  # the exported graph's optional second output, (N, 1) float32


def feature_layer(regressor: Regressor) -> tuple[nn.Module, bool]:
    """(module, True: its output / False: its input) whose tensor is the penultimate feature vector.

    A block readout (``model.fixed_features``): the standardized block features. Any other model:
    the input of the last module with parameters that runs in a forward pass (the head's input for
    the registry CNNs). Feature maps (B, C, H, W) are averaged over H and W.
    """
    fixed = getattr(regressor.model, "fixed_features", None)
    if isinstance(fixed, nn.Module):
        return fixed, True
    if regressor.input_shape is None:
        raise EdgeregError("the novelty score needs the model's input shape; build it with create_model")
    order: list[nn.Module] = []
    hooks = [m.register_forward_pre_hook(lambda module, _: order.append(module))
             for m in regressor.model.modules() if any(True for _ in m.parameters(recurse=False))]
    was_training = regressor.training
    regressor.eval()
    try:
        with torch.no_grad():
            regressor(torch.zeros(1, *regressor.input_shape, device=next(regressor.model.parameters()).device))
    finally:
        for hook in hooks:
            hook.remove()
        regressor.train(was_training)
    if not order:
        raise EdgeregError("the model has no learned layer to take features from")
    return order[-1], False


def _flat(tensor: torch.Tensor) -> torch.Tensor:
    """(B, ...) -> (B, D): feature maps averaged over their spatial axes."""
    return tensor.mean(dim=(2, 3)) if tensor.ndim == 4 else tensor.flatten(1)


class _Capture:
    """A forward hook keeping the penultimate features of the latest forward pass."""

    def __init__(self, module: nn.Module, use_output: bool) -> None:
        self.value: torch.Tensor | None = None
        self.use_output = use_output
        self.handle = module.register_forward_hook(self)

    def __call__(self, module, inputs, output) -> None:
        self.value = _flat(output if self.use_output else inputs[0])


def embed(regressor: Regressor, images: np.ndarray, *, batch_size: int = 64) -> np.ndarray:
    """(N, C, H, W) float32 normalized images -> (N, D) float64 penultimate features (eval mode)."""
    module, use_output = feature_layer(regressor)
    capture = _Capture(module, use_output)
    was_training = regressor.training
    regressor.eval()
    device = next(regressor.model.parameters()).device
    parts = []
    try:
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                regressor(torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size])).to(device))
                parts.append(capture.value.double().cpu().numpy())
    finally:
        capture.handle.remove()
        regressor.train(was_training)
    return np.concatenate(parts) if parts else np.zeros((0, 0))


class NoveltyHead(nn.Module):
    """Shrinkage Mahalanobis distance of (B, D) features: ``sqrt(c' P c)``, ``c = f - mean``, with the
    precision ``P = V diag(1/l - 1/r) V' + I / r`` of a Ledoit-Wolf covariance kept in its top
    ``k`` eigenvectors ``V (D, k)`` (eigenvalues ``l``) and one value ``r`` for the rest.

    With every direction kept (k = D) the graph is one affine map and a norm, ``|f A + b|`` with
    ``A = V diag(l^-1/2)``, ``b = -mean A`` (MatMul, Add, ReduceL2); else
    ``sqrt(|c|^2 / r - |c V diag((1/r - 1/l)^1/2)|^2)``.

    Args: mean (D,), basis (D, k), weights (k,) = 1/l - 1/r, rest = 1/r; float arrays.
    """

    def __init__(self, mean: np.ndarray, basis: np.ndarray, weights: np.ndarray, rest: float) -> None:
        super().__init__()
        mean, basis = np.asarray(mean, np.float64), np.asarray(basis, np.float64)
        weights = np.asarray(weights, np.float64)
        self.full = basis.shape[0] == basis.shape[1]
        if self.full:  # P = V diag(1/l) V'
            a = basis * np.sqrt(np.maximum(weights + rest, 0.0))[None]  # (D, D)
            self.register_buffer("a", torch.tensor(a, dtype=torch.float32))
            self.register_buffer("b", torch.tensor(-(mean @ a), dtype=torch.float32)[None])  # (1, D)
        else:  # top directions have l >= r: subtract their excess precision
            self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32)[None])  # (1, D)
            self.register_buffer("a", torch.tensor(basis * np.sqrt(np.maximum(-weights, 0.0))[None],
                                                   dtype=torch.float32))  # (D, k)
            self.register_buffer("rest", torch.tensor([[float(np.sqrt(rest))]], dtype=torch.float32))  # (1, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, D) -> (B, 1) float32 distance."""
        if self.full:
            return torch.linalg.vector_norm(features @ self.a + self.b, dim=1, keepdim=True)
        c = features - self.mean
        whole = torch.linalg.vector_norm(c * self.rest, dim=1, keepdim=True)
        top = torch.linalg.vector_norm(c @ self.a, dim=1, keepdim=True)
        return torch.sqrt(torch.clamp(whole * whole - top * top, min=0.0))


class WithNovelty(nn.Module):
    """A Regressor and a NoveltyHead: ``(B, C, H, W) -> ((B, T) value, (B, 1) novelty)`` (export only)."""

    def __init__(self, regressor: Regressor, head: NoveltyHead) -> None:
        super().__init__()
        self.regressor, self.head = regressor, head
        self._capture = _Capture(*feature_layer(regressor))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        value = self.regressor(images)
        return value, self.head(self._capture.value)

    def remove(self) -> None:
        """Take the feature hook off the regressor."""
        self._capture.handle.remove()
