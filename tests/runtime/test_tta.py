"""TTA specs: parsing every accepted spelling, the limits, the exact error, and the view tables."""

from __future__ import annotations

import numpy as np
import pytest

from edgereg.core.tta import MAX_ROTATIONS, TTASpec, parse_tta
from edgereg.errors import TTAError


@pytest.mark.parametrize("text", [None, "none", "", "off", "0", "OFF", " None ", "\tnone\n"])
def test_every_spelling_of_no_tta_is_one_view(text):
    spec = parse_tta(text)
    assert spec == TTASpec("none", 1) and str(spec) == "none"
    assert spec.angles_deg().tolist() == [0.0] and spec.flipped().tolist() == [False]


def test_d4_and_rotations_parse_and_print_back():
    assert parse_tta(" D4 ") == TTASpec("d4", 8) and str(TTASpec("d4", 8)) == "d4"
    for n in (2, 5, MAX_ROTATIONS):
        spec = parse_tta(f"rot:{n}")
        assert spec == TTASpec("rot", n) and str(spec) == f"rot:{n}"
        assert parse_tta(str(spec)) == spec


@pytest.mark.parametrize("text", ["rot:1", "rot:0", f"rot:{MAX_ROTATIONS + 1}", "rot:x", "rot:", "rot:-2", "rot:2.5",
                                  "d8", "flip", "rot4"])
def test_anything_else_is_one_clear_error(text):
    with pytest.raises(TTAError) as info:
        parse_tta(text)
    assert str(info.value) == (f"unknown TTA {text!r}: expected 'none', 'd4' or 'rot:N' with 2 <= N <= "
                               f"{MAX_ROTATIONS}, e.g. --tta d4")


def test_view_tables():
    d4 = parse_tta("d4")
    assert d4.angles_deg().tolist() == [0, 90, 180, 270, 0, 90, 180, 270]
    assert d4.flipped().tolist() == [False] * 4 + [True] * 4
    rot = parse_tta("rot:3")
    np.testing.assert_allclose(rot.angles_deg(), [0.0, 120.0, 240.0])
    for spec in (d4, rot, parse_tta("none")):
        flipped = spec.flipped()
        assert flipped.dtype == bool and flipped.shape == (spec.n,)
        assert spec.angles_deg().shape == (spec.n,)
