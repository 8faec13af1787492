"""`edgereg export` when its --out cannot take the models (defect 4 of the hostile-input campaign)."""

from __future__ import annotations

import subprocess

import pytest

from edgereg.cli.main import main


def test_export_out_that_is_a_file_is_refused_in_one_line(assay_run, tmp_path, capsys):
    (tmp_path / "file").write_text("not a folder")
    assert main(["export", str(assay_run), "--out", str(tmp_path / "file"), "--no-speed"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("edgereg: error:") == 1 and "is a file, not a folder" in err


@pytest.mark.slow
def test_export_onto_a_full_disk_exits_1_and_leaves_no_half_written_model(assay_run, tmp_path, capsys):
    import os

    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs root with mount permission for a small tmpfs")
    try:
        assert main(["export", str(assay_run), "--out", str(disk), "--no-speed"]) == 1
        err = capsys.readouterr().err
        assert "Traceback" not in err and err.count("edgereg: error:") == 1, err
        assert "no space left on device" in err and "all or nothing" in err
        assert list(disk.iterdir()) == [], "no partial model.onnx, report or temporary file"
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)
