"""`edgereg infer MODEL PATH` through main(argv), and a real kill -9 followed by --resume."""

from __future__ import annotations

import csv
import functools
import io
import json
import os
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
from scoring_files import read_csv, write_images, write_resume_listing, write_slow_images

from edgereg.cli.main import main


def write_broken(folder):
    (folder / "zero.jpg").write_bytes(b"")
    (folder / "text.png").write_text("not an image")
    return [str(folder / "text.png"), str(folder / "zero.jpg")]


@pytest.fixture
def model(model_factory):
    return str(model_factory(targets=("conc",), range=((-2.0, 2.0),), units=("mg/L",)))


def test_folder_with_broken_files_exits_3_with_rows_errors_and_summary(model, tmp_path, rng, capsys):
    good = write_images(tmp_path / "imgs", rng, [f"im{i}.png" for i in range(7)])
    bad = write_broken(tmp_path / "imgs")
    out = tmp_path / "preds.csv"
    assert main(["infer", model, str(tmp_path / "imgs"), "--out", str(out), "--batch", "3"]) == 3
    rows = read_csv(out)
    assert [r["path"] for r in rows] == good  # natural order, each once
    assert list(rows[0]) == ["path", "conc", "flags"]
    errors = read_csv(tmp_path / "preds.errors.csv")
    assert sorted(r["path"] for r in errors) == bad and all(r["reason"] for r in errors)
    err = capsys.readouterr().err
    assert "scored 7, failed 2" in err and "preds.errors.csv" in err
    assert "\r" not in err  # no progress bar when stderr is not a terminal


def test_all_good_exits_0_and_prints_csv_to_stdout(model, tmp_path, rng, capsys):
    good = write_images(tmp_path / "imgs", rng, ["a.png", "b.png"])
    assert main(["infer", model, str(tmp_path / "imgs")]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["path"] for r in rows] == good and all(np.isfinite(float(r["conc"])) for r in rows)


def test_single_image_jsonl_with_tta_has_spread(model, tmp_path, rng, capsys):
    (image,) = write_images(tmp_path, rng, ["one.png"])
    assert main(["infer", model, image, "--jsonl", "--tta", "d4"]) == 0
    (record,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert set(record) == {"path", "conc", "conc_spread", "flags"} and record["conc_spread"] >= 0


def test_video_scores_every_frame(model, tmp_path, capsys):
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 30, (32, 24))
    for i in range(5):
        writer.write(np.full((24, 32, 3), 40 * i, np.uint8))
    writer.release()
    out = tmp_path / "frames.jsonl"
    assert main(["infer", model, str(video), "--out", str(out)]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["path"] for r in records] == [f"{video}#frame={i}" for i in range(5)]
    assert np.all(np.diff([r["conc"] for r in records]) > 0)  # brighter frames read higher


def test_resume_cuts_partial_line_skips_done_and_appends(model, tmp_path, rng, capsys):
    good = write_images(tmp_path / "imgs", rng, [f"im{i}.png" for i in range(6)])
    out = tmp_path / "preds.csv"
    assert main(["infer", model, str(tmp_path / "imgs"), "--out", str(out)]) == 0
    full = out.read_text()
    lines = full.splitlines(keepends=True)
    out.write_text("".join(lines[:3]) + lines[3][:5])  # 2 complete rows and half a row
    assert main(["infer", model, str(tmp_path / "imgs"), "--out", str(out)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["infer", model, str(tmp_path / "imgs"), "--out", str(out), "--resume"]) == 0
    assert "2 already in" in capsys.readouterr().err
    assert [r["path"] for r in read_csv(out)] == good
    assert out.read_text() == full  # byte for byte what an uninterrupted run writes
    assert main(["infer", model, str(tmp_path / "imgs"), "--out", str(out), "--resume", "--tta", "d4"]) == 2
    assert "columns" in capsys.readouterr().err


def test_shards_concatenate_to_the_whole(model, tmp_path, rng, capsys):
    good = write_images(tmp_path / "imgs", rng, [f"im{i}.png" for i in range(8)])
    paths = []
    for i in (1, 2, 3):
        out = tmp_path / f"part{i}.csv"
        assert main(["infer", model, str(tmp_path / "imgs"), "--out", str(out), "--shard", f"{i}/3"]) == 0
        paths += [r["path"] for r in read_csv(out)]
    assert sorted(paths) == sorted(good) and len(paths) == len(good)
    assert main(["infer", model, str(tmp_path / "imgs"), "--shard", "0/3"]) == 2
    assert "numbered from 1" in capsys.readouterr().err


def test_fail_fast_stops_at_the_first_bad_file(model, tmp_path, rng, capsys):
    write_images(tmp_path / "imgs", rng, ["a1.png", "c1.png"])
    (tmp_path / "imgs" / "b1.png").write_bytes(b"")
    out = tmp_path / "p.csv"
    assert main(["infer", model, str(tmp_path / "imgs"), "--out", str(out), "--fail-fast"]) == 3
    assert [r["path"].rsplit("/", 1)[1] for r in read_csv(out)] == ["a1.png"]
    assert "--fail-fast" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["infer", "{missing_model}", "{image}"], "model file not found"),
    (["infer", "{model}", "{missing_input}"], "input not found"),
    (["infer", "{model}"], "give either PATH"),
    (["infer", "{model}", "{image}", "--camera", "0"], "not both"),
    (["infer", "{model}", "{image}", "--smooth", "3"], "--smooth applies to --camera only"),
    (["infer", "{model}", "--camera", "0", "--resume"], "--resume applies to PATH scoring only"),
    (["infer", "{model}", "{image}", "--out", "{tmp}/p.txt"], ".csv or .jsonl"),
    (["infer", "{model}", "{image}", "--out", "{tmp}/p.csv", "--jsonl"], "--jsonl writes to stdout"),
    (["infer", "{model}", "{image}", "--resume"], "--resume needs an output file"),
    (["infer", "{model}", "{image}", "--tta", "d5"], "unknown TTA"),
])
def test_user_errors_are_one_line_and_exit_2(model, tmp_path, rng, capsys, argv, message):
    (image,) = write_images(tmp_path, rng, ["one.png"])
    values = dict(model=model, image=image, tmp=str(tmp_path), missing_model=str(tmp_path / "no.onnx"),
                  missing_input=str(tmp_path / "nothing.png"))
    assert main([a.format(**values) for a in argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_bad_numbers_are_argparse_errors(model):
    with pytest.raises(SystemExit) as exit_info:
        main(["infer", model, "x.png", "--batch", "0"])
    assert exit_info.value.code == 2


def test_help_shows_examples(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["infer", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "--resume" in out and "--camera" in out


def wait_for_rows(path, n_rows, process, timeout_s=120.0):
    """Wait until ``path`` holds at least ``n_rows`` complete data rows (the run is still going)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the run ended early with exit code {process.returncode}")
        if path.exists() and path.read_bytes().count(b"\n") - 1 >= n_rows:
            return
        time.sleep(0.05)
    raise AssertionError(f"no {n_rows} rows in {path} after {timeout_s} s")




@pytest.mark.slow
def test_kill_9_mid_run_then_resume_loses_and_duplicates_nothing(model, tmp_path, rng, capsys):
    listing = tmp_path / "list.txt"
    order, bad = write_resume_listing(tmp_path / "imgs", listing, rng, write_broken, first=20, slow=4, second=20)
    out = tmp_path / "preds.csv"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(tmp_path / "stderr.txt", "wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "edgereg", "infer", model, str(listing), "--out", str(out), "--batch", "4",
             "--decode-threads", "2"], stdout=subprocess.DEVNULL, stderr=stderr, env=env)
        try:
            wait_for_rows(out, 20, process)
            process.kill()  # SIGKILL: no cleanup, no flush, no fsync
            process.wait(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
    assert process.returncode == -9
    good = [p for p in order if p not in bad]
    before = [r["path"] for r in read_csv(out)]
    assert len(before) >= 20 and before == good[:len(before)]  # complete rows only, in order

    assert main(["infer", model, str(listing), "--out", str(out), "--resume"]) == 3
    paths = [r["path"] for r in read_csv(out)]
    assert paths == good  # every good image exactly once, in input order
    assert sorted(r["path"] for r in read_csv(tmp_path / "preds.errors.csv")) == sorted(bad)
    assert f"{len(before)} already in" in capsys.readouterr().err


@pytest.mark.slow
def test_ctrl_c_mid_run_exits_130_with_complete_rows(model, tmp_path, rng):
    """SIGINT while decoder threads decode 49 MP images: exit 130, whole rows, and no SIGABRT (the
    exit waits for a decode in progress to leave OpenCV, whose teardown under a running call aborts)."""
    folder = tmp_path / "imgs"
    first = write_images(folder, rng, [f"a{i}.png" for i in range(8)])
    slow = write_slow_images(folder, [f"slow{i}.png" for i in range(6)])
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(first + slow) + "\n")
    out = tmp_path / "preds.csv"
    process = subprocess.Popen([sys.executable, "-m", "edgereg", "infer", model, str(listing), "--out", str(out),
                                "--batch", "4"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               # Ctrl-C must reach it even when the test run itself was started with
                               # SIGINT ignored (a background job of a non-interactive shell)
                               preexec_fn=functools.partial(signal.signal, signal.SIGINT, signal.SIG_DFL))
    try:
        wait_for_rows(out, 8, process)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)  # a decoder thread still decoding must not block the exit
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130
    rows = [r["path"] for r in read_csv(out)]
    assert f"interrupted: scored {len(rows)}" in err and "--resume" in err and "Traceback" not in err
    assert len(rows) >= 8 and rows == (first + slow)[:len(rows)]


@pytest.mark.slow
def test_stdout_closed_by_its_reader_stops_quietly(model, tmp_path, rng):
    (image,) = write_images(tmp_path, rng, ["one.png"])
    listing = tmp_path / "list.txt"
    listing.write_text((image + "\n") * 4000)  # ~200 KB of rows: more than a pipe buffer holds
    process = subprocess.Popen([sys.executable, "-m", "edgereg", "infer", model, str(listing)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert process.stdout.readline().startswith(b"path,conc,flags")
        process.stdout.close()  # like `| head -1`
        err = process.stderr.read().decode()
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 141
    assert "stdout was closed" in err and "Traceback" not in err


def test_resume_of_jsonl_and_list_files_with_unicode_line_separators_in_paths(model, tmp_path, rng, capsys):
    """U+2028, U+2029 and U+0085 stand raw in JSON strings; str.splitlines would split rows at them."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    names = ["a\u2028b.png", "c\u0085d.png", "e\u2029f.png", "plain.png"]
    for name in names:
        (folder / name).write_bytes(cv2.imencode(".png", rng.integers(0, 256, (24, 20, 3), dtype=np.uint8))[1])
    out = tmp_path / "preds.jsonl"
    assert main(["infer", model, str(folder), "--out", str(out)]) == 0
    full = out.read_bytes()
    out.write_bytes(b"".join(line + b"\n" for line in full.split(b"\n")[:2]))  # the first two rows were written
    assert main(["infer", model, str(folder), "--out", str(out), "--resume"]) == 0
    assert "2 already in" in capsys.readouterr().err
    assert out.read_bytes() == full
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"imgs/{name}\n" for name in names), encoding="utf-8")
    listed = tmp_path / "listed.jsonl"
    assert main(["infer", model, str(listing), "--out", str(listed)]) == 0
    assert [json.loads(line)["path"] for line in listed.read_bytes().split(b"\n")[:-1]] == [f"imgs/{n}" for n in names]
