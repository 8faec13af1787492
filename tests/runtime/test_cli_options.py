"""The shared argparse number types (edgereg.cli.options): what they take, what they refuse, and how
they word it (one line, what was expected and what was given)."""

from __future__ import annotations

import argparse
import math

import pytest

from edgereg.cli.options import count, finite, is_positive_int, level, non_negative, positive, positive_int


@pytest.mark.parametrize(("parse", "text", "value"), [
    (positive_int, "3", 3), (count(0), "0", 0), (count(1, 10), "10", 10), (positive, "0.5", 0.5),
    (positive, "1e3", 1000.0), (non_negative, "0", 0.0), (finite, "-2.5", -2.5), (level, "0.9", 0.9),
])
def test_number_types_take_their_values(parse, text, value):
    assert parse(text) == value


@pytest.mark.parametrize(("parse", "text", "message"), [
    (positive_int, "x", "expected a whole number, got 'x'"),
    (positive_int, "0", "expected a number >= 1, got 0"),  # `edgereg synth --n 0` (tests/training/test_synth.py)
    (count(1, 256), "-1", "expected an integer in 1..256, got -1"),
    (count(1), "2.5", "expected an integer >= 1, got '2.5'"),
    (positive, "0", "expected a finite number > 0, got 0"),
    (positive, "inf", "expected a finite number > 0, got inf"),
    (positive, "nan", "expected a finite number > 0, got nan"),
    (positive, "ten", "expected a number > 0, got 'ten'"),
    (non_negative, "-1", "expected a finite number >= 0, got -1"),
    (level, "1", "expected a level in (0, 1) such as 0.9, got 1"),
])
def test_number_types_refuse_with_one_line(parse, text, message):
    with pytest.raises(argparse.ArgumentTypeError) as info:
        parse(text)
    assert str(info.value) == message


def test_is_positive_int_for_values_that_are_not_text():
    assert all(is_positive_int(v) for v in (1, 2, 2.0, 10**30))
    assert not any(is_positive_int(v) for v in (0, -1, 2.5, True, "2", None, [2], math.nan, math.inf))
