"""Live readouts from a camera: the capture loop, its frame-quality gate and the smoothing of readings.

Modules: ``loop`` (the capture loop and :class:`LiveFeed`), ``quality`` (black, overexposed, frozen and
blurred frames), ``smoothing`` (median/EMA smoothing and the stability tracker).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgereg._lazy import lazy_exports

if TYPE_CHECKING:  # the names for type checkers and IDEs; at run time __getattr__ imports them
    from edgereg.live.loop import LiveConfig, LiveFeed, Reading, run_live
    from edgereg.live.quality import QualityConfig, QualityGate
    from edgereg.live.smoothing import StabilityTracker

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

__getattr__ = lazy_exports(__name__, _LAZY)
