"""Hostile image files: bombs, FIFOs and other non-files, and OpenCV's own error text (defects 1, 2, 12)."""

from __future__ import annotations

import os
import socket

import cv2
import numpy as np
import pytest
from hostile_helpers import png_bomb, run_cli_measured, write_pngs
from scoring_files import read_csv

from edgereg.errors import DecodeError
from edgereg.preprocess import decode_image, read_image

BOMB_REASON = "too large: 30000x30000 = 900 MP > 50 MP (--max-pixels)"



@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "mkfifo") or not hasattr(os, "wait4"), reason="needs POSIX FIFOs and wait4")
def test_folder_with_a_bomb_a_fifo_a_socket_and_a_folder_named_png_scores_the_rest(tiny_model, tmp_path):
    """Defects 1 and 2: a 30000x30000 PNG of < 1 MB, a FIFO, a socket and a folder named x.png next to
    five good images: no hang, peak RSS < 1 GB, five rows, each of the four in the errors file."""
    folder = tmp_path / "photos"
    good = write_pngs(folder, 5)
    (folder / "bomb.png").write_bytes(png_bomb(30000, 30000))
    os.mkfifo(folder / "fifo.png")
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(folder / "sock.jpg"))
    (folder / "album.png").mkdir()
    out = tmp_path / "preds.csv"
    try:
        code, _, err, peak = run_cli_measured("infer", tiny_model, folder, "--out", out, timeout=60)
    finally:
        server.close()
    assert code == 3 and "Traceback" not in err, err
    assert peak < 1 << 30, f"peak RSS {peak / 2 ** 20:.0f} MiB"
    assert [row["path"] for row in read_csv(out)] == good
    reasons = {os.path.basename(row["path"]): row["reason"] for row in read_csv(tmp_path / "preds.errors.csv")}
    assert reasons == {"album.png": "is a directory, not an image", "bomb.png": BOMB_REASON,
                       "fifo.png": "not a regular file (fifo)", "sock.jpg": "not a regular file (socket)"}
    assert "scored 5, failed 4" in err and BOMB_REASON in err  # the summary quotes the first reasons


def test_size_is_read_from_the_header_before_decoding():
    """Defect 1 at the API: PNG IHDR and JPEG SOF declare the size; over --max-pixels is refused."""
    from edgereg.preprocess.decode import image_dimensions

    with pytest.raises(DecodeError, match=r"too large: 30000x30000 = 900 MP > 50 MP \(--max-pixels\)"):
        decode_image(png_bomb(30000, 30000), source="bomb.png")
    jpeg = bytearray(cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))[1].tobytes())
    sof = jpeg.index(b"\xff\xc0")
    jpeg[sof + 5:sof + 9] = (20000).to_bytes(2, "big") + (40000).to_bytes(2, "big")  # height, width
    assert image_dimensions(bytes(jpeg)) == (40000, 20000)
    with pytest.raises(DecodeError, match=r"too large: 40000x20000 = 800 MP > 50 MP"):
        decode_image(bytes(jpeg))
    small = png_bomb(3000, 2000)  # 6 MP: under a 50 MP limit, over a 5 MP one
    assert decode_image(small).shape == (2000, 3000, 3)
    with pytest.raises(DecodeError, match=r"too large: 3000x2000 = 6 MP > 5 MP"):
        decode_image(small, max_pixels=5_000_000)


def test_max_pixels_option_of_infer(tiny_model, tmp_path, capsys):
    """Defect 1 at the CLI: --max-pixels moves the limit; the reason names it."""
    from edgereg.cli.main import main

    (tmp_path / "big.png").write_bytes(png_bomb(3000, 2000))
    out = tmp_path / "p.csv"
    assert main(["infer", str(tiny_model), str(tmp_path / "big.png"), "--out", str(out), "--max-pixels", "5M"]) == 3
    assert read_csv(tmp_path / "p.errors.csv")[0]["reason"] == "too large: 3000x2000 = 6 MP > 5 MP (--max-pixels)"
    assert main(["infer", str(tiny_model), str(tmp_path / "big.png"), "--out", str(out), "--overwrite"]) == 0
    with pytest.raises(SystemExit) as usage:
        main(["infer", str(tiny_model), str(tmp_path / "big.png"), "--max-pixels", "lots"])
    assert usage.value.code == 2 and "--max-pixels: expected a pixel count like 50M" in capsys.readouterr().err


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX FIFOs")
def test_read_image_refuses_a_fifo_without_blocking(tmp_path):
    """Defect 2 at the API: opening a FIFO with no writer would block forever."""
    os.mkfifo(tmp_path / "x.png")
    with pytest.raises(DecodeError, match=r"not a regular file \(fifo\)"):
        read_image(tmp_path / "x.png")
    with pytest.raises(DecodeError, match="is a directory"):
        read_image(tmp_path)


def test_opencv_errors_are_sentences_not_assertion_text(tiny_model, tmp_path, capsys):
    """Defect 12: OpenCV's own exceptions (assertion text, source file and line) never reach the user."""
    from edgereg.preprocess.decode import explain_cv2_error

    try:
        cv2.imdecode(np.zeros(0, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as exc:
        raw = exc
    else:  # an OpenCV that returns None for an empty buffer: build the exception it would raise
        raw = cv2.error("OpenCV(4.x) loadsave.cpp:1: error: (-215:Assertion failed) !buf.empty() "
                        "in function 'imdecode_'")
    assert explain_cv2_error(raw) == "empty file (0 bytes)"
    unknown = cv2.error("OpenCV(5.0.0) /io/opencv/x.cpp:9: error: (-215:Assertion failed) cn <= 4 in function 'f'")
    assert "Assertion" not in explain_cv2_error(unknown) and "cpp" not in explain_cv2_error(unknown)
    # the reason a scored file gets: whatever failed inside OpenCV, a sentence
    from edgereg.batch.failures import failure_reason

    assert failure_reason(unknown, "x.png") == explain_cv2_error(unknown)
