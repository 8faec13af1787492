"""Cold start: `edgereg infer MODEL one.jpg` as a new process, and where its time goes.

Prints the median wall time of the whole process (goal <= 300 ms; numba's on-disk cache warm), then
the split, each part measured as its own fresh process so the parts add up the way the command pays
for them: the interpreter, then numpy, OpenCV, ONNX Runtime and edgereg's runtime modules imported on
top, then the work (session, decode, preprocessing, inference, the CSV row), which is the rest. It
also checks that the one-image path never imports numba (its import and CPU-target initialisation
cost ~0.4 s; one image is preprocessed by the numpy twins, see ``edgereg.preprocess.small``), and
shows a warm in-process call for comparison.

Run: ``python benchmarks/bench_cold_start.py`` (needs the dev extra, onnx, to build its model).
"""

from __future__ import annotations

import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import make_onnx_model

from edgereg import Predictor
from edgereg.core.card import ModelCard

RUNS = 7
STAGES = (  # (label, code run by a fresh interpreter); each adds to the one before
    ("python", "pass"),
    ("+ numpy", "import numpy"),
    ("+ OpenCV", "import numpy, cv2"),
    ("+ onnxruntime", "import numpy, cv2, onnxruntime"),
    ("+ edgereg runtime", "import edgereg.cli.main, edgereg.cli.infer, edgereg.batch.scoring, edgereg.core.predictor, "
                          "edgereg.batch.sources, edgereg.batch.writers"),
)


def median_wall(command: list[str], runs: int = RUNS) -> tuple[float, float]:
    """(median wall seconds, median CPU seconds: user + system of the child) of ``command``."""
    walls, cpus = [], []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        walls.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return float(np.median(walls)), float(np.median(cpus))


def main() -> None:
    from edgereg.core.platform_info import runtime_line

    print(runtime_line(), flush=True)  # the CPU and instruction set behind every number below
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        card = ModelCard(kind="scalar", targets=("concentration",), input_size=(64, 64), crop="circle",
                         range=((80.0, 350.0),), tta="d4", decode="reduced")
        model = make_onnx_model(tmp / "model.onnx", card)
        image = tmp / "one.jpg"
        frame = cv2.GaussianBlur(np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8), (0, 0), 3)
        cv2.imwrite(str(image), frame, [cv2.IMWRITE_JPEG_QUALITY, 90])
        out = tmp / "p.csv"
        command = [sys.executable, "-m", "edgereg", "infer", str(model), str(image), "--out", str(out), "--overwrite"]
        subprocess.run(command, check=True, capture_output=True)  # fills numba's and Python's caches
        cold = median_wall(command)
        parts = [(label, median_wall([sys.executable, "-c", code])) for label, code in STAGES]
        probe = ("import runpy, sys; sys.argv = ['edgereg'] + sys.argv[1:]\n"
                 "try:\n    runpy.run_module('edgereg', run_name='__main__')\n"
                 "except SystemExit:\n    pass\n"
                 "print('numba imported' if 'numba' in sys.modules else 'numba not imported')")
        numba = subprocess.run([sys.executable, "-c", probe, *command[3:]], capture_output=True, text=True).stdout
        predictor = Predictor(model)
        predictor.predict_paths([image])
        warm = []
        for _ in range(20):
            start = time.perf_counter()
            predictor.predict_paths([image])
            warm.append(time.perf_counter() - start)
        print(f"cold process `edgereg infer MODEL one.jpg` (64x64 model, D4 TTA, 480x640 JPEG): "
              f"{cold[0] * 1e3:.0f} ms wall, {cold[1] * 1e3:.0f} ms CPU (medians of {RUNS}; goal <= 300 ms)")
        print("  split (wall / CPU, cumulative; CPU time is what other jobs on a shared machine do not move):")
        previous = (0.0, 0.0)
        for label, seconds in parts:
            print(f"  {label:<20} {seconds[0] * 1e3:6.0f} / {seconds[1] * 1e3:4.0f} ms  "
                  f"(+{(seconds[0] - previous[0]) * 1e3:.0f} / +{(seconds[1] - previous[1]) * 1e3:.0f})")
            previous = seconds
        print(f"  {'work (the rest)':<20} {(cold[0] - previous[0]) * 1e3:6.0f} / "
              f"{(cold[1] - previous[1]) * 1e3:4.0f} ms  session, decode, preprocess, inference, CSV row")
        print(f"  {numba.strip().splitlines()[-1] if numba.strip() else 'numba probe failed'} on this path")
        print(f"warm in-process predict_paths([one.jpg]): {np.median(warm) * 1e3:.2f} ms (median of 20)")


if __name__ == "__main__":
    main()
