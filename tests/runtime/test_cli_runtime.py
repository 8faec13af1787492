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
