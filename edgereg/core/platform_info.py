"""The machine a number was measured on: CPU model and the instruction-set level its kernels use.

ONNX Runtime's CPU kernels (MLAS) pick their inner loops at start-up from the CPU's features: AMX
tiles, AVX-512 with VNNI int8 dot products, AVX-VNNI, AVX2, ... Those paths round int8 and float
sums differently, so a timing or an int8 output is only comparable between machines of the same
level. ``edgereg info``, ``edgereg bench`` and the benchmark scripts print :func:`isa_level` so a
reported number says where it came from.

The features come from ``/proc/cpuinfo`` on Linux (what the kernel lets processes use, which is
what matters inside a VM or container) and otherwise from LLVM's view of the host CPU (llvmlite,
which numba brings). No CPUID instruction is issued here and nothing is installed.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

# (level, features that must all be present), best first; names are normalized (no '_' or '-')
_LEVELS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("AMX", ("amxtile", "amxint8")),
    ("AVX-512 VNNI", ("avx512f", "avx512vnni")),
    ("AVX-VNNI", ("avx2", "avxvnni")),
    ("AVX-512", ("avx512f", "avx512bw")),
    ("AVX2", ("avx2", "fma")),
    ("AVX", ("avx",)),
    ("SSE4.1", ("sse41",)),
    ("ARM i8mm", ("i8mm",)),
    ("ARM dotprod", ("asimddp",)),
    ("ARM NEON", ("asimd",)),
)


def _normalize(flag: str) -> str:
    return flag.lower().replace("_", "").replace("-", "").replace(".", "")


@dataclass(frozen=True)
class CpuInfo:
    """What is known about the host CPU.

    Attributes:
        model: the CPU's name, e.g. "Intel(R) Xeon(R) Platinum 8481C" (or the architecture).
        isa: the best level of :data:`_LEVELS` the CPU offers, e.g. "AVX-512 VNNI"; "unknown".
        levels: every level of :data:`_LEVELS` present, best first.
        cores: logical cores this process may use.
    """

    model: str
    isa: str
    levels: tuple[str, ...]
    cores: int

    def describe(self) -> str:
        """One line: ``Intel(R) Xeon(R) ..., AMX (also AVX-512 VNNI, AVX2), 2 cores``."""
        others = [level for level in self.levels[1:] if level in ("AVX-512 VNNI", "AVX2", "ARM NEON")]
        also = f" (also {', '.join(others)})" if others else ""
        return f"{self.model}, {self.isa}{also}, {self.cores} cores"


def _proc_cpuinfo() -> tuple[str | None, set[str]]:
    """(model name, normalized flags) from /proc/cpuinfo, or (None, empty) where it is absent."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return None, set()
    model: str | None = None
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model", "hardware") and model is None:
            model = value.strip() or None
        elif key in ("flags", "features") and not flags:
            flags = {_normalize(f) for f in value.split()}
    return model, flags


def _llvm_features() -> set[str]:
    """Normalized features LLVM sees on the host (llvmlite ships with numba); empty on failure."""
    try:
        from llvmlite import binding

        features = binding.get_host_cpu_features()
    except Exception:
        return set()
    return {_normalize(name) for name, on in features.items() if on}


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@lru_cache(maxsize=1)
def cpu_info() -> CpuInfo:
    """The host CPU (read once per process)."""
    model, flags = _proc_cpuinfo()
    if not flags:
        flags = _llvm_features()
    if "fma" not in flags and "fma3" in flags:
        flags.add("fma")
    levels = tuple(level for level, needed in _LEVELS if all(f in flags for f in needed))
    model = model or platform.processor() or platform.machine() or "unknown CPU"
    return CpuInfo(model=" ".join(model.split()), isa=levels[0] if levels else "unknown", levels=levels,
                   cores=_cores())


def isa_level() -> str:
    """The best instruction-set level of the host CPU that ONNX Runtime's kernels dispatch on.

    Returns:
        One of "AMX", "AVX-512 VNNI", "AVX-VNNI", "AVX-512", "AVX2", "AVX", "SSE4.1", "ARM i8mm",
        "ARM dotprod", "ARM NEON", or "unknown".
    """
    return cpu_info().isa


def runtime_line() -> str:
    """``cpu Intel(R) Xeon(R) ..., AMX (also AVX-512 VNNI, AVX2), 2 cores; onnxruntime 1.x, numba 0.x``."""
    import numba
    import onnxruntime

    return f"cpu {cpu_info().describe()}; onnxruntime {onnxruntime.__version__}, numba {numba.__version__}"
