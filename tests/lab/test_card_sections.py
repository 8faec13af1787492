"""The three lab sections of a card share one reader (edgereg.lab._section): empty -> None, not an
object or malformed -> one CardError naming the section and the command that writes it again."""

from __future__ import annotations

import pytest

from edgereg.errors import CardError
from edgereg.lab.calibration import parse_calibration
from edgereg.lab.intervals import parse_intervals
from edgereg.lab.limits import parse_validation

SECTIONS = [
    (parse_calibration, "calibration", "recalibrate with `edgereg calibrate MODEL STANDARDS`"),
    (parse_validation, "validation", "validate again with `edgereg validate MODEL STANDARDS`"),
    (parse_intervals, "intervals", "re-export the model with `edgereg export`"),
]


@pytest.mark.parametrize(("parse", "name", "fix"), SECTIONS)
def test_an_empty_section_is_none(parse, name, fix):
    assert parse({}, ("c",)) is None and parse(None, ("c",)) is None


@pytest.mark.parametrize(("parse", "name", "fix"), SECTIONS)
def test_a_section_that_is_not_an_object_names_the_section_and_the_fix(parse, name, fix):
    with pytest.raises(CardError) as info:
        parse(["targets"], ("c",))
    assert str(info.value) == f"field '{name}': expected a JSON object, got list; {fix}"


@pytest.mark.parametrize(("parse", "name", "fix"), SECTIONS)
def test_a_missing_field_is_malformed(parse, name, fix):
    with pytest.raises(CardError) as info:
        parse({"id": "x"}, ("c",))
    assert str(info.value).startswith(f"field '{name}': malformed (KeyError: ") and str(info.value).endswith(fix)


def test_every_wrong_shape_is_a_card_error_in_every_section():
    """A short list where a pair belongs (IndexError) was a raw crash in calibration, a card error in validation."""
    entry = {"fit": "linear", "coef": [0.0, 1.0], "residual_sd": 0.1, "t": {"0.95": 2.0}, "reference_range": [1.0]}
    with pytest.raises(CardError, match=r"^field 'calibration': malformed \(IndexError"):
        parse_calibration({"id": "x", "date": "d", "targets": {"c": entry}}, ("c",))
    with pytest.raises(CardError, match=r"^field 'validation': malformed \(IndexError"):
        parse_validation({"id": "x", "date": "d", "targets": {"c": {"range": [1.0]}}}, ("c",))


def test_intervals_none_with_a_reason_is_none():
    assert parse_intervals({"none": "held_out.npz was missing"}, ("c",)) is None
