"""A block readout with every block lowers to C that reads photos as ONNX Runtime does."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pytest
from c_helpers import compile_driver, run_driver


@pytest.mark.parametrize("task, blocks", [("assay", "moments,colour,spectrum,bank,tiles,pixels"),
                                          ("box", "template")])
def test_a_readout_of_every_block_lowers_to_c_that_agrees_with_onnx_runtime(task, blocks, assay_data, tmp_path):
    from edgereg.cli.main import main
    from edgereg.core.card import read_card
    from edgereg.core.predictor import Predictor
    from edgereg.preprocess import read_image
    from edgereg.training.synth import make_dataset

    data = assay_data
    if task != "assay":
        data = tmp_path / task
        make_dataset(task, data, n=48, seed=0, size=32)
    run = tmp_path / "run"
    assert main(["train", str(data), "--out", str(run), "--model", "readout", "--model-opt", f"blocks={blocks}",
                 "--size", "32", "--quiet"]) == 0
    assert main(["export", str(run), "--c", "--no-speed"]) == 0
    exe = compile_driver(run / "c")
    card = read_card(run / "model.onnx")
    lo, hi = card.range[0] if card.range else (0.0, 32.0)  # coords: source pixels of a 32 px image
    predictor = Predictor(run / "model.onnx", tta="none")
    for path in sorted(data.rglob("*.png"))[:4]:
        frame = read_image(path)
        height, width = frame.shape[:2]
        rgb = np.ascontiguousarray(frame[..., ::-1]).tobytes()
        got = run_driver(exe, ["predict", str(width), str(height), "3"], rgb, len(card.targets))
        expected = predictor.predict([frame]).values
        # float C: the same arithmetic in another order (logs of band powers, counts of levels)
        np.testing.assert_allclose(got, expected, atol=1e-3 * (hi - lo))
