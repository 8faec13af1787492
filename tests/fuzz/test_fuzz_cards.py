"""Fuzz: model cards (random JSON, and real cards with random field values)."""

from __future__ import annotations

import json

from fuzz_helpers import assert_one_line, bounded, fuzz_settings
from hypothesis import given
from hypothesis import strategies as st

from edgereg.core.card import ModelCard, card_from_metadata
from edgereg.errors import CardError

VALID = json.loads(ModelCard(kind="scalar", targets=("conc",), input_size=(32, 32), units=("mg/L",),
                             range=((80.0, 350.0),)).to_json())

SCALARS = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True)
           | st.text(max_size=6) | st.sampled_from([10 ** 400, -(10 ** 400), 2 ** 63, 0, 8, 4096, 1e308,
                                                    "d4", "rot:0", "rot:-3", "rot:99999", "circle", "gray"]))
EDGE_NUMBERS = st.sampled_from([10 ** 400, -(10 ** 400), 1e308, -1e308, 0, -1, 0.5, 1, 2, 4096, 4097, 7])
VALUES = (SCALARS | EDGE_NUMBERS | st.lists(SCALARS, max_size=4) | st.lists(EDGE_NUMBERS, min_size=1, max_size=4)
          | st.lists(st.lists(EDGE_NUMBERS, max_size=3), max_size=3)
          | st.dictionaries(st.text(max_size=6), SCALARS, max_size=3))
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                                          max_size=3), max_leaves=6)


@st.composite
def cards(draw) -> str:
    """Random JSON; the valid card with one field, or several, dropped or given a random value; or
    the card's JSON text cut short."""
    mode = draw(st.sampled_from(["json", "one field", "fields", "numbers", "cut"]))
    if mode == "json":
        return json.dumps(draw(JSON))
    card = dict(VALID, roi=[16.0, 16.0, 8.0])
    if mode == "numbers":  # the structure kept, every number of one field replaced
        key = draw(st.sampled_from(["mean", "std", "fill", "roi", "range", "input_size", "format_version"]))
        card[key] = _renumber(card[key], draw)
        return json.dumps(card)
    keys = sorted(VALID) + ["extra"]
    chosen = [draw(st.sampled_from(keys))] if mode == "one field" else draw(st.lists(st.sampled_from(keys),
                                                                                      max_size=4))
    for key in chosen:
        if draw(st.integers(0, 4)) == 0:
            card.pop(key, None)
        else:
            card[key] = draw(VALUES)
    text = json.dumps(card)
    return text[:draw(st.integers(0, len(text)))] if mode == "cut" else text


def _renumber(value, draw):
    """``value`` with each number replaced by a drawn edge-case number (lists keep their shape)."""
    if isinstance(value, list):
        return [_renumber(item, draw) for item in value]
    return draw(EDGE_NUMBERS | st.floats(allow_nan=True, allow_infinity=True))


@fuzz_settings(max_examples=500)
@given(text=cards())
def test_any_card_text_gives_a_card_or_a_card_error(text):
    with bounded(2.0):
        try:
            card = card_from_metadata({"edgereg": text}, source="fuzz.onnx")
        except CardError as exc:
            assert_one_line(exc)
            return
        assert ModelCard.from_json(card.to_json()) == card  # what is accepted round-trips
