"""Fuzz: labels.csv (random headers and rows, encodings, delimiters, BOM, CRLF) through load_dataset."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from fuzz_helpers import assert_one_line, bounded, fuzz_settings
from hypothesis import given
from hypothesis import strategies as st

from edgereg.data.dataset import load_dataset
from edgereg.errors import EdgeregError
from edgereg.preprocess import PreprocessConfig

CONFIG = PreprocessConfig(input_size=(16, 16), crop="center")
COLUMNS = ["path", "conc", "x", "y", "p_x", "p_y", "group", "angle", "b1", "b2", "b3", "", "path", "Conc", "é"]
PATHS = ["a.png", "b.png", "c.jpg", "./a.png", "sub/../b.png", "missing.png", "../outside.png", "/etc/passwd",
         "sub", "notes.txt", "", " a.png ", "A.PNG", "a.png\nb.png", "link.png", "fifo.png"]
CELLS = ["1", "0", "-1", "0.5", "0.25", "1e308", "-1e308", "1e-320", "nan", "inf", "-inf", "", " 2 ", "x", "1,5",
         "0x10", "１", "g1", "g2", '"3"']


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Images to point at (two PNGs, a JPEG), a text file, a sub-folder, a symlink, a FIFO."""
    root = tmp_path_factory.mktemp("labels_fuzz")
    rng = np.random.default_rng(0)
    cv2.imwrite(str(root / "a.png"), rng.integers(0, 256, (20, 24, 3), dtype=np.uint8))
    cv2.imwrite(str(root / "b.png"), rng.integers(0, 256, (18, 18), dtype=np.uint8))
    cv2.imwrite(str(root / "c.jpg"), rng.integers(0, 256, (30, 20, 3), dtype=np.uint8))
    cv2.imwrite(str(root.parent / "outside.png"), rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    (root / "notes.txt").write_text("not an image")
    (root / "sub").mkdir()
    (root / "link.png").symlink_to(root / "a.png")
    if hasattr(__import__("os"), "mkfifo"):
        __import__("os").mkfifo(root / "fifo.png")
    return root


@st.composite
def labels_csv(draw) -> bytes:
    header = draw(st.lists(st.sampled_from(COLUMNS), min_size=0, max_size=5))
    if draw(st.integers(0, 3)):  # usually a plausible header
        header = ["path", *[c for c in header if c != "path"]] or ["path", "conc"]
    rows = []
    for _ in range(draw(st.integers(0, 8))):
        width = len(header) + draw(st.sampled_from([0, 0, 0, -1, 1]))
        rows.append([draw(st.sampled_from(PATHS))] + [draw(st.sampled_from(CELLS)) for _ in range(max(0, width - 1))])
    delimiter = draw(st.sampled_from([",", ",", ";", "\t"]))
    newline = draw(st.sampled_from(["\n", "\r\n", "\r"]))

    def cell(text):
        if draw(st.integers(0, 5)) == 0 or any(ch in text for ch in (delimiter, '"', "\n")):
            return '"' + text.replace('"', '""') + '"'
        return text

    text = newline.join(delimiter.join(cell(c) for c in row) for row in [header, *rows]) + newline
    encoding = draw(st.sampled_from(["utf-8", "utf-8", "utf-8-sig", "latin-1", "utf-16"]))
    data = text.encode(encoding, errors="replace")
    if draw(st.integers(0, 9)) == 0:
        data += draw(st.binary(max_size=16))
    return data


@fuzz_settings(max_examples=150)
@given(data=labels_csv())
def test_any_labels_csv_gives_a_dataset_or_a_typed_error(folder, data):
    (folder / "labels.csv").write_bytes(data)
    with bounded(10.0):
        try:
            dataset = load_dataset(folder, config=CONFIG, cache=False)
        except EdgeregError as exc:
            assert_one_line(exc)
            return
    n = len(dataset)
    assert n > 0 and dataset.images.shape == (n, 16, 16, 3) and dataset.targets.shape[0] == n
    assert np.isfinite(dataset.targets).all() and len(dataset.paths) == n
    assert len(set(dataset.paths)) == n
    for line, _path, reason in dataset.skipped:
        assert isinstance(line, int) and reason.strip() and "\n" not in reason
