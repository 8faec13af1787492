"""Hostile command lines: bench arguments, --card, providers, video quality, the README's back-off,
and the CPU shown with the numbers (defects 8, 10, 11, 13, 14; part 1 of the campaign)."""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from hostile_helpers import assert_one_line_error, run_cli
from scoring_files import read_csv

from edgereg.cli.main import main

ROOT = Path(__file__).resolve().parents[2]



# ------------------------------------------------------------------------------ defect 8: bench


@pytest.mark.parametrize("args, expected", [
    (["--repeats", "0"], "--repeats: expected an integer in 1..10000, got 0"),
    (["--frame", "0x0"], "--frame: expected HxW with positive integers"),
    (["--frame", "100000x100000"], "too large: 100000x100000 = 10000 MP > 50 MP (--max-pixels)"),
    (["--batch", "-1"], "--batch: expected batch sizes 1..4096"),
    (["--batch", "8,0"], "--batch: expected batch sizes 1..4096"),
    (["--threads", "-1"], "--threads: expected an integer in 1..256, got -1"),
    (["--batch", "4096", "--frame", "2000x2000"], "GiB of decoded frames (at most 1 GiB)"),
])
def test_bench_refuses_bad_arguments_like_infer(tiny_model, args, expected, capsys):
    try:
        code = main(["bench", str(tiny_model), *args])
    except SystemExit as usage:  # argparse's own refusal
        code = usage.code
    captured = capsys.readouterr()
    assert code == 2, captured.err
    assert_one_line_error(captured.err, expected)
    assert "images/s" not in captured.out


@pytest.mark.slow
def test_bench_repeats_0_and_a_huge_frame_exit_2_without_traceback(tiny_model):
    """The two that crashed, as a user runs them (a process of its own)."""
    for args in (["--repeats", "0"], ["--frame", "100000x100000"]):
        result = run_cli("bench", tiny_model, *args)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr


def test_bench_prints_the_cpu_and_positive_rates(tiny_model, capsys):
    assert main(["bench", str(tiny_model), "--batch", "1,2", "--frame", "48x64", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    from edgereg.core.platform_info import isa_level

    assert f", {isa_level()}" in out and "onnxruntime" in out
    rates = [float(line.split()[-1]) for line in out.splitlines() if line.startswith("CPUExecutionProvider")]
    assert len(rates) == 2 and min(rates) > 0


# ------------------------------------------------------------------------------ part 1: the CPU


def test_info_shows_the_instruction_set_level(tiny_model, capsys):
    from edgereg.core.platform_info import cpu_info, isa_level

    level = isa_level()
    assert level in {"AMX", "AVX-512 VNNI", "AVX-VNNI", "AVX-512", "AVX2", "AVX", "SSE4.1", "ARM i8mm",
                     "ARM dotprod", "ARM NEON", "unknown"}
    assert cpu_info().levels[:1] in ((level,), ())
    assert main(["info", str(tiny_model)]) == 0
    runtime = [line for line in capsys.readouterr().out.splitlines() if line.startswith("runtime")]
    assert len(runtime) == 1 and level in runtime[0] and re.search(r"onnxruntime \d", runtime[0])


# ------------------------------------------------------------------------------ defect 10: --card


def test_card_option_runs_a_model_without_an_embedded_card(tiny_model, tmp_path, capsys):
    import onnx

    assert main(["info", str(tiny_model), "--json"]) == 0
    (tmp_path / "card.json").write_text(capsys.readouterr().out)
    bare = onnx.load(str(tiny_model))
    del bare.metadata_props[:]
    onnx.save(bare, str(tmp_path / "bare.onnx"))
    cv2.imwrite(str(tmp_path / "a.png"), np.full((20, 20, 3), 128, np.uint8))
    (tmp_path / "labels.csv").write_text("path,conc\na.png,0.0\n")

    assert main(["infer", str(tmp_path / "bare.onnx"), str(tmp_path / "a.png")]) == 2
    assert_one_line_error(capsys.readouterr().err, "no edgereg model card", "--card CARD.json")
    card = ["--card", str(tmp_path / "card.json")]
    assert main(["infer", str(tmp_path / "bare.onnx"), str(tmp_path / "a.png"), *card]) == 0
    assert main(["info", str(tmp_path / "bare.onnx"), *card]) == 0
    assert main(["eval", str(tmp_path / "bare.onnx"), str(tmp_path), "--out", str(tmp_path / "e"), *card]) == 0
    assert main(["bench", str(tmp_path / "bare.onnx"), "--batch", "1", "--frame", "32x32", "--repeats", "1",
                 *card]) == 0
    capsys.readouterr()
    assert main(["infer", str(tmp_path / "bare.onnx"), str(tmp_path / "a.png"), "--card", "nope.json"]) == 2
    assert_one_line_error(capsys.readouterr().err, "card file not found: 'nope.json'")


# ------------------------------------------------------------------------------ defect 11: providers


def test_a_gpu_provider_missing_from_the_build_says_how_to_get_it(tiny_model, capsys):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    assert main(["infer", str(tiny_model), str(tiny_model), "--providers", "cuda"]) == 2
    line = assert_one_line_error(capsys.readouterr().err, "pip install 'edgereg[gpu]'", "CPUExecutionProvider")
    assert "did you mean" not in line
    assert main(["infer", str(tiny_model), str(tiny_model), "--providers", "cdua"]) == 2
    assert_one_line_error(capsys.readouterr().err, "unknown execution provider 'cdua'", "did you mean 'cuda'?")


# ------------------------------------------------------------------------------ defect 13: video


def write_video(path: Path) -> list[str]:
    """12 frames: 4 sharp ones, 3 black, then 5 copies of one frame; returns the expected quality flag
    of each (the fourth identical frame is the first 'frozen' one)."""
    rng = np.random.default_rng(3)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    if not writer.isOpened():
        pytest.skip("this OpenCV cannot write an MJPG video")
    sharp = [cv2.GaussianBlur(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8), (3, 3), 0) for _ in range(5)]
    frames = sharp[:4] + [np.zeros((48, 64, 3), np.uint8)] * 3 + [sharp[4]] * 5
    for frame in frames:
        writer.write(frame)
    writer.release()
    return ["", "", "", "", "black", "black", "black", "", "", "", "frozen", "frozen"]


def test_video_frames_pass_the_quality_gate_flagged_or_withheld(other_model, tmp_path, capsys):
    tiny_model = other_model  # range -3..3: black frames (-2) read inside it, so only quality flags show
    expected = write_video(tmp_path / "run.avi")
    out = tmp_path / "frames.csv"
    assert main(["infer", str(tiny_model), str(tmp_path / "run.avi"), "--out", str(out)]) == 0
    rows = read_csv(out)
    assert [row["flags"] for row in rows] == expected
    assert all(row["conc"] for row in rows), "flagged frames keep their reading"
    assert "quality gate: 3 black, 2 frozen (flagged)" in capsys.readouterr().err

    assert main(["infer", str(tiny_model), str(tmp_path / "run.avi"), "--out", str(out), "--overwrite",
                 "--gate"]) == 0
    rows = read_csv(out)
    assert len(rows) == 12, "a withheld frame still has its row: nothing goes missing"
    for row, flag in zip(rows, expected):
        assert (row["conc"] == "") == bool(flag)
        assert row["flags"] == (f"{flag};withheld" if flag else "")
    assert main(["infer", str(tiny_model), str(tmp_path / "run.avi"), "--out", str(out), "--overwrite",
                 "--no-quality-gate"]) == 0
    assert all(row["flags"] == "" for row in read_csv(out))


# ------------------------------------------------------------------------------ defect 14: README


def test_readme_states_the_camera_back_off_the_code_uses():
    from edgereg.live.loop import LiveConfig

    config = LiveConfig()
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"back-off \(([\d.]+) s doubling to ([\d.]+) s\)", readme)
    assert match, "the README states the camera back-off as '(X s doubling to Y s)'"
    assert (float(match.group(1)), float(match.group(2))) == (config.retry_initial_s, config.retry_max_s)
