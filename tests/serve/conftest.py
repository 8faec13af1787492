"""Fixtures of the `edgereg serve` tests (the generators are in serve_helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from serve_helpers import make_assay_model, write_video


@pytest.fixture
def assay_model(tmp_path) -> Path:
    return make_assay_model(tmp_path / "assay.onnx")


@pytest.fixture
def sample_video(tmp_path) -> Path:
    return write_video(tmp_path / "sample.avi")
