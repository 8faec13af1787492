"""The training step's numeric format: --precision, the measured choice, bf16 runs, resume and export."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from edgereg.cli.main import main
from edgereg.errors import EdgeregError
from edgereg.training.config import TrainConfig
from edgereg.training.fitting.step import Machine, StepFormat, choose_step, detect_machine
from edgereg.training.run import load_checkpoint, load_run, load_run_dataset
from edgereg.training.trainer import train

torch.set_num_threads(1)

TINY = dict(input_size=(24, 24), threads=1, batch_size=16, epochs=3, patience=50)
NO_BF16 = Machine(False, "a fake CPU without bf16")
FAKE_BF16 = Machine(True, "a fake CPU with native bf16")


def _quiet(message: str) -> None:
    pass


def test_an_unknown_precision_is_refused_with_the_choices(assay_dir, tmp_path, capsys):
    code = main(["train", str(assay_dir), "--out", str(tmp_path / "run"), "--precision", "bf32", "--epochs", "1"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "--precision 'bf32'" in err and "auto, fp32, bf16" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "run.json").exists()
    with pytest.raises(EdgeregError, match="--precision"):
        TrainConfig(precision="fp16")


def test_without_native_bf16_auto_compares_only_fp32_layouts():
    choice = choose_step("cnn_small", "scalar", (16, 16), 3, 4, machine=NO_BF16, min_compared_pixels=0)
    assert choice.format.precision == "fp32"
    assert set(choice.work) == {"fp32, NCHW", "fp32, channels-last"}  # bf16 was never tried
    assert "a fake CPU without bf16" in choice.reason and choice.bf16_difference is None
    assert choice.seconds_per_step > 0


def test_bf16_must_match_fp32_to_be_chosen():
    matching = choose_step("cnn_small", "scalar", (16, 16), 3, 4, machine=FAKE_BF16, min_compared_pixels=0)
    assert len(matching.work) == 4 and 0 < matching.bf16_difference < 0.05
    strict = choose_step("cnn_small", "scalar", (16, 16), 3, 4, machine=FAKE_BF16, min_compared_pixels=0,
                         tolerance=0.0)
    assert strict.format.precision == "fp32" and "bf16 rejected" in strict.reason


def test_small_steps_and_given_precisions_are_not_compared():
    tiny = choose_step("cnn_small", "scalar", (16, 16), 3, 4, machine=FAKE_BF16)
    assert tiny.format == StepFormat("fp32", False) and "too small" in tiny.reason and not tiny.work
    pinned = choose_step("cnn_small", "scalar", (16, 16), 3, 4, precision="bf16", min_compared_pixels=0)
    assert pinned.format == StepFormat("bf16", True) and not pinned.work and pinned.seconds_per_step > 0
    assert choose_step("cnn_small", "scalar", (16, 16), 3, 4, precision="fp32").format == StepFormat()


def test_a_onednn_capped_at_avx2_gets_fp32(tmp_path):
    """ONEDNN_MAX_CPU_ISA=AVX2 is a CPU without bf16: auto must not pick it, whatever this CPU has."""
    code = ("from edgereg.training.fitting.step import choose_step, detect_machine\n"
            "machine = detect_machine()\n"
            "choice = choose_step('cnn_small', 'scalar', (16, 16), 3, 4, min_compared_pixels=0)\n"
            "print(machine.bf16, choice.format.precision, sorted(choice.work))\n")
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2]) + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[:2] == ["False", "fp32"] and "bf16" not in out.stdout.split("fp32", 1)[1]
    assert detect_machine().bf16 in (True, False)  # this machine: either answer, never an error


def test_a_bf16_run_trains_records_its_step_and_exports_fp32_onnx(assay_dir, tmp_path):
    import onnxruntime as ort

    run = tmp_path / "run"
    result = train(assay_dir, run, TrainConfig(**TINY, precision="bf16"), progress=False, log=_quiet)
    step = result.metrics["training"]["step"]
    assert step["precision"] == "bf16" and step["channels_last"] and "--precision bf16" in step["reason"]
    assert json.loads((run / "run.json").read_text())["step"]["precision"] == "bf16"
    assert all(np.isfinite(h["train_loss"]) for h in result.metrics["training"]["history"])
    stored = load_checkpoint(run / "checkpoint.pt")["step"]
    assert (stored["precision"], stored["channels_last"]) == ("bf16", True)

    out = tmp_path / "export"
    assert main(["export", str(run), "--out", str(out), "--intervals", "none", "--no-speed"]) == 0
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(float)" and session.get_outputs()[0].type == "tensor(float)"
    regressor, info = load_run(run)  # fp32 weights: bf16 only ever was the step's arithmetic
    assert all(p.dtype == torch.float32 for p in regressor.parameters())
    from edgereg.preprocess import preprocess_batch

    x = preprocess_batch(load_run_dataset(info).images[:8], info.preprocess)
    with torch.no_grad():
        expected = regressor(torch.from_numpy(x)).numpy()
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * float(np.abs(expected).max()))


class _Interrupted(Exception):
    pass


def _stop_at_epoch(epoch: int):
    def log(message: str) -> None:
        if message.startswith(f"epoch {epoch:>3}/"):
            raise _Interrupted  # before that epoch's checkpoint: the run stops after epoch - 1
    return log


@pytest.mark.parametrize("precision", ["bf16", "auto"])
def test_an_interrupted_run_resumes_to_exactly_the_uninterrupted_one(assay_dir, tmp_path, precision):
    config = TrainConfig(**TINY, precision=precision)
    with pytest.raises(_Interrupted):
        train(assay_dir, tmp_path / "cut", config, progress=False, log=_stop_at_epoch(2))
    assert load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["epoch"] == 1
    resumed = train(assay_dir, tmp_path / "cut", config, resume=True, progress=False, log=_quiet)
    whole = train(assay_dir, tmp_path / "whole", config, progress=False, log=_quiet)
    a, b = (load_checkpoint(d / "checkpoint.pt") for d in (tmp_path / "cut", tmp_path / "whole"))
    assert a["epoch"] == b["epoch"] == 3
    assert (a["step"]["precision"], a["step"]["channels_last"]) == (b["step"]["precision"], b["step"]["channels_last"])
    assert a["step"]["reason"].endswith("(kept on resume)")
    for key, value in b["model"].items():
        assert torch.equal(a["model"][key], value), key
    assert resumed.metrics["test"]["rmse"] == whole.metrics["test"]["rmse"]
