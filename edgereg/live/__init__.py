"""Live readouts from a camera: the capture loop, its frame-quality gate and the smoothing of readings.

Modules: ``loop`` (the capture loop and :class:`LiveFeed`), ``quality`` (black, overexposed, frozen and
blurred frames), ``smoothing`` (median/EMA smoothing and the stability tracker).
"""

from __future__ import annotations

__all__ = ["LiveConfig", "LiveFeed", "QualityConfig", "QualityGate", "Reading", "StabilityTracker", "run_live"]

_LAZY = {
    "LiveConfig": "edgereg.live.loop",
    "LiveFeed": "edgereg.live.loop",
    "Reading": "edgereg.live.loop",
    "run_live": "edgereg.live.loop",
    "QualityConfig": "edgereg.live.quality",
    "QualityGate": "edgereg.live.quality",
    "StabilityTracker": "edgereg.live.smoothing",
}


def __getattr__(name: str):
    """Import a public name's module on first use (keeps `import edgereg.live` cheap and cycle-free)."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
