"""Choosing ONNX Runtime execution providers."""

from __future__ import annotations

from collections.abc import Sequence

import onnxruntime as ort

from edgereg.errors import ProviderError, did_you_mean

ALIASES = {
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
AUTO_ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def resolve_providers(requested: str | Sequence[str] = "auto") -> list[str]:
    """Turn ``"auto"``, an alias (``cpu``, ``cuda``, ``tensorrt``), a provider name or a list into
    the provider list for an InferenceSession.

    "auto" takes TensorRT, then CUDA, then CPU, as far as this onnxruntime build has them; CPU is
    always last so that an operator a GPU provider lacks still runs.

    Raises:
        ProviderError: an explicit provider this build does not have, naming those it has.
    """
    available = ort.get_available_providers()
    if isinstance(requested, str):
        requested = [p.strip() for p in requested.split(",") if p.strip()] or ["auto"]
    if list(requested) == ["auto"]:
        return [p for p in AUTO_ORDER if p in available]
    chosen = []
    for name in requested:
        full = ALIASES.get(name.lower(), name)
        if full not in available:
            hint = did_you_mean(name.lower(), list(ALIASES) + available)
            raise ProviderError(
                f"execution provider {name!r} is not available in this onnxruntime build{hint}; "
                f"available: {', '.join(available)} (for CUDA/TensorRT: pip install 'edgereg[gpu]')"
            )
        chosen.append(full)
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen
