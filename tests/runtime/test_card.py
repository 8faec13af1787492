"""The model card: round trip, validation with one clear line, ONNX metadata."""

from __future__ import annotations

import json

import pytest

from edgereg.card import FORMAT_VERSION, ModelCard, read_card
from edgereg.errors import CardError

BASE = dict(kind="scalar", targets=["concentration"], input_size=[64, 64], units=["mg/L"],
            range=[[80, 350]], crop="circle", tta="d4", format_version=FORMAT_VERSION)


def test_round_trip_through_json_and_onnx(model_factory):
    card = ModelCard.from_dict(BASE)
    assert ModelCard.from_json(card.to_json()) == card
    path = model_factory(**{k: v for k, v in ModelCard.from_dict(BASE).__dict__.items()
                            if k in ("kind", "targets", "units", "range", "crop", "tta")})
    read = read_card(path)
    assert read.targets == ("concentration",) and read.range == ((80, 350),) and read.tta == "d4"


@pytest.mark.parametrize("change, message", [
    ({"kind": "scaler"}, "did you mean 'scalar'"),
    ({"crop": "circel"}, "did you mean 'circle'"),
    ({"imput_size": [64, 64]}, "unknown field 'imput_size' \\(did you mean 'input_size'"),
    ({"format_version": FORMAT_VERSION + 1}, "newer than this edgereg reads"),
    ({"std": [0.1, 0.0, 0.1]}, "'std' must be 3 positive numbers"),
    ({"range": [[350, 80]]}, "lo < hi"),
    ({"tta": "d8"}, "'tta'"),
    ({"channels": "gray"}, "'mean' must be 1 numbers"),
    ({"targets": ["x"], "kind": "coords"}, "x,y pairs"),
    ({"format_version": "1"}, "must be an integer"),
])
def test_invalid_cards_raise_one_clear_line(change, message):
    data = dict(BASE, **change)
    with pytest.raises(CardError, match=message) as info:
        ModelCard.from_json(json.dumps(data), source="m.onnx")
    assert "\n" not in str(info.value) and str(info.value).startswith("m.onnx:")


def test_missing_field_and_bad_json():
    data = dict(BASE)
    del data["targets"]
    with pytest.raises(CardError, match="missing required field 'targets'"):
        ModelCard.from_dict(data)
    with pytest.raises(CardError, match="not valid JSON"):
        ModelCard.from_json("{nope")


def test_decode_policy_defaults_to_full_for_older_cards_and_is_validated():
    import json

    from edgereg.card import ModelCard
    from edgereg.errors import CardError
    from edgereg.preprocess import PreprocessConfig

    old = {"kind": "scalar", "targets": ["v"], "input_size": [16, 16], "format_version": 1}
    card = ModelCard.from_json(json.dumps(old))
    assert card.decode == "full" and PreprocessConfig.from_card(card).decode == "full"
    reduced = ModelCard.from_json(json.dumps({**old, "decode": "reduced"}))
    assert PreprocessConfig.from_card(reduced).decode == "reduced"
    assert ModelCard.from_json(reduced.to_json()) == reduced
    with pytest.raises(CardError, match="field 'decode' is 'reduce'.*did you mean 'reduced'"):
        ModelCard.from_json(json.dumps({**old, "decode": "reduce"}))
