"""Fixtures for the hostile-input regression tests (helpers are in hostile_helpers.py).

Every test in this folder reproduces one defect of the hostile-input campaign (see
docs/hardening.md) and failed before its fix.
"""

from __future__ import annotations

import pytest


@pytest.fixture
def tiny_model(model_factory):
    """A real ONNX model with a card: scalar 'conc' in -2..2 from the mean of the input."""
    return model_factory(targets=("conc",), range=((-2.0, 2.0),), units=("mg/L",))


@pytest.fixture
def other_model(model_factory):
    """Another model with the same outputs but other weights' range (a different file and card)."""
    return model_factory(targets=("conc",), range=((-3.0, 3.0),), units=("mg/L",))
