"""Hostile outputs: --resume with another model, and outputs that cannot be written (defects 3, 4)."""

from __future__ import annotations

import hashlib
import json
import os

import pytest
from hostile_helpers import assert_one_line_error, read_only_dir, small_tmpfs, write_pngs
from scoring_files import read_csv

from edgereg.cli.main import main


def first_rows(path, n):
    """Cut a CSV output to its header and ``n`` rows, like a run killed after n rows."""
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:n + 1]))


# ------------------------------------------------------------------------------ defect 3: resume


def test_resume_with_another_model_or_tta_is_refused_naming_both(tiny_model, other_model, tmp_path, capsys):
    photos = write_pngs(tmp_path / "photos", 5)
    out = tmp_path / "preds.csv"
    assert main(["infer", str(tiny_model), str(tmp_path / "photos"), "--out", str(out)]) == 0
    meta = json.loads((tmp_path / "preds.csv.meta.json").read_text())
    assert meta["model_sha256"] == hashlib.sha256(tiny_model.read_bytes()).hexdigest()
    assert meta["model_name"] == tiny_model.name and meta["tta"] == "none"
    assert meta["columns"] == ["path", "conc", "flags"] and meta["edgereg_version"]
    first_rows(out, 3)
    kept = out.read_bytes()
    capsys.readouterr()

    assert main(["infer", str(other_model), str(tmp_path / "photos"), "--out", str(out), "--resume"]) == 2
    line = assert_one_line_error(capsys.readouterr().err, tiny_model.name, other_model.name, "the model")
    assert hashlib.sha256(tiny_model.read_bytes()).hexdigest()[:12] in line
    assert main(["infer", str(tiny_model), str(tmp_path / "photos"), "--out", str(out), "--resume",
                 "--tta", "d4"]) == 2
    assert_one_line_error(capsys.readouterr().err, "tta none", "tta d4", "the TTA")
    assert out.read_bytes() == kept, "a refused resume must not touch the rows"

    assert main(["infer", str(tiny_model), str(tmp_path / "photos"), "--out", str(out), "--resume"]) == 0
    assert [row["path"] for row in read_csv(out)] == photos  # the same model finishes it


def test_resume_of_rows_without_a_record_of_their_model_is_refused(tiny_model, tmp_path, capsys):
    write_pngs(tmp_path / "photos", 2)
    out = tmp_path / "preds.csv"
    out.write_text("path,conc,flags\nsomewhere/else.png,1.5,\n")  # written by an older edgereg or by hand
    assert main(["infer", str(tiny_model), str(tmp_path / "photos"), "--out", str(out), "--resume"]) == 2
    assert_one_line_error(capsys.readouterr().err, "preds.csv.meta.json is missing", "--overwrite")
    assert main(["infer", str(tiny_model), str(tmp_path / "photos"), "--out", str(out), "--overwrite"]) == 0


# ------------------------------------------------------------------------------ defect 4: unwritable


def test_infer_out_with_a_missing_folder_or_a_folder_in_the_way(tiny_model, tmp_path, capsys):
    write_pngs(tmp_path / "photos", 2)
    assert main(["infer", str(tiny_model), str(tmp_path / "photos"), "--out", str(tmp_path / "no" / "p.csv")]) == 2
    assert_one_line_error(capsys.readouterr().err, "does not exist", "mkdir -p")
    (tmp_path / "taken.csv").mkdir()
    assert main(["infer", str(tiny_model), str(tmp_path / "photos"), "--out", str(tmp_path / "taken.csv")]) == 2
    assert_one_line_error(capsys.readouterr().err, "a folder is in the way")
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix != ".onnx") == ["photos", "taken.csv"], \
        "nothing half-written"


def test_infer_eval_train_refuse_a_read_only_folder_in_one_line(tiny_model, tmp_path, capsys):
    write_pngs(tmp_path / "photos", 2)
    (tmp_path / "photos" / "labels.csv").write_text("path,conc\nimg0.png,0.5\nimg1.png,0.7\n")
    with read_only_dir(tmp_path / "ro") as ro:
        assert main(["infer", str(tiny_model), str(tmp_path / "photos"), "--out", str(ro / "p.csv")]) == 2
        assert_one_line_error(capsys.readouterr().err, "cannot write", "choose another --out")
        assert main(["eval", str(tiny_model), str(tmp_path / "photos"), "--out", str(ro / "eval")]) == 2
        assert_one_line_error(capsys.readouterr().err, "cannot write", "--out")
        pytest.importorskip("torch")
        assert main(["train", str(tmp_path / "photos"), "--out", str(ro / "run"), "--epochs", "1"]) == 2
        assert_one_line_error(capsys.readouterr().err, "cannot write", "--out")
        assert list(ro.iterdir()) == []


def test_eval_and_train_with_a_file_in_the_way_of_out(tiny_model, tmp_path, capsys):
    write_pngs(tmp_path / "photos", 2)
    (tmp_path / "photos" / "labels.csv").write_text("path,conc\nimg0.png,0.5\nimg1.png,0.7\n")
    (tmp_path / "file").write_text("not a folder")
    assert main(["eval", str(tiny_model), str(tmp_path / "photos"), "--out", str(tmp_path / "file" / "e")]) == 2
    assert_one_line_error(capsys.readouterr().err, "is a file, not a folder")
    pytest.importorskip("torch")
    assert main(["train", str(tmp_path / "photos"), "--out", str(tmp_path / "file" / "run"), "--epochs", "1"]) == 2
    assert_one_line_error(capsys.readouterr().err, "cannot write", "a file is in the way")


def test_disk_full_mid_run_keeps_whole_rows_exits_1_and_resume_finishes(tiny_model, tmp_path, capsys):
    """A 16 KiB tmpfs fills after a few dozen rows: exit 1, one line, every row kept whole, and
    --resume completes the output once there is room."""
    photos = tmp_path / "photos"
    (source,) = write_pngs(tmp_path / "one", 1)
    photos.mkdir()
    names = [f"{'long-name-' * 15}{i:03d}.png" for i in range(150)]  # ~170-byte rows
    for name in names:
        os.symlink(source, photos / name)
    with small_tmpfs(tmp_path / "disk", "16k") as disk:
        out = disk / "preds.csv"
        assert main(["infer", str(tiny_model), str(photos), "--out", str(out), "--batch", "4"]) == 1
        assert_one_line_error(capsys.readouterr().err, "no space left on device", "--resume")
        data = out.read_bytes()
        assert data.endswith(b"\n"), "the last row must be whole"
        rows = read_csv(out)
        assert 0 < len(rows) < len(names) and all(row["conc"] and row["flags"] == "" for row in rows)
        assert [os.path.basename(row["path"]) for row in rows] == names[:len(rows)]
        assert not [p for p in disk.iterdir() if p.name.endswith(".tmp")]
        os.system(f"mount -o remount,size=1m '{disk}'")
        assert main(["infer", str(tiny_model), str(photos), "--out", str(out), "--resume"]) == 0
        assert [os.path.basename(row["path"]) for row in read_csv(out)] == names


def test_output_error_is_typed(tmp_path):
    from edgereg.errors import OutputError
    from edgereg.files import atomic_write

    with pytest.raises(OutputError, match="does not exist"):
        atomic_write(tmp_path / "missing" / "x.json", b"{}")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX FIFOs")
def test_a_fifo_as_out_or_card_is_refused_instead_of_blocking(tiny_model, tmp_path, capsys):
    """Found by the CLI fuzzing: opening a FIFO to write rows, or to read a card, blocked forever."""
    write_pngs(tmp_path / "photos", 1)
    os.mkfifo(tmp_path / "rows.csv")
    assert main(["infer", str(tiny_model), str(tmp_path / "photos"), "--out", str(tmp_path / "rows.csv")]) == 2
    assert_one_line_error(capsys.readouterr().err, "not a regular file (fifo)", "stdout")
    os.mkfifo(tmp_path / "card.json")
    assert main(["info", str(tiny_model), "--card", str(tmp_path / "card.json")]) == 2
    assert_one_line_error(capsys.readouterr().err, "not a regular file (fifo)")
