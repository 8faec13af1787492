"""Budget-true schedules, the validation plan, the race, reference normalisation and input sizes."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch

from edgereg.data.metrics import rmse_standard_error
from edgereg.training.config import TrainConfig
from edgereg.training.fitting.schedule import StepClock, StepSchedule, steps_that_fit
from edgereg.training.planning.geometry import corners_are_background
from edgereg.training.planning.input_size import capped_size, choose_input_size
from edgereg.training.planning.probe import SourceProbe
from edgereg.training.planning.reference import ReferenceNorm, choose_reference, region_mask
from edgereg.training.planning.splits import make_split
from edgereg.training.planning.validation import plan_validation
from edgereg.training.selection.race import Candidate, affordable, race_candidates, rung_plan

# ---------------------------------------------------------------------------------------------------
# schedule and clock


def test_onecycle_peaks_at_30_percent_and_replanning_continues_the_curve():
    schedule = StepSchedule("onecycle", 0.01, 100)
    lrs = [schedule.lr_at(s) for s in range(100)]
    assert int(np.argmax(lrs)) == schedule.peak_step == 30
    assert lrs[0] == pytest.approx(0.01 / 25) and lrs[-1] == pytest.approx(0.01 / 1e4, rel=1e-3)
    schedule.step = 50
    before = schedule.lr_at(50)
    schedule.replan(200)  # more time than planned: the curve stretches from the current step on
    assert schedule.peak_step == 60 and schedule.lr_at(50) > before  # back before the (moved) peak
    schedule.replan(10)  # never shorter than the steps already taken
    assert schedule.total == 51
    restored = StepSchedule("onecycle", 0.01, 5)
    restored.load_state_dict(schedule.state_dict())
    assert (restored.total, restored.step) == (51, 50)


def test_step_clock_ignores_warmup_and_takes_the_median():
    clock = StepClock(warmup=2, min_samples=3)
    for seconds in (5.0, 4.0, 0.10, 0.11, 0.5, 0.12):
        clock.record(seconds)
    assert clock.seconds_per_step == pytest.approx(0.115)
    assert steps_that_fit(10.0, 0.1, steps_per_epoch=10, eval_seconds_per_epoch=1.0) == 50


# ---------------------------------------------------------------------------------------------------
# validation


def test_group_split_holds_out_at_least_three_groups_and_a_fifth_of_the_rows():
    groups = np.repeat([f"g{i}" for i in range(12)], [40] + [5] * 11)  # one big group, eleven small ones
    split = make_split(len(groups), mode="group", groups=groups, val_frac=0.2, test_frac=0.15, min_groups=3)
    assert len(set(groups[split.val])) >= 3 and len(set(groups[split.test])) >= 3
    assert len(split.val) >= 0.2 * len(groups) * 0.8  # near the share (whole groups)
    assert not set(groups[split.val]) & set(groups[split.train])


class _Loaded:
    def __init__(self, n, groups):
        self.dataset = type("D", (), {"groups": groups, "targets": np.zeros((n, 1))})()


def test_few_groups_get_grouped_kfold_and_a_refit_many_groups_a_holdout():
    few = np.repeat([f"level{i}" for i in range(9)], 10)
    plan = plan_validation(_Loaded(90, few), TrainConfig())
    assert plan.mode == "kfold" and plan.refit and len(plan.folds) == 3
    held = [set(few[f.val]) for f in plan.folds]
    assert all(len(h) >= 3 for h in held) and set().union(*held) == set(few)  # every group scored once
    many = np.repeat([f"s{i}" for i in range(30)], 4)
    plan = plan_validation(_Loaded(120, many), TrainConfig())
    assert plan.mode == "holdout" and not plan.refit and len(set(many[plan.split.val])) >= 3
    external = plan_validation(_Loaded(120, many), TrainConfig(), external_test=True)
    assert len(external.split.test) == 0  # --test DIR replaces the internal test split


def test_rmse_standard_error_counts_groups_not_photos():
    rng = np.random.default_rng(0)
    errors = rng.normal(0, 1, 400) ** 2
    se_rows = rmse_standard_error(errors)
    assert 0.02 < se_rows < 0.06  # ~ sqrt(2) / (2 sqrt(400))
    groups = np.repeat(np.arange(4), 100)
    shifted = errors * np.repeat([0.2, 0.5, 2.0, 4.0], 100)  # errors that differ by group
    assert rmse_standard_error(shifted, groups) > 3 * rmse_standard_error(shifted)  # 4 groups: a wide interval
    assert math.isinf(rmse_standard_error(errors[:1]))


# ---------------------------------------------------------------------------------------------------
# input size and crop from the data


def test_input_size_is_native_after_the_crop_up_to_the_cap_and_shrinks_only_for_the_budget(monkeypatch):
    probe = SourceProbe(("path", "y"), ((96, 96),) * 4, False, rows=2000)
    size, why = choose_input_size(probe, TrainConfig(), crop="center", kind="scalar", model_name="cnn_small",
                                  fit_seconds=None, log=print)
    assert size == (96, 96) and "native 96x96" in why
    assert capped_size((250, 250), 128) == (128, 128) and capped_size((100, 300), 128) == (43, 128)
    import edgereg.training.planning.input_size as plan_module

    monkeypatch.setattr(plan_module, "seconds_per_step", lambda *a, **k: 0.1)  # a measured 100 ms per step
    small = SourceProbe(("path", "y"), ((80, 80),) * 4, False, rows=3200)  # 32 steps per epoch: 1500 wanted
    roomy, why = choose_input_size(small, TrainConfig(), crop="center", kind="scalar", model_name="cnn_small",
                                   fit_seconds=200.0, log=print)
    assert roomy == (80, 80) and "~2000 steps fit" in why
    tight, why = choose_input_size(small, TrainConfig(), crop="center", kind="scalar", model_name="cnn_small",
                                   fit_seconds=100.0, log=print)
    assert tight == (64, 64) and "shrunk to 64x64" in why  # 1000 steps at 80 px, 1562 at 64: 1500 wanted
    starved, _ = choose_input_size(small, TrainConfig(), crop="center", kind="scalar", model_name="cnn_small",
                                   fit_seconds=0.1, log=print)
    assert starved == (41, 41)  # never below half the native side


def test_circle_crop_only_for_plain_corners():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:64, 0:64]
    disk = np.hypot(xx - 31.5, yy - 31.5) <= 32
    well = [np.where(disk, rng.normal(128, 30, (64, 64)), 200.0).astype(np.float32) for _ in range(5)]
    texture = [rng.normal(128, 30, (64, 64)).astype(np.float32) for _ in range(5)]
    assert corners_are_background(well)[0]
    assert not corners_are_background(texture)[0]


# ---------------------------------------------------------------------------------------------------
# race


def test_successive_halving_plan_and_candidates():
    plan = rung_plan(6, 120.0)
    assert [c for c, _ in plan] == [6, 2] and sum(c * s for c, s in plan) == pytest.approx(120.0)
    assert plan[1][1] == pytest.approx(3 * plan[0][1])
    config = TrainConfig(invariance="d4")
    models = {c.model for c in race_candidates("scalar", config, invariant_ok=True)}
    assert models == {"cnn_small", "resnet_tiny", "p4m_small"}
    assert {c.model for c in race_candidates("coords", TrainConfig(), invariant_ok=False)} == {"heatmap_small"}
    assert race_candidates("scalar", TrainConfig(model="cnn_small", lr=1e-3), invariant_ok=True) == [
        Candidate("cnn_small", 1e-3)]
    few = affordable(race_candidates("scalar", TrainConfig(), invariant_ok=True), 30.0)
    assert 1 <= len(few) < 6 and all(c.lr == 3e-3 for c in few)  # the outer rates go first


# ---------------------------------------------------------------------------------------------------
# reference normalisation


def _wells(n: int, rng, *, lighting: bool, background: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """32x32 images: a centre disk (r < 0.5 R) whose colour encodes c on a gray plate; lighting
    gains scale everything; with ``background`` the plate ends at 0.8 R and a random colour fills
    the rest (a bench that changes from photo to photo)."""
    yy, xx = np.mgrid[0:32, 0:32]
    r = np.hypot(xx - 15.5, yy - 15.5) / 16
    c = rng.uniform(0, 1, n)
    images = np.empty((n, 32, 32, 3), np.uint8)
    for i in range(n):
        gain = rng.uniform(0.6, 1.2, 3) if lighting else np.ones(3)
        liquid = np.array([200, 150 - 100 * c[i], 120]) * gain
        plate = np.array([210.0, 210.0, 210.0]) * gain
        bench = rng.uniform(30, 250, 3) * gain if background else plate
        images[i] = np.where((r < 0.5)[..., None], liquid, np.where((r < 0.8)[..., None], plate, bench)).clip(0, 255)
    return images, c[:, None]


def test_reference_is_chosen_when_lighting_varies_on_the_plate_and_cancels_a_gain():
    rng = np.random.default_rng(1)
    images, targets = _wells(80, rng, lighting=True)
    assert choose_reference(images, targets, groups=None, circle=False).region is not None
    images, targets = _wells(80, rng, lighting=False)
    assert choose_reference(images, targets, groups=None, circle=False).region is None
    images, targets = _wells(80, rng, lighting=True, background=True)
    region = choose_reference(images, targets, groups=None, circle=False).region
    # the radii come from the data: a ring on the plate (0.5 .. 0.8 R), not one reaching the bench
    assert region["region"] == "ring" and region["inner"] >= 0.5 and region["outer"] <= 0.8
    forced = choose_reference(images, targets, groups=None, circle=False, only="corners").region
    assert forced == {"region": "corners"}  # --reference corners is obeyed whatever it scores
    module = ReferenceNorm(region_mask("corners", 32, 32), (0.5,) * 3, (0.25,) * 3, (1.0,) * 3, (0.3,) * 3)
    pixels = torch.rand(1, 3, 32, 32) * 0.8 + 0.1
    gain = torch.tensor([0.7, 1.1, 0.9]).view(1, 3, 1, 1)
    normalized = lambda p: (p - 0.5) / 0.25  # noqa: E731
    # equal up to the EPS the reference mean carries (a black reference must not divide by 0)
    torch.testing.assert_close(module(normalized(pixels)), module(normalized(pixels * gain)), atol=1e-2, rtol=0)


# ---------------------------------------------------------------------------------------------------
# end to end: the budget is used, the race and the decisions are reported


@pytest.mark.slow
def test_train_with_only_a_time_budget_fills_it_and_reports_why_it_stopped(assay_dir, tmp_path):
    from edgereg.training.trainer import train

    budget_min = 0.5
    started = time.perf_counter()
    result = train(assay_dir, tmp_path / "run", TrainConfig(time_budget_min=budget_min, threads=1, max_size=32),
                   progress=False, log=lambda m: None, started=started)
    used = time.perf_counter() - started
    budget = result.metrics["budget"]
    assert budget["budget_s"] == 30 and budget["stopped"]
    assert used >= 0.9 * 30 and budget["used_share"] >= 0.9  # the budget is used ...
    stages = budget["stages_s"]
    assert {"load", "race", "fit", "evaluation"} <= set(stages)
    # ... and not overrun by the fit: everything before the final scoring ends by the deadline, give
    # or take the step and the validation pass in flight when the clock is checked (seconds on a
    # loaded machine); only the scoring and the report may run over
    assert sum(stages.values()) - stages["evaluation"] <= 30 + 5
    assert result.metrics["race"]["winner"]["model"] in ("cnn_small", "resnet_tiny")
    # the race's winner trained; on data this small a block readout may still beat it, and is then shipped
    # with the network's validation score among its baselines
    if result.metrics["model"]["name"] == "readout":
        assert any(name.startswith("network") for name in result.metrics["val"]["baselines"])
    else:
        assert result.metrics["training"]["steps"] > 0
    assert {d["what"] for d in result.metrics["decisions"]} >= {"input size", "crop", "channels", "kind"}
    assert result.metrics["validation"]["val_se"] > 0
    assert "time budget: used" in result.summary


@pytest.mark.slow
def test_few_groups_score_out_of_fold_refit_on_all_rows_and_score_an_external_test(box_dir, tmp_path):
    from edgereg.cli.main import main

    run = tmp_path / "run"
    code = main(["train", str(box_dir), "--out", str(run), "--epochs", "1", "--size", "24", "--threads", "1",
                 "--batch-size", "16", "--test", str(box_dir), "--quiet"])
    assert code == 0
    import json

    metrics = json.loads((run / "metrics.json").read_text())
    record = json.loads((run / "run.json").read_text())
    assert metrics["validation"]["mode"] == "kfold" and metrics["validation"]["refit"]
    assert metrics["val"]["n"] == 48  # every row scored once, out of fold
    assert metrics["test"]["n"] == 48  # the external folder
    assert len(record["refit_rows"]) == 48 and record["split"]["val"]  # refit on every row; fold 0 kept
    assert metrics["augment"] == "translate=0.25"  # coords: translation only by default
    assert main(["export", str(run), "--int8", "--no-speed"]) in (0, 1)  # the gate has images to compare on
    assert (run / "model.onnx").is_file()


def test_coordinates_keep_their_native_size_under_a_tight_budget(monkeypatch):
    """Coords are read in source pixels: the budget shrinks other kinds' inputs, never theirs."""
    import edgereg.training.planning.input_size as plan_module

    monkeypatch.setattr(plan_module, "seconds_per_step", lambda *a, **k: 0.1)
    probe = SourceProbe(("path", "x", "y"), ((80, 80),) * 4, False, rows=3200)
    scalar, _ = choose_input_size(probe, TrainConfig(), crop="none", kind="scalar", model_name="cnn_small",
                                  fit_seconds=100.0, log=print)
    coords, why = choose_input_size(probe, TrainConfig(), crop="none", kind="coords", model_name="heatmap_small",
                                    fit_seconds=100.0, log=print)
    assert scalar == (64, 64) and coords == (80, 80) and "~1000 steps fit" in why


def test_the_race_derives_every_candidates_plan_from_one_basis():
    """The normalization and reference statistics are measured once per race (one PlanBasis), not
    once per candidate and rung; each raced model gets one plan."""
    from edgereg.training.selection.race import race_plans

    class Basis:
        calls: list[str | None] = []

        def plan(self, model_name=None):
            self.calls.append(model_name)
            return f"plan of {model_name}"

    basis = Basis()
    candidates = [Candidate(m, lr) for m in ("cnn_small", "resnet_tiny") for lr in (3e-3, 1e-3, 1e-2)]
    plans = race_plans(basis, candidates)
    assert plans == {"cnn_small": "plan of cnn_small", "resnet_tiny": "plan of resnet_tiny"}
    assert basis.calls == ["cnn_small", "resnet_tiny"]


def test_a_plan_from_a_basis_is_the_plan_make_plan_gives(assay_dir):
    """plan_basis(...).plan(name) == make_plan(..., model_name=name): the race's shared basis
    changes no number of any candidate's plan."""
    from edgereg.training.planning.fit_plan import make_plan, plan_basis
    from edgereg.training.planning.loading import load_data

    config = TrainConfig(input_size=(24, 24), threads=1, seed=3)
    loaded = load_data(assay_dir, config, log=lambda message: None)
    split = plan_validation(loaded, config).split
    basis = plan_basis(loaded, config, split, seen_frac=0.0)
    for name in ("cnn_small", "resnet_tiny"):
        shared, alone = basis.plan(name), make_plan(loaded, config, split, model_name=name, seen_frac=0.0)
        assert shared.model_name == alone.model_name == name and shared.preprocess == alone.preprocess
        assert shared.augment == alone.augment and shared.transform.to_dict() == alone.transform.to_dict()
        assert np.array_equal(shared.split.train, alone.split.train) and np.array_equal(shared.seen, alone.seen)
    assert basis.plan().model_name == make_plan(loaded, config, split).model_name
