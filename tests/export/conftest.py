"""Session fixtures for the export tests: one small real training run, made through the public CLI.

The run trains the default model briefly on a tiny synthetic assay dataset (circle crop, bounded
scalar in mg/L), long enough that the model reads the colour rather than predicting the mean: the
int8 gate test needs a model whose accuracy a bad calibration can visibly destroy.
"""

from __future__ import annotations

from pathlib import Path

import pytest

N_IMAGES = 96  # enough for train/val/test parts of a few dozen images each
IMAGE_SIZE = 48  # source images; the model sees MODEL_SIZE
MODEL_SIZE = "32"
EPOCHS = "6"


@pytest.fixture(scope="session")
def assay_data(tmp_path_factory) -> Path:
    """A tiny synthetic assay dataset directory (labels.csv + PNGs)."""
    from edgereg.training.synth import make_dataset

    root = tmp_path_factory.mktemp("export") / "assay"
    make_dataset("assay", root, n=N_IMAGES, seed=0, size=IMAGE_SIZE)
    return root


@pytest.fixture(scope="session")
def assay_run(assay_data, tmp_path_factory) -> Path:
    """A finished training run directory, trained with `edgereg train` on one thread."""
    import torch

    from edgereg.cli.main import main

    torch.set_num_threads(1)
    run_dir = tmp_path_factory.mktemp("export") / "run"
    # a network, not a block readout (which would win on data this small): int8 layers are under test
    code = main(["train", str(assay_data), "--out", str(run_dir), "--model", "cnn_small", "--size", MODEL_SIZE,
                 "--epochs", EPOCHS,
                 "--units", "mg/L", "--batch-size", "16", "--threads", "1", "--seed", "0", "--quiet"])
    assert code == 0, "the fixture's training run failed"
    return run_dir


@pytest.fixture(scope="session")
def exported(assay_run, tmp_path_factory) -> Path:
    """`edgereg export RUN --int8 --fp16` output directory (speed measured with few repeats)."""
    from edgereg.cli.main import main

    out = tmp_path_factory.mktemp("export") / "models"
    code = main(["export", str(assay_run), "--out", str(out), "--int8", "--fp16", "--repeats", "3"])
    assert code == 0, "the fixture's export failed (see the captured output)"
    return out
