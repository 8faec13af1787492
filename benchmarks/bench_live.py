"""Live readout benchmark: processing time per frame against the 30 fps frame period.

Frames (default 480x640, textured so that they pass the quality gate) come from an in-memory
source through ``edgereg.live.loop.run_live``, so the time is what the loop itself spends per frame:
quality gate + crop/resize + preprocessing + inference + smoothing. Reported for TTA none, d4
and rot:8 as the median and 95th percentile in milliseconds, and as a fraction of the 33.3 ms
frame period (below 1.0 keeps up with a 30 fps camera).

Run: ``python benchmarks/bench_live.py`` (``--quick`` for a smoke run, ``--model m.onnx`` for a
real model). The default model is the small CNN of ``bench_scoring.py``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import cv2
import numpy as np
from bench_scoring import build_cnn

from edgereg import Predictor
from edgereg.live.loop import LiveConfig, run_live

FRAME_PERIOD_MS = 1000.0 / 30.0


class MemoryCamera:
    """Plays ``count`` frames cycling through ``frames`` (a list of (H, W, 3) uint8 BGR)."""

    def __init__(self, frames: list[np.ndarray], count: int) -> None:
        self.frames = frames
        self.left = count
        self.ended = False

    def read(self):
        if self.left == 0:
            self.ended = True
            return False, None
        self.left -= 1
        return True, self.frames[self.left % len(self.frames)]

    def release(self) -> None:
        pass


def make_frames(height: int, width: int, n: int = 8, seed: int = 0) -> list[np.ndarray]:
    """``n`` different sharp frames (random blocks plus sensor-like noise)."""
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n):
        blocks = rng.integers(40, 220, (height // 16, width // 16, 3), dtype=np.uint8)
        frame = cv2.resize(blocks, (width, height), interpolation=cv2.INTER_NEAREST)
        frames.append(cv2.add(frame, rng.integers(0, 4, frame.shape, dtype=np.uint8)))
    return frames


def time_per_frame(predictor: Predictor, frames: list[np.ndarray], count: int) -> np.ndarray:
    """Per-frame processing milliseconds (count frames, after 5 warm-up frames)."""
    list(run_live(MemoryCamera(frames, 5), predictor))
    readings = list(run_live(MemoryCamera(frames, count), predictor, config=LiveConfig()))
    if not all(r.ok for r in readings):
        raise RuntimeError(f"benchmark frames were withheld: {sorted({r.quality for r in readings})}")
    return np.array([r.process_ms for r in readings])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=300, help="frames timed per TTA setting")
    parser.add_argument("--frame", default="480x640", help="frame size HxW (default 480x640)")
    parser.add_argument("--model", default=None, help="an edgereg .onnx (default: a generated small CNN)")
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads")
    parser.add_argument("--quick", action="store_true", help="50 frames: a smoke run")
    args = parser.parse_args()
    from edgereg.core.platform_info import runtime_line

    print(runtime_line(), flush=True)  # the CPU and instruction set behind every number below
    height, width = (int(v) for v in args.frame.lower().split("x"))
    count = 50 if args.quick else args.frames
    frames = make_frames(height, width)

    with tempfile.TemporaryDirectory(prefix="edgereg-bench-") as tmp:
        model = Path(args.model) if args.model else build_cnn(Path(tmp) / "cnn.onnx")
        print(f"{count} frames {height}x{width}, model {model.name}, {os.cpu_count()} cores; "
              f"frame period {FRAME_PERIOD_MS:.1f} ms (30 fps)")
        print(f"{'tta':<8}{'median ms':>10}{'p95 ms':>9}{'median / period':>17}{'max fps':>9}")
        medians = {}
        for tta in ("none", "d4", "rot:8"):
            predictor = Predictor(model, tta=tta, batch_size=1, threads=args.threads, providers="cpu")
            times = time_per_frame(predictor, frames, count)
            median, p95 = float(np.median(times)), float(np.percentile(times, 95))
            medians[tta] = median
            print(f"{tta:<8}{median:>10.2f}{p95:>9.2f}{median / FRAME_PERIOD_MS:>17.2f}{1000 / median:>9.0f}")
        print(f"d4 / none time per frame: {medians['d4'] / medians['none']:.2f} (8 views in one call)")


if __name__ == "__main__":
    main()
