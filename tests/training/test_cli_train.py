"""`edgereg train` and `edgereg lr-find` through the CLI, including a run killed with SIGKILL and resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from edgereg.cli.main import main
from edgereg.training.run import load_checkpoint

torch.set_num_threads(1)

FAST = ["--size", "24", "--threads", "1", "--batch-size", "16"]


def _env() -> dict:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[name] = "1"
    return env


def test_train_prints_the_decisions_and_ends_with_what_to_look_at(assay_dir, tmp_path, capsys):
    run = tmp_path / "run"
    code = main(["train", str(assay_dir), "--out", str(run), "--model", "cnn_small", "--epochs", "2", "--lr", "auto",
                 "--units", "mg/L",
                 "--range", "80,350", "--quiet", *FAST])
    out = capsys.readouterr().out
    assert code == 0
    assert "concentration" in out and "mg/L" in out and "baselines on" in out
    look_at = [line for line in out.splitlines() if line.startswith("look at:")]
    assert look_at and str(run / "report.png") in look_at[0]
    assert out.rstrip().splitlines()[-1].startswith(("look at:", "WARNING:"))  # the summary ends with these
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "done" and record["range"] == [[80.0, 350.0]] and record["units"] == ["mg/L"]
    assert (run / "lr_find.png").is_file() and record["lr"] == json.loads((run / "lr_find.json").read_text())[
        "suggestion"]


def test_train_prints_the_inferred_kind_and_its_reason(gravel_dir, tmp_path, capsys):
    code = main(["train", str(gravel_dir), "--out", str(tmp_path / "run"), "--epochs", "1", *FAST])
    out = capsys.readouterr().out
    assert code == 0 and "kind: distribution (" in out and "validation: 12 groups" in out
    assert "input size: " in out and "crop: " in out


@pytest.mark.parametrize("extra, fragment", [
    (["--range", "80"], "--range takes 2"),
    (["--lr", "fast"], "--lr takes a number"),
    (["--augment", "auto,nois=0.1"], "did you mean 'noise'"),
    (["--size", "3x3"], "--size takes"),
    (["--model", "cnn_smal"], "did you mean 'cnn_small'"),
    (["--loss", "soft_ce"], "does not fit kind 'scalar'"),
    (["--targets", "concentraton"], "did you mean 'concentration'"),
])
def test_user_mistakes_exit_2_with_one_line_and_leave_no_run(assay_dir, tmp_path, capsys, extra, fragment):
    code = main(["train", str(assay_dir), "--out", str(tmp_path / "run"), "--epochs", "1", *FAST, *extra])
    err = capsys.readouterr().err
    assert code == 2
    assert fragment in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run" / "run.json").exists()  # fixing the flag needs no new --out


def test_a_mistyped_option_gets_a_did_you_mean(assay_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(assay_dir), "--out", str(tmp_path / "run"), "--time-budjet", "2"])
    assert exit_info.value.code == 2 and "did you mean '--time-budget'" in capsys.readouterr().err


def test_lr_find_writes_its_plot_and_prints_a_suggestion(assay_dir, tmp_path, capsys):
    plot = tmp_path / "lr.png"
    code = main(["lr-find", str(assay_dir), "--out", str(plot), "--steps", "30", *FAST])
    out = capsys.readouterr().out
    assert code == 0 and plot.read_bytes()[:4] == b"\x89PNG"
    assert "suggested learning rate:" in out and f"look at: {plot}" in out


def test_a_run_killed_with_sigkill_resumes_to_exactly_the_uninterrupted_result(assay_dir, tmp_path):
    args = ["train", str(assay_dir), "--epochs", "20", "--patience", "100", "--quiet", *FAST]
    killed = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-m", "edgereg.cli.main", *args, "--out", str(killed)],
                               env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    while not (killed / "checkpoint.pt").exists():
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    process.stderr.close()
    assert process.returncode == -signal.SIGKILL
    interrupted_at = load_checkpoint(killed / "checkpoint.pt")["epoch"]
    assert interrupted_at < 20 and json.loads((killed / "run.json").read_text())["status"] == "training"

    assert main([*args, "--out", str(killed), "--resume"]) == 0
    assert main([*args, "--out", str(tmp_path / "whole")]) == 0

    resumed = load_checkpoint(killed / "checkpoint.pt")
    whole = load_checkpoint(tmp_path / "whole" / "checkpoint.pt")
    assert resumed["epoch"] == whole["epoch"] == 20
    for key, value in whole["model"].items():
        assert torch.equal(resumed["model"][key], value), key
    drop_time = [{k: v for k, v in h.items() if k != "seconds"} for h in whole["history"]]
    assert [{k: v for k, v in h.items() if k != "seconds"} for h in resumed["history"]] == drop_time
    metrics = [json.loads((d / "metrics.json").read_text()) for d in (killed, tmp_path / "whole")]
    assert metrics[0]["test"]["rmse"] == metrics[1]["test"]["rmse"]
