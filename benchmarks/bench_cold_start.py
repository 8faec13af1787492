"""Cold start: `edgereg infer MODEL one.png` as a new process (numba's on-disk cache warm) against a
warm in-process call of the same work. Prints the ratio and the absolute times of this machine.

Run: ``python benchmarks/bench_cold_start.py``. Needs the dev extra (onnx) to build its model.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import make_onnx_model  # noqa: E402  (the test helper that builds tiny real models)

from edgereg import Predictor  # noqa: E402
from edgereg.card import ModelCard  # noqa: E402


def main() -> None:
    from edgereg.platform_info import runtime_line

    print(runtime_line(), flush=True)  # the CPU and instruction set behind every number below
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        card = ModelCard(kind="scalar", targets=("concentration",), input_size=(64, 64), crop="circle",
                         range=((80.0, 350.0),), tta="d4")
        model = make_onnx_model(tmp / "model.onnx", card)
        image = tmp / "one.png"
        cv2.imwrite(str(image), np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8))
        command = [sys.executable, "-m", "edgereg", "infer", str(model), str(image), "--out", str(tmp / "p.csv")]
        subprocess.run(command, check=True, capture_output=True)  # fills numba's cache
        cold = []
        for _ in range(5):
            (tmp / "p.csv").unlink(missing_ok=True)
            start = time.perf_counter()
            subprocess.run(command, check=True, capture_output=True)
            cold.append(time.perf_counter() - start)
        predictor = Predictor(model)
        predictor.predict_paths([image])
        warm = []
        for _ in range(20):
            start = time.perf_counter()
            predictor.predict_paths([image])
            warm.append(time.perf_counter() - start)
        import_only = []
        for _ in range(5):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", "import edgereg.predictor"], check=True)
            import_only.append(time.perf_counter() - start)
        cold_s, warm_s, imp_s = np.median(cold), np.median(warm), np.median(import_only)
        print(f"cold process `edgereg infer MODEL one.png`: {cold_s * 1e3:.0f} ms (median of 5)")
        print(f"  of which python + imports (numpy, numba, onnxruntime, cv2): {imp_s * 1e3:.0f} ms")
        print(f"warm in-process predict_paths([one.png]): {warm_s * 1e3:.2f} ms (median of 20)")
        print(f"ratio cold / warm: {cold_s / warm_s:.0f}x; cold minus imports: {(cold_s - imp_s) * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
