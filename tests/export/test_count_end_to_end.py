"""The count kind end to end through the CLI: synth, train --kind count, export --int8 --c, infer, and C."""

from __future__ import annotations

import csv

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnx")

from c_helpers import compile_driver, int8_tolerance, run_driver


@pytest.mark.slow
def test_count_kind_trains_exports_infers_and_runs_in_c(tmp_path):
    import torch

    from edgereg.cli.main import main
    from edgereg.core.card import read_card
    from edgereg.core.predictor import Predictor
    from edgereg.preprocess import prepare_frames, preprocess_batch, read_image

    torch.set_num_threads(1)
    data, run, out = tmp_path / "data", tmp_path / "run", tmp_path / "models"
    assert main(["synth", "count", str(data), "--n", "48", "--size", "32"]) == 0
    assert main(["train", str(data), "--kind", "count", "--model", "cnn_small", "--out", str(run), "--epochs", "2",
                 "--batch-size", "16",
                 "--threads", "1", "--seed", "0", "--quiet"]) == 0
    code = main(["export", str(run), "--out", str(out), "--int8", "--c", "--calib-method", "minmax",
                 "--calib-images", "16", "--no-speed"])
    assert code in (0, 1)  # 1: the int8 gate refused the tiny model's int8 copy; fp32 and its C exist
    card = read_card(out / "model.onnx")
    assert card.kind == "count" and card.targets == ("count",) and card.range is None

    predictions = tmp_path / "predictions.csv"
    assert main(["infer", str(out / "model.onnx"), str(data / "images"), "--out", str(predictions)]) == 0
    with open(predictions, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 48 and "count" in rows[0]
    assert all(float(row["count"]) > 0 for row in rows)  # exp output: an expected count, never negative

    frames = [read_image(p) for p in sorted((data / "images").glob("*.png"))[:4]]
    written = [(c_dir, name) for c_dir, name in (("c", "model.onnx"), ("c_int8", "model.int8.onnx"))
               if (out / name).exists()]
    assert written[0] == ("c", "model.onnx")
    for c_dir, name in written:
        exe = compile_driver(out / c_dir)
        # int8: the QDQ graph as written (basic optimizations), as tests/export/test_c_codegen.py does
        predictor = Predictor(out / name, tta="none", graph_optimization="all" if c_dir == "c" else "basic")
        for frame in frames:
            height, width = frame.shape[:2]
            rgb = np.ascontiguousarray(frame[..., ::-1]).tobytes()
            got = run_driver(exe, ["predict", str(width), str(height), "3"], rgb, 1)
            expected = predictor.predict([frame]).values
            allowed = 1e-4 * np.maximum(np.abs(expected), 1.0)  # float: relative 1e-4 (c_helpers)
            if c_dir == "c_int8":  # plus one step of the last int8 tensor, carried through exp
                x = preprocess_batch(prepare_frames([frame], predictor.config)[0], predictor.config)
                allowed = allowed + int8_tolerance(out / name, x) * 1.001
            assert (np.abs(got - expected) <= allowed).all(), f"{c_dir}: {got} vs {expected} (allowed {allowed})"
