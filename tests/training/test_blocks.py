"""Feature blocks and block readouts: exact statistics, the spectrum against numpy's FFT, the readout
through train / export (fp32, int8, C) and the trainer shipping a readout that beats its network."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from edgereg.cli.main import main
from edgereg.errors import EdgeregError
from edgereg.training.blocks.features import SPECTRUM_BANDS, Moments, Spectrum, region_masks
from edgereg.training.blocks.readout import choose_alpha, parse_blocks, ridge_path


def intensities(images: np.ndarray) -> torch.Tensor:
    """(N, H, W) uint8 -> (N, 1, H, W) float32 in [0, 1]."""
    return torch.from_numpy(images.astype(np.float32) / 255.0)[:, None]


@pytest.mark.parametrize("side", [28, 27, 96])
def test_order_statistics_are_exact_on_8_bit_images(side):
    rng = np.random.default_rng(side)
    images = rng.integers(0, 256, (5, side, side)).astype(np.uint8)
    images[0] = 7  # a constant image: every order statistic is that value
    block = Moments(1, (side, side))
    x = intensities(images)
    block.fit(x)
    features = block(x).numpy().reshape(5, -1)  # (N, 2 + Q)
    stride = block.stride
    for i, image in enumerate(images):
        pixels = image.astype(np.float64) / 255.0
        sub = np.sort(pixels[::stride, ::stride].reshape(-1))
        n = len(sub)
        assert features[i, 0] == pytest.approx(pixels.mean(), abs=1e-6)
        assert features[i, 1] == pytest.approx(pixels.std(), abs=1e-5)
        assert features[i, 2] == pytest.approx(sub[0], abs=1e-6)
        assert features[i, 3] == pytest.approx(sub[-1], abs=1e-6)
        assert features[i, 4] == pytest.approx(sub[(n + 1) // 2 - 1], abs=1e-6)
        assert features[i, 5] == pytest.approx(sub[n // 2], abs=1e-6)
        if stride == 1:  # the mean of the middle pair is numpy's median
            assert (features[i, 4] + features[i, 5]) / 2 == pytest.approx(np.median(pixels), abs=1e-6)


def test_order_statistics_off_the_8_bit_grid_follow_the_training_values():
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.normal(0.3, 0.05, (20, 1, 16, 16)).astype(np.float32))
    block = Moments(1, (16, 16))
    block.fit(x)
    features = block(x).numpy()
    median = np.median(x.numpy().reshape(20, -1), axis=1)
    mid = (features[:, 4] + features[:, 5]) / 2
    assert np.abs(mid - median).max() < 0.01  # within a level of the 256-quantile grid


def test_spectrum_matches_numpy_fft_band_powers():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 40, 48)).astype(np.uint8)
    block = Spectrum(1, (40, 48))
    features = block(intensities(images)).numpy()
    window = np.outer(np.hanning(40), np.hanning(48))
    fy, fx = np.meshgrid(np.fft.fftfreq(40), np.fft.fftfreq(48), indexing="ij")
    radius = np.hypot(fx, fy)
    edges = np.geomspace(1 / 48, 0.5 * np.sqrt(2), SPECTRUM_BANDS + 1)
    for i, image in enumerate(images):
        g = image / 255.0
        power = np.abs(np.fft.fft2((g - g.mean()) * window)) ** 2
        total = power[radius > 0].sum()
        expected = [np.log(power[(radius >= a) & (radius < b)].sum() / total + 1e-6) for a, b in zip(edges, edges[1:])]
        np.testing.assert_allclose(features[i, :SPECTRUM_BANDS], expected, atol=1e-3)


def test_region_masks_are_normalized_weights():
    weights, names = region_masks((30, 40))
    assert weights.shape == (len(names), 1200)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-5)


def test_ridge_recovers_a_linear_law_and_cross_validation_prefers_little_penalty_on_clean_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5))
    z = x @ np.array([[1.0], [-2.0], [0.5], [0.0], [3.0]]) + 0.25
    alpha, mse = choose_alpha(x, z, None)
    ((w, b),) = ridge_path(x, z, (alpha,))
    np.testing.assert_allclose(w[:, 0], [1.0, -2.0, 0.5, 0.0, 3.0], atol=1e-3)
    assert b[0] == pytest.approx(0.25, abs=1e-3) and mse < 1e-5


def test_unknown_blocks_are_refused_with_the_choices():
    with pytest.raises(EdgeregError, match="choose from moments, colour, spectrum, bank, tiles, template, pixels"):
        parse_blocks("moments,colur")
    assert parse_blocks("pixels,moments") == ("moments", "pixels")  # compact blocks first


def test_a_readout_reads_pixel_statistics_exactly_and_exports_to_int8_and_c(pixelstats_dir, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", str(pixelstats_dir), "--out", str(run), "--model", "readout", "--model-opt", "blocks=moments",
                 "--quiet"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["model"]["name"] == "readout"
    for target in ("mean", "median", "std"):  # the targets are exact functions of the pixels
        assert metrics["test"]["targets"][target]["rmse"] < 1e-5
    assert main(["export", str(run), "--int8", "--c", "--no-speed"]) == 0
    assert (run / "model.int8.onnx").exists() and (run / "c" / "model.c").exists()
    report = json.loads((run / "export_report.json").read_text())
    assert report["gate"]["passed"]


def test_the_trainer_ships_a_readout_that_beats_its_network(pixelstats_dir, tmp_path):
    run = tmp_path / "auto"
    assert main(["train", str(pixelstats_dir), "--out", str(run), "--epochs", "1", "--quiet"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    record = json.loads((run / "run.json").read_text())
    readouts = metrics["readouts"]
    assert readouts["best"].startswith("readout") and readouts["candidates"]
    # one epoch of a network cannot read exact pixel statistics; a readout can: it is shipped
    assert record["model"]["name"] == "readout" and metrics["model"]["name"] == "readout"
    assert any(name.startswith("network") for name in metrics["val"]["baselines"])


def test_a_hybrid_starts_at_its_readout_and_trains_only_the_network(assay_dir):
    from edgereg.training.blocks.race import fit_plan, readout_plan
    from edgereg.training.config import TrainConfig
    from edgereg.training.planning.fit_plan import make_plan, new_regressor
    from edgereg.training.planning.loading import load_data
    from edgereg.training.planning.validation import make_run_split

    config = TrainConfig(input_size=(24, 24), threads=1)
    loaded = load_data(assay_dir, config, log=lambda m: None)
    split = make_run_split(loaded, config)
    base = make_plan(loaded, config, split, model_name="cnn_small", seen_frac=0.0)
    hybrid_plan = replace(base, model_name="hybrid", model_kwargs={"trunk": "cnn_small", "blocks": "colour"})
    hybrid = new_regressor(hybrid_plan, seed=0).eval()
    readout, _ = fit_plan(readout_plan(base, "colour"), seed=0)
    x = torch.rand(4, 3, 24, 24)
    with torch.no_grad():  # the network's output layer starts at zero: the hybrid is the readout
        torch.testing.assert_close(hybrid(x), readout(x))
    trainable = {n for n, p in hybrid.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("model.trunk.") for n in trainable)
