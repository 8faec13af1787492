"""Lab flags, calibration and intervals after the network, on a synthetic grid of readings: the
Python runtime (LabReadout, Predictor) and the generated C code must agree on every reading.

The card used throughout (numbers chosen so each flag has a known region of the grid):
* calibration: reference = 10 + 5 x, standards spanning 2..18 (so x outside -1.6..1.6 extrapolates);
* validation: LoB 3, LoD 4, LoQ 6, working range 6..16 (x < -1.4, -1.2, -0.8, -0.8; x > 1.2);
* intervals: difficulty 1 + 0.5 x on -2..2 with floor 0.1, median 1, wide factor 1.5 (wide for x > 1),
  quantiles 2 below and 1.5 above at 90 %.
"""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
from lab_cards import T_90, lab_sections

from edgereg.core.card import ModelCard
from edgereg.lab.readout import LAB_FLAGS, LabReadout


def lab_fields(**changes) -> dict:
    """The card's fields (for ``model_factory``)."""
    fields = dict(kind="scalar", targets=("conc",), input_size=(16, 16), crop="none", units=("mg/L",), **lab_sections())
    fields.update(changes)
    return fields


def lab_card(**changes) -> ModelCard:
    return ModelCard(**lab_fields(**changes))


GRID = np.round(np.arange(-2.2, 2.21, 0.1), 10)[:, None]  # (45, 1) network readings


def expected_flags(x: float) -> tuple[str, ...]:
    """The flags of reading x, from the regions stated in the module docstring."""
    y = 10 + 5 * x
    rules = {"below_lob": y < 3, "below_lod": y < 4, "below_loq": y < 6, "below_range": y < 6, "above_range": y > 16,
             "extrapolated": y < 2 or y > 18, "uncalibrated": False, "interval_wide": 1 + 0.5 * min(x, 2.0) > 1.5}
    return tuple(name for name in LAB_FLAGS if rules[name])


def test_every_flag_on_a_grid_of_readings():
    result = LabReadout(lab_card(), confidence=0.9).process(GRID, None)
    assert [expected_flags(x) for x in GRID[:, 0]] == result.flags
    seen = {flag for flags in result.flags for flag in flags}
    assert seen == set(LAB_FLAGS) - {"uncalibrated"}
    by_x = dict(zip(GRID[:, 0].tolist(), result.flags))
    assert by_x[-2.0] == ("below_lob", "below_lod", "below_loq", "below_range", "extrapolated")
    assert by_x[0.0] == ()
    assert by_x[1.4] == ("above_range", "interval_wide")


def test_calibration_maps_values_and_widens_intervals_by_its_own_uncertainty():
    x = np.array([[0.0], [1.0]])
    result = LabReadout(lab_card(), confidence=0.9).process(x, None)
    np.testing.assert_allclose(result.values[:, 0], [10.0, 15.0])
    np.testing.assert_allclose(result.raw[:, 0], [0.0, 1.0])
    sigma = np.array([1.0, 1.5])  # 1 + 0.5 x
    curve_se = np.sqrt(0.01 + 0.0025 * x[:, 0] ** 2)
    for side, q in ((result.values[:, 0] - result.lo[:, 0], 2.0), (result.hi[:, 0] - result.values[:, 0], 1.5)):
        expected = np.sqrt((5 * q * sigma) ** 2 + (T_90 * curve_se) ** 2)  # through slope 5, in quadrature
        np.testing.assert_allclose(side, expected, rtol=1e-12)


def test_uncalibrated_readings_are_flagged_and_limits_left_alone():
    readout = LabReadout(lab_card(), confidence=0.9, calibrate=False)
    result = readout.process(GRID, None)
    assert result.raw is None and np.array_equal(result.values, GRID)
    assert all("uncalibrated" in flags and "below_lob" not in flags for flags in result.flags)
    assert any("validation limits" in note for note in readout.notes)


def test_limits_of_another_calibration_are_not_applied():
    readout = LabReadout(lab_card(validation=lab_sections(calibration_id="older")["validation"]), confidence=0.9)
    assert readout.validation is None and "older" in readout.notes[0]
    assert not any("below_lob" in flags for flags in readout.process(GRID, None).flags)


def test_a_model_without_lab_sections_has_no_flags_and_no_bounds():
    readout = LabReadout(ModelCard(kind="scalar", targets=("conc",), input_size=(16, 16)), confidence=0.9)
    result = readout.process(GRID, None)
    assert result.lo is None and result.flags == [()] * len(GRID) and not readout.has_intervals


def test_predictor_returns_bounds_flags_and_raw_readings(model_factory):
    """Uniform gray frames: the test model reads (g / 255 - 0.5) / 0.25 = 4 g / 255 - 2."""
    from edgereg import Predictor

    model = model_factory(**lab_fields())
    grays = np.array([0, 70, 128, 230, 255])
    frames = [np.full((16, 16, 3), g, np.uint8) for g in grays]
    result = Predictor(model, confidence=0.9).predict(frames)
    raw = 4 * grays / 255 - 2
    np.testing.assert_allclose(result.raw[:, 0], raw, atol=1e-5)
    np.testing.assert_allclose(result.values[:, 0], 10 + 5 * raw, atol=1e-4)
    assert result.flags == [expected_flags(x) for x in raw] and result.confidence == 0.9
    rows = list(result.rows())
    assert list(rows[0]) == ["conc", "conc_lo", "conc_hi"] and rows[2]["conc_lo"] < rows[2]["conc"] < rows[2]["conc_hi"]
    wider = Predictor(model, confidence=0.95).predict(frames)
    assert np.all(wider.hi - wider.lo > result.hi - result.lo)
    assert Predictor(model, confidence=None).predict(frames).lo is None


C_DRIVER = r"""
#include <stdio.h>
#include "model.h"
int main(void)
{
    float raw[1];
    struct edgereg_model_reading r;
    while (scanf("%f", &raw[0]) == 1) {
        const int status = edgereg_model_postprocess(raw, NULL, 0.9f, &r);
        if (status != EDGEREG_MODEL_OK) {
            return 1;
        }
        printf("%.9g %.9g %.9g %u\n", r.value[0], r.lo[0], r.hi[0], r.flags);
    }
    if (EDGEREG_MODEL_HAS_INTERVALS
        && edgereg_model_postprocess(raw, NULL, 0.85f, &r) != EDGEREG_MODEL_ERR_CONFIDENCE) {
        return 2;
    }
    return 0;
}
"""

ISOTONIC = {"id": "cal-iso", "date": "2026-11-30T10:00:00Z", "targets": {"conc": {
    "fit": "isotonic", "coef": [0, 0, 0], "cov": None, "knots": [[-1.5, 0.0, 0.5, 1.5], [1.0, 8.0, 9.0, 20.0]],
    "residual_sd": 0.2, "n_eff": 3.0, "dof": 5, "t": {"0.5": 0.7, "0.8": 1.5, "0.9": 2.0, "0.95": 2.6, "0.99": 4.0},
    "reference_range": [1.0, 20.0]}}}


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["full", "plain", "intervals only", "isotonic without intervals", "isotonic"])
def test_c_postprocess_matches_the_python_runtime_on_the_grid(variant, model_factory, tmp_path):
    pytest.importorskip("onnx")
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is not installed")
    from edgereg.export.c.codegen import generate_c

    fields = {"full": lab_fields(), "plain": lab_fields(intervals={}, calibration={}, validation={}),
              "intervals only": lab_fields(calibration={}, validation={}),
              "isotonic without intervals": lab_fields(intervals={}, calibration=ISOTONIC, validation={}),
              "isotonic": lab_fields(calibration=ISOTONIC, validation={})}[variant]
    card = ModelCard(**fields)
    generate_c(model_factory(**fields), tmp_path / "c")
    (tmp_path / "c" / "driver.c").write_text(C_DRIVER)
    exe = tmp_path / "driver"
    build = subprocess.run([gcc, "-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-pedantic",
                            "-I", str(tmp_path / "c"),
                            str(tmp_path / "c" / "driver.c"), str(tmp_path / "c" / "model.c"), "-lm", "-o", str(exe)],
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-3000:]
    grid = GRID.astype(np.float32)  # C reads float32 network outputs
    run = subprocess.run([str(exe)], input="\n".join(f"{v:.9g}" for v in grid[:, 0]), capture_output=True, text=True)
    assert run.returncode == 0
    got = np.array([line.split() for line in run.stdout.splitlines()], dtype=np.float64)  # (45, 4)
    python = LabReadout(card, confidence=0.9).process(grid.astype(np.float64), None)
    np.testing.assert_allclose(got[:, 0], python.values[:, 0], rtol=1e-6, atol=1e-6)
    if python.lo is None:
        assert np.isnan(got[:, 1:3]).all()
    else:
        np.testing.assert_allclose(got[:, 1], python.lo[:, 0], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(got[:, 2], python.hi[:, 0], rtol=1e-6, atol=1e-6)
    bits = [sum(1 << LAB_FLAGS.index(f) for f in flags) for flags in python.flags]
    assert got[:, 3].astype(int).tolist() == bits


def test_the_http_api_returns_the_bounds_and_lab_flags_folder_scoring_writes(model_factory, tmp_path):
    """/api/predict on a calibrated, validated model with intervals: the same value, lo, hi and
    flags as `edgereg infer` writes for the same files (two requests batched together included)."""
    pytest.importorskip("starlette")
    import csv

    import cv2
    from starlette.testclient import TestClient

    from edgereg import Predictor
    from edgereg.cli.main import main
    from edgereg.serve.app import create_app

    model = model_factory(**lab_fields())
    folder = tmp_path / "photos"
    folder.mkdir()
    for gray in (0, 70, 230):
        cv2.imwrite(str(folder / f"g{gray:03d}.png"), np.full((16, 16, 3), gray, np.uint8))
    assert main(["infer", str(model), str(folder), "--out", str(tmp_path / "rows.csv")]) == 0
    with open(tmp_path / "rows.csv", newline="") as handle:
        written = {row["path"].rsplit("/", 1)[-1]: row for row in csv.DictReader(handle)}
    files = [("image", (path.name, path.read_bytes(), "image/png")) for path in sorted(folder.iterdir())]
    app = create_app(Predictor(model, confidence=0.9))
    with TestClient(app, base_url="http://127.0.0.1") as client:  # a Host it answers
        readings = client.post("/api/predict", files=files).json()["readings"]
    assert [r["name"] for r in readings] == sorted(written)
    flagged = 0
    for reading in readings:
        row = written[reading["name"]]
        for field, column in (("value", "conc"), ("lo", "conc_lo"), ("hi", "conc_hi")):
            assert reading[field]["conc"] == pytest.approx(float(row[column]), rel=1e-6), (reading["name"], field)
        assert ";".join(reading["flags"]) == row["flags"]
        flagged += bool(reading["flags"])
    assert flagged >= 2  # gray 0 reads below the blank's limit, gray 230 above the validated range
