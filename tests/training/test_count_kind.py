"""The count kind on the training side: its transform, Poisson loss, dataset checks, augmentation, metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_data import solid, write_dataset

from edgereg.data.dataset import infer_kind, load_dataset
from edgereg.data.metrics import compute_metrics
from edgereg.errors import DatasetError
from edgereg.preprocess import PreprocessConfig
from edgereg.training.fitting.augment import AugmentConfig, augment_batch, default_augment
from edgereg.training.targets.kind_training import kind_training
from edgereg.training.targets.losses import default_loss, make_loss
from edgereg.training.targets.regressor import OutputLayer, OutputTransform


def test_count_output_is_the_training_mean_times_exp_of_the_raw_output():
    counts = np.array([[0.0, 10.0], [4.0, 30.0], [2.0, 20.0]])
    transform = OutputTransform.from_targets("count", counts)
    assert transform.mean == (2.0, 20.0) and transform.n_outputs == 2
    layer = OutputLayer(transform)
    raw = torch.tensor([[0.0, 0.0], [math.log(3.0), -math.log(4.0)]])
    torch.testing.assert_close(layer(raw), torch.tensor([[2.0, 20.0], [6.0, 5.0]]))
    torch.testing.assert_close(transform.encode(counts), torch.tensor([[0.0, 0.5], [2.0, 1.5], [1.0, 1.0]]))
    with pytest.raises(DatasetError, match="0 in every training row"):
        OutputTransform.from_targets("count", np.zeros((3, 1)))
    restored = OutputTransform.from_dict(transform.to_dict())
    assert restored == transform


def test_poisson_loss_is_the_poisson_likelihood_of_the_counts_over_the_mean():
    """loss(raw, y / m) * m = Poisson NLL of y at log-rate raw + log m, up to a constant in raw."""
    assert default_loss("count") == "poisson"
    loss = make_loss(None, "count")
    mean = 7.0
    y = torch.tensor([[0.0], [3.0], [12.0]])

    def gap(raw: torch.Tensor) -> float:
        ours = loss(raw, y / mean) * mean
        reference = F.poisson_nll_loss(raw + math.log(mean), y, log_input=True, full=False)
        return float(ours - reference)

    assert gap(torch.tensor([[0.3], [-1.0], [0.8]])) == pytest.approx(gap(torch.tensor([[-2.0], [0.5], [0.1]])),
                                                                       abs=1e-5)
    best = torch.log(torch.tensor([[1e-6], [3.0], [12.0]]) / mean).requires_grad_()  # rate = the count
    loss(best, y / mean).backward()
    assert float(best.grad[1:].abs().max()) < 1e-6
    with pytest.raises(Exception, match="does not fit kind 'scalar'"):
        make_loss("poisson", "scalar")


def test_count_columns_must_be_whole_numbers_at_least_0_and_are_never_inferred(tmp_path):
    images = {f"{i}.png": solid(40 * i) for i in range(3)}
    config = PreprocessConfig(input_size=(8, 8), crop="none")
    good = write_dataset(tmp_path / "good", ["path", "particles"], [["0.png", 0], ["1.png", 3], ["2.png", 12]],
                         images=images)
    data = load_dataset(good, config=config, kind="count", cache=False)
    assert data.kind == "count" and data.targets[:, 0].tolist() == [0.0, 3.0, 12.0]
    assert infer_kind(["particles"], data.targets)[0] == "scalar"  # integers alone do not make a count
    for name, value in (("half", 2.5), ("negative", -1)):
        bad = write_dataset(tmp_path / name, ["path", "particles"], [["0.png", 0], ["1.png", value], ["2.png", 1]],
                            images=images)
        with pytest.raises(DatasetError, match=r"kind 'count' needs whole numbers >= 0; labels.csv line 3 has"):
            load_dataset(bad, config=config, kind="count", cache=False)


def test_flips_and_rotations_leave_counts_unchanged_and_counts_do_not_translate():
    config = default_augment("count", crop="center", square=True)
    assert config.rotation == "d4" and config.hflip and config.translate == 0.0
    assert default_augment("scalar", crop="center", square=True).translate == 0.05
    targets = torch.tensor([[3.0], [0.0], [11.0], [7.0]])
    images = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 255
    moved_images, moved = augment_batch(images, targets, kind="count",
                                        config=AugmentConfig(rotation="any", hflip=True, translate=0.1),
                                        generator=torch.Generator().manual_seed(1))
    assert not torch.equal(moved_images, images)
    assert torch.equal(moved, targets)
    assert kind_training("count").invariant


def test_count_metrics_are_rmse_and_mae_in_counts():
    metrics = compute_metrics("count", np.array([[2.0], [5.0], [9.0]]), np.array([[2.5], [4.0], [9.0]]), ["n"])
    assert metrics["rmse"] == pytest.approx(math.sqrt((0.25 + 1.0) / 3))
    assert metrics["mae"] == pytest.approx(0.5) and metrics["max_error"] == pytest.approx(1.0)
    assert metrics["targets"]["n"]["r2"] is not None
