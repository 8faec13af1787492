"""Recalibration benchmark: after a camera change, how much of the damage do 3 standards x 3 photos
undo, compared with retraining on the new camera, and how long does it take?

1. Train a model on photos from the original camera (synthetic assay, 80..350 mg/L) and export it
   (int8, as deployed).
2. Simulate a camera change on every later photo: gamma, gain, offset and white balance
   (``camera_change``). Train a second model on the changed photos: the retraining oracle.
3. Photograph 3 standards (samples near 15%, 50% and 85% of the range) 3 times each with the new
   camera and run ``edgereg calibrate`` on the original model: no retraining.
4. Score the drifted model, the calibrated one and the retrained one on new photos from the new
   camera. Recovery = (RMSE drifted - RMSE calibrated) / (RMSE drifted - RMSE retrained).

Goal (issue 11): recovery >= 90% in under 1 s on 2 cores.

Run: ``python benchmarks/recalibration.py --work bench_recal`` (two trainings of ``--epochs``;
a second run reuses them: time it again under a lock on a shared machine).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from intervals import rows_to_derive  # benchmarks/ is on sys.path when a benchmark runs as a script


@dataclass(frozen=True)
class CameraChange:
    """A new camera: ``out = clip(255 * (gain * wb * (in / 255) ** gamma) + offset)``, per BGR channel.

    The default is a moderate change of all four (the main figure); ``SWEEP`` adds others, up to
    changes that clip the bright wells or shift the colours so far that the model's reading stops
    depending on the concentration, which no recalibration of the reading can undo.
    """

    gamma: float = 0.95
    gain: float = 0.97
    offset: float = 3.0  # grey levels
    white_balance: tuple[float, float, float] = (0.98, 1.0, 1.01)  # B, G, R

    def __call__(self, image: np.ndarray) -> np.ndarray:
        x = (image.astype(np.float32) / 255.0) ** self.gamma
        x = 255.0 * x * self.gain * np.asarray(self.white_balance, np.float32) + self.offset  # (H, W, 3) * (3,)
        return np.clip(np.rint(x), 0, 255).astype(np.uint8)


SWEEP = (
    CameraChange(gamma=0.95, gain=1.0, offset=0.0, white_balance=(1.0, 1.0, 1.0)),
    CameraChange(gamma=0.96, gain=1.02, offset=2.0, white_balance=(0.99, 1.0, 1.01)),
    CameraChange(gamma=1.04, gain=1.03, offset=-2.0, white_balance=(1.01, 1.0, 0.99)),
    CameraChange(gamma=0.93, gain=0.96, offset=2.0, white_balance=(1.0, 1.0, 0.98)),
    CameraChange(gamma=0.95, gain=1.08, offset=4.0, white_balance=(0.97, 1.0, 1.03)),  # clips the palest wells
    CameraChange(gamma=0.8, gain=1.15, offset=10.0, white_balance=(0.85, 1.0, 1.1)),  # saturates the reading
)


def edgereg(*args) -> None:
    command = [sys.executable, "-m", "edgereg", *map(str, args)]
    print("$ edgereg " + " ".join(map(str, args)), flush=True)
    result = subprocess.run(command, capture_output=True, text=True)
    print("  " + "\n  ".join((result.stdout + result.stderr).strip().splitlines()[-3:]), flush=True)
    if result.returncode not in (0, 1):
        raise RuntimeError(f"edgereg {' '.join(map(str, args))} exited {result.returncode}")


def drifted_copy(source: Path, out: Path, change: CameraChange) -> Path:
    """The dataset ``source`` as the new camera would have taken it (same labels)."""
    rows = rows_to_derive(source, out)
    if rows is None:
        return out
    for row in rows:
        cv2.imwrite(str(out / row["path"]), change(cv2.imread(str(source / row["path"]), cv2.IMREAD_COLOR)))
    (out / "labels.csv").write_text((source / "labels.csv").read_text())
    return out


def pick_standards(pool: Path, out: Path, *, fractions=(0.15, 0.5, 0.85), replicates: int = 3) -> Path:
    """3 samples of ``pool`` nearest to the given fractions of 80..350 mg/L, ``replicates`` photos each."""
    with open(pool / "labels.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    samples: dict[str, list[dict]] = {}
    for row in rows:
        samples.setdefault(row["group"], []).append(row)
    out.mkdir(parents=True, exist_ok=True)
    chosen = []
    for fraction in fractions:
        target = 80.0 + fraction * 270.0
        group = min((g for g in samples if len(samples[g]) >= replicates and g not in chosen),
                    key=lambda g: abs(float(samples[g][0]["concentration"]) - target))
        chosen.append(group)
    (out / "images").mkdir(exist_ok=True)
    with open(out / "labels.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "concentration", "group"])
        for group in chosen:
            for row in samples[group][:replicates]:
                shutil.copyfile(pool / row["path"], out / row["path"])  # a dataset's photos stay in its folder
                writer.writerow([row["path"], row["concentration"], group])
    return out


def rmse(model: Path, dataset: Path) -> float:
    from edgereg.core.predictor import Predictor
    from edgereg.data.dataset import load_dataset
    from edgereg.preprocess import CropBox

    predictor = Predictor(model, providers="cpu", confidence=None)
    data = load_dataset(dataset, config=predictor.config, targets=list(predictor.names))
    values = predictor.predict_prepared(data.images, [CropBox(*map(float, b)) for b in data.crop_boxes]).values
    return float(np.sqrt(((values - data.targets) ** 2).mean()))


def train(data: Path, run: Path, epochs: int) -> Path:
    if not (run / "model.onnx").exists():
        edgereg("train", data, "--out", run, "--epochs", epochs, "--units", "mg/L", "--range", "80,350", "--quiet")
        edgereg("export", run, "--int8", "--no-speed")
    return run / "model.int8.onnx" if (run / "model.int8.onnx").exists() else run / "model.onnx"


def calibrate(model: Path, standards: Path, out: Path, fit: str) -> float:
    """Seconds for ``edgereg calibrate`` in this process (reading the photos, fitting, writing the model)."""
    from edgereg.cli.main import main

    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        code = main(["calibrate", str(model), str(standards), "--out", str(out), "--overwrite", "--fit", fit])
    elapsed = time.perf_counter() - started
    if code != 0:
        raise RuntimeError(f"edgereg calibrate exited {code}")
    return elapsed


def sweep(original: Path, sets: dict, work: Path, clean: float) -> None:
    """Other camera changes, without a retrained model each: recovery towards the original camera's
    RMSE (a retrained model is at least that far, so this understates nothing in its favour)."""
    print("\nother camera changes (recovery towards the original camera's RMSE "
          f"{clean:.3f}, no retraining each):")
    for k, change in enumerate(SWEEP):
        tag = f"sweep{k}"
        test = drifted_copy(sets["test"], work / f"{tag}_test", change)
        standards = pick_standards(drifted_copy(sets["pool"], work / f"{tag}_pool", change), work / f"{tag}_standards")
        drifted = rmse(original, test)
        parts = []
        for fit in ("linear", "auto"):
            out = work / f"{tag}.{fit}.cal.onnx"
            calibrate(original, standards, out, fit)
            calibrated = rmse(out, test)
            parts.append(f"{fit} {calibrated:.2f} ({(drifted - calibrated) / (drifted - clean):.0%})")
        print(f"  gamma {change.gamma:g}, gain {change.gain:g}, offset {change.offset:g}, white balance "
              f"{change.white_balance}: drifted {drifted:.2f}; calibrated " + ", ".join(parts))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="bench_recal")
    parser.add_argument("--epochs", type=int, default=40,
                        help="training epochs per model (fixed, so a busy machine gives the same models)")
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--n-test", type=int, default=800)
    parser.add_argument("--no-sweep", action="store_true", help="only the main camera change")
    parser.add_argument("--original-run", metavar="RUN",
                        help="reuse an exported run trained on the same clean data (e.g. benchmarks/intervals.py's "
                             "run_assay: assay, n 2000, seed 0, 64 px) instead of training one")
    args = parser.parse_args()
    from edgereg.training.synth import make_dataset

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    change = CameraChange()
    sets = {}
    for name, n, seed in (("train", args.n_train, 0), ("test", args.n_test, 2), ("pool", 120, 3)):
        sets[name] = work / f"clean_{name}"
        if not (sets[name] / "labels.csv").exists():
            make_dataset("assay", sets[name], n=n, seed=seed, size=64)
        sets[f"new_{name}"] = drifted_copy(sets[name], work / f"new_{name}", change)
    original_run = Path(args.original_run) if args.original_run else work / "run_original"
    original = train(sets["train"], original_run, args.epochs)
    retrained = train(sets["new_train"], work / "run_retrained", args.epochs)
    standards = pick_standards(sets["new_pool"], work / "standards")

    print(f"\ncamera change: {change}")
    clean = rmse(original, sets["test"])
    drifted = rmse(original, sets["new_test"])
    oracle = rmse(retrained, sets["new_test"])
    print(f"RMSE mg/L on {args.n_test} new photos: original camera {clean:.3f}; after the change: drifted model "
          f"{drifted:.3f}, retrained on the new camera {oracle:.3f}")
    for fit in ("linear", "auto"):
        out = work / f"model.{fit}.cal.onnx"
        cold = calibrate(original, standards, out, fit)
        warm = calibrate(original, standards, out, fit)
        calibrated = rmse(out, sets["new_test"])
        recovery = (drifted - calibrated) / (drifted - oracle) if drifted > oracle else float("nan")
        from edgereg.core.card import read_card

        chosen = read_card(out).calibration["fit"]
        print(f"calibrated with 3 standards x 3 photos, --fit {fit} ({chosen}): RMSE {calibrated:.3f}; recovers "
              f"{recovery:.1%} of the gap; edgereg calibrate took {cold:.2f} s (first call in the process, "
              f"imports included) / {warm:.2f} s (again)")
    if not args.no_sweep:
        sweep(original, sets, work, clean)
    print("note: measured on a shared 2-core machine")
    return 0


if __name__ == "__main__":
    sys.exit(main())
