"""Honest intervals and the `unfamiliar` flag on real photographs with a shift.

Tasks (``benchmarks/real_photos.py``, photos from scikit-image's wheel):

* ``texture``: apparent texture scale, 9 training levels (9 groups: the default validation is a
  grouped k-fold, then a refit on every row, so the intervals come from out-of-fold residuals).
  Familiar photos: a new draw of the training levels from the training part of each photo.
  Shifted photos: the 8 levels between them, from the other part of each photo.
* ``assay``: a well on a background cut from a real photo. Familiar: new photos on the training
  backgrounds. Shifted: other backgrounds and wider lighting.

Each task is trained and exported as a user would (``edgereg train --time-budget``, ``edgereg
export --no-speed``), then the fp32 model reads the familiar and the shifted photos with
``Predictor(confidence=0.9)``. Reported: 90% coverage of all readings and of those not flagged
`unfamiliar`; the AUROC of the novelty score for telling the readings whose error exceeds their
interval from the others (on the shifted photos, and on both sets pooled); the share of familiar
photos flagged (the false-alarm rate, 5% by design); the latency the novelty output adds per
reading (paired rounds, batch 1, the same weights with and without the output).

Run: ``python benchmarks/unfamiliar.py --work bench_unfamiliar`` (a second run reuses the models).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import paired_timing
import real_photos as rp


def edgereg(*args) -> None:
    command = [sys.executable, "-m", "edgereg", *map(str, args)]
    print("$ edgereg " + " ".join(map(str, args)), flush=True)
    result = subprocess.run(command, capture_output=True, text=True)
    print("  " + "\n  ".join((result.stdout + result.stderr).strip().splitlines()[-6:]), flush=True)
    if result.returncode != 0:
        raise RuntimeError(f"edgereg {' '.join(map(str, args))} exited {result.returncode}")


def prepare(work: Path, task: str, *, n_train: int, n_eval: int, budget: float) -> dict[str, Path]:
    """Datasets and the exported model of a task (made once)."""
    folders = {name: work / f"{task}_{name}" for name in ("train", "familiar", "shifted")}
    if not (folders["shifted"] / "labels.csv").exists():
        if task == "texture":
            per = max(1, n_train // len(rp.TEXTURE_LEVELS))
            rp.write_dataset(folders["train"], rp.texture_rows(rp.TEXTURE_LEVELS, per, test=False, seed=0), ("scale",))
            rp.write_dataset(folders["familiar"], rp.texture_rows(rp.TEXTURE_LEVELS, max(1, n_eval // 9), test=False,
                                                                  seed=2), ("scale",))
            rp.write_dataset(folders["shifted"], rp.texture_rows(rp.TEXTURE_TEST_LEVELS, max(1, n_eval // 8),
                                                                 test=True, seed=1), ("scale",))
        else:
            rp.write_dataset(folders["train"], rp.assay_rows(n_train, test=False, seed=0), ("concentration",))
            rp.write_dataset(folders["familiar"], rp.assay_rows(n_eval, test=False, seed=2), ("concentration",))
            rp.write_dataset(folders["shifted"], rp.assay_rows(n_eval, test=True, seed=1), ("concentration",))
    run = work / f"run_{task}"
    if not (run / "model.onnx").exists():
        edgereg("train", folders["train"], "--out", run, "--time-budget", budget, "--quiet")
        edgereg("export", run, "--no-speed")
    return {**folders, "model": run / "model.onnx"}


def readings(model: Path, folder: Path) -> dict:
    """covered (N,), unfamiliar (N,), novelty (N,), abs error (N,) of the model on a labelled folder."""
    from edgereg.core.predictor import UNFAMILIAR, Predictor
    from edgereg.data.dataset import load_dataset
    from edgereg.preprocess import CropBox

    predictor = Predictor(model, providers="cpu", confidence=0.9, calibration=False)
    dataset = load_dataset(folder, config=predictor.config, targets=list(predictor.names))
    boxes = [CropBox(*map(float, box)) for box in dataset.crop_boxes]
    result = predictor.predict_prepared(dataset.images, boxes)
    truth = dataset.targets
    covered = predictor.card.target_kind.covered(truth, result.lo, result.hi).all(axis=1)
    return {"covered": covered, "unfamiliar": np.array([UNFAMILIAR in f for f in result.flags]),
            "novelty": result.novelty, "error": np.abs(result.values - truth).max(axis=1),
            "threshold": predictor.novelty_threshold, "frame": dataset.images[0]}


def auroc(score: np.ndarray, positive: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties half (Mann-Whitney); NaN without both."""
    pos, neg = score[positive], score[~positive]
    if not len(pos) or not len(neg):
        return float("nan")
    ranks = np.argsort(np.argsort(np.concatenate([neg, pos]), kind="mergesort"), kind="mergesort") + 1.0
    values = np.concatenate([neg, pos])
    for v in np.unique(values):  # average ranks of ties
        tied = values == v
        if tied.sum() > 1:
            ranks[tied] = ranks[tied].mean()
    return float((ranks[len(neg):].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def report(task: str, paths: dict[str, Path]) -> dict:
    from edgereg.core.card import read_card

    card = read_card(paths["model"])
    print(f"\n== {task}: {paths['model']}; intervals: {card.intervals.get('method') or card.intervals.get('none')}")
    print(f"   {card.intervals.get('split_choice', '')}")
    sets = {name: readings(paths["model"], paths[name]) for name in ("familiar", "shifted")}
    for name, r in sets.items():
        familiar = ~r["unfamiliar"]
        miss = ~r["covered"]
        familiar_coverage = r['covered'][familiar].mean() if familiar.any() else float('nan')
        flagged_coverage = r['covered'][~familiar].mean() if (~familiar).any() else float('nan')
        print(f"   {name}: n {len(r['covered'])}; 90% coverage {r['covered'].mean():.3f}; not flagged "
              f"{familiar.mean():.1%}, their coverage {familiar_coverage:.3f}; "
              f"flagged coverage {flagged_coverage:.3f}; "
              f"AUROC(novelty -> error beyond the interval) {auroc(r['novelty'], miss):.3f}")
    pooled_score = np.concatenate([sets[n]["novelty"] for n in sets])
    pooled_miss = np.concatenate([~sets[n]["covered"] for n in sets])
    pooled_cov = np.concatenate([sets[n]["covered"] for n in sets])
    pooled_fam = ~np.concatenate([sets[n]["unfamiliar"] for n in sets])
    print(f"   pooled: AUROC {auroc(pooled_score, pooled_miss):.3f}; coverage of readings not flagged "
          f"{pooled_cov[pooled_fam].mean():.3f} (n {int(pooled_fam.sum())}); false alarms on familiar photos "
          f"{sets['familiar']['unfamiliar'].mean():.1%}")
    return {"frame": sets["familiar"]["frame"]}


def latency(model: Path, frame: np.ndarray, *, rounds: int = 15, calls: int = 500) -> None:
    """Added time per reading of the novelty output: the same weights with and without it (the
    C generator's ``value_only`` graph), alternating round by round, median of paired differences."""
    import onnx

    from edgereg.core.predictor import Predictor
    from edgereg.export.c.codegen import value_only

    with tempfile.TemporaryDirectory() as tmp:
        plain = Path(tmp) / "value_only.onnx"
        onnx.save(value_only(onnx.load(str(model))), str(plain))
        predictors = {"with": Predictor(model, providers="cpu", confidence=0.9, calibration=False, threads=1),
                      "without": Predictor(plain, providers="cpu", confidence=0.9, calibration=False, threads=1)}
        for predictor in predictors.values():
            for _ in range(200):
                predictor.predict([frame])
        calls_by_variant = {name: (lambda p=p: p.predict([frame])) for name, p in predictors.items()}
        without, added = paired_timing.paired_rounds(calls_by_variant, rounds=rounds, calls=calls)
    print(f"\n== latency per reading ({model}, batch 1, one thread, {rounds} rounds of {calls}): "
          f"{without * 1e3:.3f} ms without the novelty output; it adds {added * 1e6:.1f} us ({added / without:+.1%})")


def main() -> int:
    parser = paired_timing.parser(__doc__, work="bench_unfamiliar", tasks="texture,assay", n_train=1800)
    parser.add_argument("--n-eval", type=int, default=450)
    parser.add_argument("--time-budget", type=float, default=3.0, help="minutes of training per task")
    args = parser.parse_args()

    def run_task(work: Path, task: str) -> tuple[Path, np.ndarray]:
        paths = prepare(work, task, n_train=args.n_train, n_eval=args.n_eval, budget=args.time_budget)
        return paths["model"], report(task, paths)["frame"]

    paired_timing.run_tasks(args, run_task, latency)
    return 0


if __name__ == "__main__":
    sys.exit(main())
