"""`edgereg info`, `edgereg bench` and the CLI's error handling, through main(argv)."""

from __future__ import annotations

import json

import pytest

from edgereg.cli.main import main


def test_info_prints_card_and_io(model_factory, capsys):
    model = model_factory(targets=("concentration",), units=("mg/L",), range=((80.0, 350.0),))
    assert main(["info", str(model)]) == 0
    out = capsys.readouterr().out
    assert "concentration [mg/L]  range 80..350" in out and "onnx in    image" in out
    assert main(["info", str(model), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["targets"] == ["concentration"]


def test_user_errors_are_one_line_exit_2(tmp_path, capsys):
    assert main(["info", str(tmp_path / "missing.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "model file not found" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as exit_info:
        main(["info", "m.onnx", "--jsn"])
    assert exit_info.value.code == 2
    assert "did you mean '--json'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["inf0", "m.onnx"])
    assert "did you mean 'info'" in capsys.readouterr().err


def test_bench_reports_each_stage(model_factory, capsys):
    model = model_factory(input_size=(32, 32))
    assert main(["bench", str(model), "--batch", "1,4", "--repeats", "1", "--frame", "64x80"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("CPUExecutionProvider")]
    assert len(lines) == 2 and all(float(ln.split()[-1]) > 0 for ln in lines)
    with pytest.raises(SystemExit) as usage:  # refused while parsing, like infer's counts
        main(["bench", str(model), "--batch", "one"])
    assert usage.value.code == 2


def test_infer_and_info_say_when_the_int8_model_was_slower_than_fp32(model_factory, tmp_path, capsys):
    import cv2
    import numpy as np

    speed = {"measured": True, "int8_vs_fp32": {"1": 0.97, "32": 0.75}, "threads": 1, "machine": "test CPU",
             "recommended": "fp32", "note": "int8 is not faster"}
    slow = model_factory(quantization={"format": "QDQ", "speed": speed})
    fast = model_factory(quantization={"format": "QDQ", "speed": {**speed, "recommended": "int8"}})
    image = tmp_path / "one.png"
    cv2.imwrite(str(image), np.full((20, 20, 3), 128, np.uint8))
    assert main(["infer", str(slow), str(image)]) == 0
    err = capsys.readouterr().err
    assert "no faster than fp32" in err and "0.75x at batch 32" in err and "model.onnx" in err
    assert main(["info", str(slow)]) == 0
    out = capsys.readouterr().out
    assert "recommended fp32" in out and "note       this int8 model ran no faster than fp32" in out
    assert main(["infer", str(fast), str(image)]) == 0  # the card says int8, but batch 32 measured 0.75x
    assert "no faster" in capsys.readouterr().err, "batch 32 (the default) was measured slower"
    quick = model_factory(quantization={"format": "QDQ", "speed": {**speed, "recommended": "int8",
                                                                   "int8_vs_fp32": {"1": 0.9, "32": 1.4}}})
    assert main(["infer", str(quick), str(image)]) == 0
    assert "no faster" not in capsys.readouterr().err
    assert main(["infer", str(quick), str(image), "--batch", "1"]) == 0
    assert "0.90x at batch 1" in capsys.readouterr().err
