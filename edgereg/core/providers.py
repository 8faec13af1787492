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
GPU_PROVIDERS = frozenset({"TensorrtExecutionProvider", "CUDAExecutionProvider"})


def _known_providers() -> frozenset[str]:
    """Every provider name onnxruntime knows of, built in or not (empty if it cannot say)."""
    try:
        return frozenset(ort.get_all_providers())
    except Exception:
        return frozenset()


KNOWN_PROVIDERS = _known_providers() | GPU_PROVIDERS


def resolve_providers(requested: str | Sequence[str] = "auto") -> list[str]:
    """Turn ``"auto"``, an alias (``cpu``, ``cuda``, ``tensorrt``), a provider name or a list into
    the provider list for an InferenceSession.

    "auto" takes TensorRT, then CUDA, then CPU, as far as this onnxruntime build has them; CPU is
    always last so that an operator a GPU provider lacks still runs.

    Raises:
        ProviderError: an explicit provider this build does not have, naming those it has (and,
            for CUDA/TensorRT, ``pip install 'edgereg[gpu]'``).
    """
    available = ort.get_available_providers()
    if isinstance(requested, str):
        requested = [p.strip() for p in requested.split(",") if p.strip()] or ["auto"]
    if list(requested) == ["auto"]:
        return [p for p in AUTO_ORDER if p in available]
    chosen = []
    for name in requested:
        if not isinstance(name, str) or not name.strip():
            raise ProviderError(f"execution provider names must be non-empty strings, got {name!r}; "
                                f"use {', '.join(['auto', *ALIASES])} or a full ONNX Runtime provider name")
        full = ALIASES.get(name.lower(), name)
        if full not in available:
            raise ProviderError(_not_available(name, full, available))
        chosen.append(full)
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


def _not_available(name: str, full: str, available: list[str]) -> str:
    """Why ``name`` cannot be used: which providers exist, and how to get a GPU one.

    A known provider (an alias or a full name) missing from this build gets no did-you-mean (the
    name was right); the fix is the GPU build of onnxruntime.
    """
    have = ", ".join(available)
    gpu = full in GPU_PROVIDERS
    if gpu:
        spelled = f" ({full})" if full != name else ""
        return (f"execution provider {name!r}{spelled} is not in this onnxruntime build (available: {have}); "
                f"for CUDA/TensorRT install the GPU build: pip install 'edgereg[gpu]' (onnxruntime-gpu, "
                f"with NVIDIA's CUDA and cuDNN libraries), or use --providers cpu")
    if full in KNOWN_PROVIDERS:
        return (f"execution provider {name!r} is not in this onnxruntime build (available: {have}); "
                "install an onnxruntime package built with it, or use --providers cpu")
    hint = did_you_mean(name.lower(), [*ALIASES, *available])
    return (f"unknown execution provider {name!r}{hint}; available in this onnxruntime build: {have} "
            f"(aliases: {', '.join(ALIASES)}, or 'auto'); for CUDA/TensorRT: pip install 'edgereg[gpu]'")
