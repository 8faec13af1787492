"""The rendered model.c / model.h (c_render): preprocessing, the frame entry points, the output
mapping and the symbol prefixes, compiled with gcc and compared with edgereg's runtime."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

pytest.importorskip("torch")  # the helpers build torch models
pytest.importorskip("onnx")

from c_helpers import CFLAGS, _gcc, compile_driver, run_driver

from edgereg.export.c.codegen import generate_c

PREPROCESS_CASES = {
    "center_shrink": (dict(crop="center"), (37, 50)),  # non-integer INTER_AREA factor
    "circle_fill": (dict(crop="circle", fill=-1.5), (64, 48)),
    "gray": (dict(crop="center", channels="gray", mean=(0.4,), std=(0.2,)), (45, 45)),
    "roi_past_border": (dict(roi=(40.3, 10.0, 17.5)), (60, 80)),  # the ROI square pads with black
    "none_non_square": (dict(crop="none"), (30, 40)),
    "enlarge": (dict(crop="center"), (10, 12)),  # bilinear (INTER_LINEAR)
}


@pytest.mark.parametrize("case", list(PREPROCESS_CASES))
def test_c_preprocessing_matches_runtime(case, model_factory, tmp_path):
    """Shrinking (INTER_AREA) matches edgereg.preprocess to float rounding; enlarging (bilinear; OpenCV
    uses fixed-point weights there) to one pixel level."""
    from edgereg.core.card import read_card
    from edgereg.preprocess import PreprocessConfig, prepare_frames, preprocess_batch

    fields, (height, width) = PREPROCESS_CASES[case]
    model = model_factory(input_size=(16, 16), **fields)
    card = read_card(model)
    generate_c(model, tmp_path / "c")
    exe = compile_driver(tmp_path / "c")
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(4, height, width, 3), dtype=np.uint8)
    ramp = np.linspace(0, 255, width)[None, None, :, None] + rng.normal(0, 20, (2, height, width, 3))
    frames[2:] = np.clip(ramp, 0, 255).astype(np.uint8)  # smooth frames too, not only noise
    config = PreprocessConfig.from_card(card)
    expected = preprocess_batch(prepare_frames(list(frames), config)[0], config)
    rgb = np.ascontiguousarray(frames[..., ::-1])  # BGR (OpenCV) -> RGB888 (camera)
    got = run_driver(exe, ["preprocess", str(width), str(height), "3"], rgb.tobytes(),
                     card.n_channels * 16 * 16).reshape(expected.shape)
    level = 1.0 / (255.0 * min(card.std))
    tolerance = level + 1e-5 if case == "enlarge" else 1e-5
    assert np.abs(got - expected).max() <= tolerance


def test_predict_rgb888_matches_predictor(model_factory, tmp_path):
    """The frame entry point end to end: crop, normalize, network, output transform."""
    from edgereg.core.predictor import Predictor

    model = model_factory(kind="vector", targets=("a", "b"), input_size=(16, 16), crop="circle", fill=0.5)
    generate_c(model, tmp_path / "c")
    exe = compile_driver(tmp_path / "c")
    frames = np.random.default_rng(1).integers(0, 256, size=(5, 16, 24, 3), dtype=np.uint8)  # crop 16x16
    got = run_driver(exe, ["predict", "24", "16", "3"], np.ascontiguousarray(frames[..., ::-1]).tobytes(), 2)
    expected = Predictor(model, tta=None).predict(list(frames)).values
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_predict_coords_are_mapped_to_frame_pixels(model_factory, tmp_path):
    """Coordinates come back in frame pixels through the crop box, as the Predictor returns them."""
    from edgereg.core.predictor import Predictor

    model = model_factory(fn="centroid", kind="coords", targets=("x", "y"), input_size=(16, 16),
                          channels="gray", mean=(0.5,), std=(0.25,))
    generate_c(model, tmp_path / "c")
    exe = compile_driver(tmp_path / "c")
    frames = np.zeros((3, 16, 40, 3), dtype=np.uint8)  # centre square: columns 12..27
    for i, (x, y) in enumerate([(14, 3), (20, 8), (26, 12)]):
        frames[i, y - 1:y + 2, x - 1:x + 2] = 255
    gray = np.ascontiguousarray(frames[..., 0])
    got = run_driver(exe, ["predict", "40", "16", "1"], gray.tobytes(), 2)
    expected = Predictor(model, tta=None).predict(list(frames)).values
    np.testing.assert_allclose(got, expected, atol=1e-3)
    np.testing.assert_allclose(got, [[14, 3], [20, 8], [26, 12]], atol=0.05)  # the spots' centres


def test_two_models_link_into_one_firmware(model_factory, tmp_path):
    """Prefixes keep the symbols of two generated models apart."""
    first = model_factory(input_size=(16, 16))
    second = model_factory(kind="vector", targets=("a", "b"), input_size=(8, 8), channels="gray",
                           mean=(0.5,), std=(0.25,))
    generate_c(first, tmp_path / "a", prefix="model_a")
    generate_c(second, tmp_path / "b", prefix="model_b")
    main = tmp_path / "main.c"
    main.write_text(r"""
#include <stdio.h>
#include "a/model.h"
#include "b/model.h"
int main(void)
{
    static uint8_t frame[32 * 32 * 3];
    float a[MODEL_A_N_OUTPUTS], b[MODEL_B_N_OUTPUTS];
    for (int i = 0; i < 32 * 32 * 3; ++i) frame[i] = (uint8_t)(i % 251);
    if (model_a_predict_rgb888(frame, 32, 32, 96, a) || model_b_predict_gray8(frame, 32, 32, 96, b)) return 1;
    if (model_a_predict_rgb888(NULL, 32, 32, 96, a) != MODEL_A_ERR_NULL) return 1;
    if (model_b_predict_gray8(frame, 32, 32, 31, b) != MODEL_B_ERR_SIZE) return 1;
    printf("%s %.6f %s %.6f %.6f\n", model_a_output_names[0], a[0], model_b_kind, b[0], b[1]);
    return 0;
}
""")
    exe = tmp_path / "main"
    result = subprocess.run([_gcc(), *CFLAGS, "-I", str(tmp_path), str(main), str(tmp_path / "a" / "model.c"),
                             str(tmp_path / "b" / "model.c"), "-lm", "-o", str(exe)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    name, a, kind, b0, b1 = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.split()
    assert (name, kind) == ("value", "vector")
    # the "mean" test model: output j = (j + 1) * (mean of the normalized input) + j
    assert float(b1) - 1.0 == pytest.approx(2.0 * float(b0), abs=1e-4)
    assert float(a) != float(b0)  # two different networks ran
