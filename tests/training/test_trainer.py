"""The trainer through its public API: runs, run directories, resumption, folds, sanity, LR finder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgereg.core.card import ModelCard
from edgereg.data.metrics import compute_metrics, uv_to_source_pixels
from edgereg.errors import EdgeregError
from edgereg.preprocess import preprocess_batch
from edgereg.training.config import TrainConfig
from edgereg.training.run import load_checkpoint, load_run, load_run_dataset
from edgereg.training.selection.lr_find import LRFindConfig, lr_range_test
from edgereg.training.trainer import train

torch.set_num_threads(1)

# the network itself is under test: a block readout would win on data this small (tests/training/test_blocks.py)
TINY = dict(input_size=(24, 24), threads=1, batch_size=16, epochs=2, patience=50, model="cnn_small")


def _quiet(message: str) -> None:
    pass


@pytest.mark.parametrize("fixture, kind", [
    ("assay_dir", "scalar"), ("gravel_dir", "distribution"), ("box_dir", "coords"),
    ("angle_dir", "angle"), ("pixelstats_dir", "vector"),
])
def test_a_run_reloads_and_reproduces_its_recorded_metrics(fixture, kind, request, tmp_path):
    """Every kind trains end to end; load_run's model, fed by the runtime's preprocessing, gives
    back exactly the validation metrics the run recorded (physical units, coords in source pixels)."""
    dataset_dir = request.getfixturevalue(fixture)
    size = (28, 28) if kind == "vector" else (24, 24)
    split = "random" if kind == "coords" else "auto"  # the 4 quadrant groups would mean k-fold + refit
    result = train(dataset_dir, tmp_path / "run", TrainConfig(**{**TINY, "input_size": size, "epochs": 1},
                                                              split=split), progress=False, log=_quiet)
    for name in ("run.json", "checkpoint.pt", "best.pt", "metrics.json", "report.png"):
        assert (tmp_path / "run" / name).is_file(), name
    assert result.metrics["kind"] == kind
    assert {"zero", "train_mean", "train_median"} <= set(result.metrics["val"]["baselines"])
    regressor, info = load_run(tmp_path / "run")
    assert isinstance(info.card, ModelCard) and info.card.kind == kind and not regressor.training
    dataset = load_run_dataset(info)
    rows = np.asarray(info.split.val)
    with torch.no_grad():
        values = regressor(torch.from_numpy(preprocess_batch(dataset.images[rows], info.preprocess))).double().numpy()
    truth = dataset.targets[rows]
    if kind == "coords":
        values, truth = (uv_to_source_pixels(v, dataset.crop_boxes[rows]) for v in (values, truth))
        assert result.metrics["units"] == ["px", "px"]
    metrics = compute_metrics(kind, truth, values, info.targets)
    assert metrics["rmse"] == pytest.approx(result.metrics["val"]["rmse"], rel=1e-6)
    assert info.card.provenance["dataset_fingerprint"] == dataset.fingerprint


def test_group_split_holds_out_whole_groups_and_measures_memorisation(gravel_dir, tmp_path):
    result = train(gravel_dir, tmp_path / "run", TrainConfig(**{**TINY, "epochs": 1}, split="group"),
                   progress=False, log=_quiet)
    _, info = load_run(tmp_path / "run")
    groups = np.asarray(load_run_dataset(info).groups).astype(str)
    parts = {name: set(groups[np.asarray(getattr(info.split, name))]) for name in ("train", "val", "test")}
    assert not parts["train"] & parts["val"] and not parts["train"] & parts["test"]
    seen = np.asarray(info.record["split"]["seen"], dtype=int)
    assert len(seen) and set(groups[seen]) <= parts["train"]  # unseen photos of training groups
    assert not set(seen) & set(np.asarray(info.split.train).tolist())
    assert "nearest_train_group" in result.metrics["test"]["baselines"]
    assert result.metrics["memorisation"]["ratio"] == pytest.approx(
        result.metrics["test"]["rmse"] / result.metrics["seen"]["rmse"])
    assert result.metrics["test"]["groups"]  # per-group errors


def test_resume_of_a_finished_run_changes_nothing_and_reuse_needs_resume(assay_dir, tmp_path):
    config = TrainConfig(**{**TINY, "epochs": 1})
    first = train(assay_dir, tmp_path / "run", config, progress=False, log=_quiet)
    before = (tmp_path / "run" / "best.pt").read_bytes()
    again = train(assay_dir, tmp_path / "run", config, resume=True, progress=False, log=_quiet)
    assert again.metrics == first.metrics and (tmp_path / "run" / "best.pt").read_bytes() == before
    with pytest.raises(EdgeregError, match="already holds a run"):
        train(assay_dir, tmp_path / "run", config, progress=False, log=_quiet)


def test_checkpoint_holds_everything_to_resume(assay_dir, tmp_path):
    train(assay_dir, tmp_path / "run", TrainConfig(**TINY), progress=False, log=_quiet)
    checkpoint = load_checkpoint(tmp_path / "run" / "checkpoint.pt")  # weights_only=True
    assert checkpoint["epoch"] == 2 and len(checkpoint["history"]) == 2
    assert {"model", "optimizer", "scheduler", "best_model"} <= set(checkpoint)
    # the step format a resume must keep (24 px x 16 images is too small to compare formats: fp32 NCHW)
    assert (checkpoint["step"]["precision"], checkpoint["step"]["channels_last"]) == ("fp32", False)
    best = load_checkpoint(tmp_path / "run" / "best.pt")
    assert all(torch.equal(best[k], checkpoint["best_model"][k]) for k in best)


def test_time_budget_and_early_stopping_end_the_run(assay_dir, tmp_path):
    budget = train(assay_dir, tmp_path / "budget", TrainConfig(**{**TINY, "epochs": 30}, time_budget_min=1e-4),
                   progress=False, log=_quiet)
    assert budget.metrics["training"]["epochs"] == 1 and "time budget" in budget.metrics["training"]["stopped"]
    stalled = TrainConfig(**{**TINY, "epochs": 30, "patience": 2}, lr=1e-9, schedule="constant")
    early = train(assay_dir, tmp_path / "early", stalled, progress=False, log=_quiet)
    training = early.metrics["training"]
    assert "early stopping" in training["stopped"] and training["epochs"] < 30
    # stopped exactly `patience` epochs after the best; patience is at least a quarter of the planned 30
    assert training["best_epoch"] == training["epochs"] - 8


def test_sanity_check_passes_on_a_learnable_batch_and_fails_loudly_when_nothing_learns(assay_dir, tmp_path):
    ok = train(assay_dir, tmp_path / "ok", TrainConfig(**{**TINY, "epochs": 1}, sanity=True),
               progress=False, log=_quiet)
    assert ok.metrics["sanity"]["passed"] and ok.metrics["sanity"]["last_loss"] < ok.metrics["sanity"]["first_loss"]
    with pytest.raises(EdgeregError, match="sanity check FAILED"):
        train(assay_dir, tmp_path / "stuck", TrainConfig(**{**TINY, "epochs": 1}, sanity=True, lr=1e-9),
              progress=False, log=_quiet)


def test_folds_report_mean_and_std_and_keep_the_best_validation_fold(assay_dir, tmp_path):
    result = train(assay_dir, tmp_path / "cv", TrainConfig(**{**TINY, "epochs": 1}, folds=2, split="random"),
                   progress=False, log=_quiet)
    cv = result.metrics["cv"]
    fold_rmse = [f["test_rmse"] for f in result.metrics["fold_metrics"]]
    assert cv["folds"] == 2 and cv["rmse"]["mean"] == pytest.approx(np.mean(fold_rmse))
    assert cv["rmse"]["std"] == pytest.approx(np.std(fold_rmse, ddof=1))
    chosen = result.metrics["chosen_fold"]
    val = [f["val_rmse"] for f in result.metrics["fold_metrics"]]
    assert chosen == int(np.argmin(val))
    assert (tmp_path / "cv" / "best.pt").read_bytes() == (tmp_path / "cv" / f"fold{chosen}" / "best.pt").read_bytes()
    regressor, info = load_run(tmp_path / "cv")
    assert info.record["folds"]["chosen"] == chosen


def test_lr_range_test_restores_the_model_and_suggests_where_the_loss_falls():
    torch.manual_seed(0)
    x = torch.randn(256, 4)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
    model = torch.nn.Linear(4, 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)

    def loss_of_step(step):
        rows = torch.arange(step * 32, step * 32 + 32) % 256
        return torch.nn.functional.mse_loss(model(x[rows]), y[rows])

    result = lr_range_test(model, optimizer, loss_of_step, LRFindConfig(start=1e-5, end=10.0, steps=80))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert optimizer.param_groups[0]["lr"] == 1e-3
    assert result.lrs[0] < result.suggestion <= result.minimum
    index = result.lrs.index(result.suggestion)
    assert result.smoothed[index + 3] < result.smoothed[index - 3]  # the loss falls around it


def test_a_run_writes_metrics_json_once(assay_dir, tmp_path, monkeypatch):
    """metrics.json is written once per run, last (after report.png), with the final time used."""
    import edgereg.training.reporting.fit_report as fit_report
    import edgereg.training.trainer as trainer
    from edgereg.training.run import METRICS_FILE, write_json

    writes = []

    def counting(path, data):
        writes.append(path.name)
        return write_json(path, data)

    for module in (fit_report, trainer):  # every module of the run that writes JSON files
        monkeypatch.setattr(module, "write_json", counting)
    result = train(assay_dir, tmp_path / "run", TrainConfig(**{**TINY, "epochs": 1}), progress=False, log=_quiet)
    assert writes.count(METRICS_FILE) == 1
    assert (tmp_path / "run" / "report.png").is_file()
    assert result.metrics["budget"]["used_s"] >= result.metrics["budget_record"]["used_s"]
