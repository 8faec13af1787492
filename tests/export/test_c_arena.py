"""The static arena of generated C (c_arena): tensors whose lifetimes do not overlap share bytes."""

from __future__ import annotations

import pytest

from edgereg.core.card import ModelCard

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
nn = torch.nn

from c_helpers import export  # noqa: E402

from edgereg.export.c.codegen import generate_c  # noqa: E402  (needs onnx)


def test_arena_reuses_buffers(tmp_path):
    """A chain of layers needs only the largest (input + output) pair of live tensors, not their sum."""
    torch.manual_seed(0)
    chain = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1),
                          nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(16, 1))
    card = ModelCard(kind="vector", targets=("v",), input_size=(16, 16))
    report = generate_c(export(chain, tmp_path / "chain.onnx", card), tmp_path / "c")
    floats = [3 * 16 * 16, 8 * 16 * 16, 16 * 8 * 8, 16 * 8 * 8, 16, 1]  # tensors in order, ReLUs fused
    peak = max(4 * (a + b) for a, b in zip(floats, floats[1:]))
    assert report.ram_bytes == peak
    assert report.ram_bytes < 4 * sum(floats)
    header = (tmp_path / "c" / "model.h").read_text()
    assert f"#define EDGEREG_MODEL_ARENA_BYTES {peak}" in header
