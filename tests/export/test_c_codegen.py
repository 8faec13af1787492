"""The C generator's entry point (c_codegen.generate_c): its checks, and `edgereg export --c` end to end."""

from __future__ import annotations

import numpy as np
import pytest

from edgereg.errors import EdgeregError, ModelFileError

pytest.importorskip("torch")  # the helpers build torch models
pytest.importorskip("onnx")

from c_helpers import compile_driver, export_test_models, int8_tolerance, run_driver

from edgereg.export.c.codegen import generate_c


@pytest.fixture(scope="module")
def conv_model(tmp_path_factory):
    """(card, fp32 path, int8 path) of the small conv test model."""
    return export_test_models(tmp_path_factory.mktemp("c_models"), names=("conv",))["conv"]


def test_mismatched_expectations_are_clear_errors(conv_model, tmp_path):
    card, fp32, int8 = conv_model
    with pytest.raises(ModelFileError, match="expected an int8 QDQ model"):
        generate_c(fp32, tmp_path / "c", int8=True)
    with pytest.raises(ModelFileError, match="expected a float model"):
        generate_c(int8, tmp_path / "c", int8=False)
    with pytest.raises(ModelFileError, match="the card does not belong to this model"):
        generate_c(fp32, tmp_path / "c", card=card.with_(input_size=(32, 32)))
    with pytest.raises(EdgeregError, match="not a C identifier"):
        generate_c(fp32, tmp_path / "c", prefix="my-model")
    with pytest.raises(ModelFileError, match="model file not found"):
        generate_c(tmp_path / "missing.onnx", tmp_path / "c")


@pytest.mark.slow
def test_export_cli_c_flag_writes_code_that_compiles_and_agrees(assay_run, assay_data, tmp_path):
    """`edgereg export RUN --int8 --c` on a real trained run: the generated C of each written model
    compiles and reads the dataset's own photos (crop, resize, mask, network) as the Predictor does."""
    from edgereg.cli.main import main
    from edgereg.core.card import read_card
    from edgereg.core.predictor import Predictor
    from edgereg.preprocess import prepare_frames, preprocess_batch, read_image

    out = tmp_path / "models"
    code = main(["export", str(assay_run), "--out", str(out), "--int8", "--c", "--calib-method", "minmax",
                 "--calib-images", "32", "--no-speed"])
    assert code in (0, 1)  # 1: the int8 gate refused the int8 model, and only the fp32 C exists
    frames = [read_image(p) for p in sorted(assay_data.rglob("*.png"))[:4]]
    written = [(c_dir, name) for c_dir, name in (("c", "model.onnx"), ("c_int8", "model.int8.onnx"))
               if (out / name).exists()]
    assert written and written[0][1] == "model.onnx"
    for c_dir, name in written:
        exe = compile_driver(out / c_dir)
        card = read_card(out / name)
        lo, hi = card.range[0]
        # int8: the QDQ graph as written (basic optimizations); see the module docstring
        predictor = Predictor(out / name, tta="none", graph_optimization="all" if c_dir == "c" else "basic")
        for frame in frames:
            height, width = frame.shape[:2]
            rgb = np.ascontiguousarray(frame[..., ::-1]).tobytes()
            got = run_driver(exe, ["predict", str(width), str(height), "3"], rgb, len(card.targets))
            expected = predictor.predict([frame]).values
            allowed = 1e-4 * (hi - lo)  # float: preprocessing and sums in another order
            if c_dir == "c_int8":  # plus one step of the last int8 tensor, where the CPU rounds it
                x = preprocess_batch(prepare_frames([frame], predictor.config)[0], predictor.config)
                allowed = allowed + int8_tolerance(out / name, x) * 1.001
            assert (np.abs(got - expected) <= allowed).all(), f"{c_dir}: {got} vs {expected} (allowed {allowed})"
