"""Model card validation, rule by rule: the last valid value passes, the first invalid one fails
with one exact line naming the field, what it must be and what it got."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from edgereg.core.card import ModelCard, card_from_metadata, read_card
from edgereg.errors import CardError, ModelFileError

SCALAR = dict(kind="scalar", targets=("c",), input_size=(16, 16))
NAN, INF = math.nan, math.inf


@pytest.mark.parametrize("bounds", [(5.0, 5.0), (0, 0), (-1.5, -1.5)])
def test_range_with_lo_equal_to_hi_is_rejected(bounds):
    # an empty range would make every reading "out_of_range" and divide by zero in the 1% tolerance
    with pytest.raises(CardError, match=r"'range' must be 1 \[lo, hi\] pairs with lo < hi"):
        ModelCard(**SCALAR, range=(bounds,))
    with pytest.raises(CardError, match="lo < hi"):
        ModelCard.from_dict(dict(SCALAR, range=[list(bounds)], format_version=1))


def test_range_with_lo_just_below_hi_is_accepted():
    card = ModelCard(**SCALAR, range=((5.0, 5.000001),))
    assert card.range == ((5.0, 5.000001),)


INVALID = [
    (dict(kind="scaler"), "field 'kind' is 'scaler' (did you mean 'scalar'?); "
                          "expected one of scalar, vector, distribution, coords, angle, count"),
    (dict(kind="banana"),
     "field 'kind' is 'banana'; expected one of scalar, vector, distribution, coords, angle, count"),
    (dict(targets=()), "field 'targets' must be a non-empty list of names, got ()"),
    (dict(targets=("a", "")), "field 'targets' must be a non-empty list of names, got ('a', '')"),
    (dict(targets=("a", 3)), "field 'targets' must be a non-empty list of names, got ('a', 3)"),
    (dict(targets=("a", "a")), "field 'targets' must be unique names, got ('a', 'a')"),
    (dict(kind="coords", targets=("x", "y", "z")), "field 'targets' must be x,y pairs for kind 'coords', "
                                                   "got ('x', 'y', 'z')"),
    (dict(kind="angle", targets=("a", "b")), "field 'targets' must be one name for kind 'angle', got ('a', 'b')"),
    (dict(kind="distribution", targets=("a",)), "field 'targets' must be at least 2 bins for kind 'distribution', "
                                                "got ('a',)"),
    (dict(units=("a", "b")), "field 'units' must be 1 strings (one per target), got ('a', 'b')"),
    (dict(units=(3,)), "field 'units' must be 1 strings (one per target), got (3,)"),
    (dict(input_size=(7, 8)), "field 'input_size' must be [H, W] with integers in 8..4096, got (7, 8)"),
    (dict(input_size=(8, 4097)), "field 'input_size' must be [H, W] with integers in 8..4096, got (8, 4097)"),
    (dict(input_size=(True, 8)), "field 'input_size' must be [H, W] with integers in 8..4096, got (True, 8)"),
    (dict(input_size=(8.0, 8)), "field 'input_size' must be [H, W] with integers in 8..4096, got (8.0, 8)"),
    (dict(input_size=(8, 8, 8)), "field 'input_size' must be [H, W] with integers in 8..4096, got (8, 8, 8)"),
    (dict(channels="grey"), "field 'channels' is 'grey' (did you mean 'gray'?); expected 'rgb' or 'gray'"),
    (dict(crop="circel"), "field 'crop' is 'circel' (did you mean 'circle'?); expected one of none, center, circle"),
    (dict(roi=(1, 2)), "field 'roi' must be [cx, cy, r] with r > 0, or null, got (1, 2)"),
    (dict(roi=(1, 2, 0)), "field 'roi' must be [cx, cy, r] with r > 0, or null, got (1, 2, 0)"),
    (dict(roi=(1, 2, -3)), "field 'roi' must be [cx, cy, r] with r > 0, or null, got (1, 2, -3)"),
    (dict(roi=(1, NAN, 2)), "field 'roi' must be [cx, cy, r] with r > 0, or null, got (1, nan, 2)"),
    (dict(roi=(INF, 1, 2)), "field 'roi' must be [cx, cy, r] with r > 0, or null, got (inf, 1, 2)"),
    (dict(roi=(1, True, 2)), "field 'roi' must be [cx, cy, r] with r > 0, or null, got (1, True, 2)"),
    (dict(roi=(1, "2", 2)), "field 'roi' must be [cx, cy, r] with r > 0, or null, got (1, '2', 2)"),
    (dict(mean=(0.5, 0.5)), "field 'mean' must be 3 numbers for channels 'rgb', got (0.5, 0.5)"),
    (dict(mean=(0.5, INF, 0.5)), "field 'mean' must be 3 numbers for channels 'rgb', got (0.5, inf, 0.5)"),
    (dict(channels="gray"), "field 'mean' must be 1 numbers for channels 'gray', got (0.5, 0.5, 0.5)"),
    (dict(std=(0.5, 0, 0.5)), "field 'std' must be 3 positive numbers for channels 'rgb', got (0.5, 0, 0.5)"),
    (dict(std=(0.5, -0.1, 0.5)), "field 'std' must be 3 positive numbers for channels 'rgb', got (0.5, -0.1, 0.5)"),
    (dict(std=(0.5, 0.5)), "field 'std' must be 3 positive numbers for channels 'rgb', got (0.5, 0.5)"),
    (dict(std=(0.5, NAN, 0.5)), "field 'std' must be 3 positive numbers for channels 'rgb', got (0.5, nan, 0.5)"),
    (dict(channels="gray", mean=(0.5,)), "field 'std' must be 1 positive numbers for channels 'gray', "
                                         "got (0.25, 0.25, 0.25)"),
    (dict(fill=NAN), "field 'fill' must be a finite number, got nan"),
    (dict(fill=-INF), "field 'fill' must be a finite number, got -inf"),
    (dict(fill="0"), "field 'fill' must be a finite number, got '0'"),
    (dict(fill=True), "field 'fill' must be a finite number, got True"),
    (dict(range=((0, 1), (0, 1))), "field 'range' must be 1 [lo, hi] pairs with lo < hi, or null, "
                                   "got ((0, 1), (0, 1))"),
    (dict(range=((5, 4),)), "field 'range' must be 1 [lo, hi] pairs with lo < hi, or null, got ((5, 4),)"),
    (dict(range=((NAN, 1),)), "field 'range' must be 1 [lo, hi] pairs with lo < hi, or null, got ((nan, 1),)"),
    (dict(range=((0, INF),)), "field 'range' must be 1 [lo, hi] pairs with lo < hi, or null, got ((0, inf),)"),
    (dict(range=((0, 1, 2),)), "field 'range' must be 1 [lo, hi] pairs with lo < hi, or null, got ((0, 1, 2),)"),
    (dict(range=((0,),)), "field 'range' must be 1 [lo, hi] pairs with lo < hi, or null, got ((0,),)"),
    (dict(tta="d8"), "field 'tta' must be 'none', 'd4' or 'rot:N', got 'd8'"),
    (dict(tta="rot:65"), "field 'tta' must be 'none', 'd4' or 'rot:N', got 'rot:65'"),
    (dict(provenance=[]), "field 'provenance' must be an object, got []"),
    (dict(quantization="x"), "field 'quantization' must be an object, got 'x'"),
]


@pytest.mark.parametrize("change, message", INVALID, ids=[f"{next(iter(c))}-{i}" for i, (c, _) in enumerate(INVALID)])
def test_each_invalid_field_is_one_exact_line(change, message):
    with pytest.raises(CardError) as info:
        ModelCard(**dict(SCALAR, **change))
    assert str(info.value) == message


@pytest.mark.parametrize("change", [
    dict(input_size=(8, 4096)), dict(input_size=(4096, 8)), dict(roi=(0, 0, 1e-9)), dict(roi=(-5.5, 3, 2)),
    dict(std=(1e-9, 1e-9, 1e-9)), dict(mean=(-1, 0, 2)), dict(fill=0), dict(fill=-3.5),
    dict(kind="distribution", targets=("a", "b")), dict(kind="angle", targets=("theta",)),
    dict(kind="coords", targets=("x0", "y0", "x1", "y1")), dict(units=()), dict(units=("",)),
    dict(channels="gray", mean=(0.5,), std=(0.25,)), dict(tta="rot:64"), dict(tta="d4"),
    dict(range=((-1e9, 1e9),)), dict(provenance={"seed": 1}), dict(quantization={"method": "minmax"}),
])
def test_values_at_the_edge_of_each_rule_are_accepted(change):
    card = ModelCard(**dict(SCALAR, **change))
    for name, value in change.items():
        assert getattr(card, name) == value


def test_unit_of_pairs_targets_with_units_or_empty_strings():
    assert ModelCard(kind="vector", targets=("a", "b"), input_size=(8, 8), units=("mg/L", "")).unit_of == \
        {"a": "mg/L", "b": ""}
    assert ModelCard(kind="vector", targets=("a", "b"), input_size=(8, 8)).unit_of == {"a": "", "b": ""}


def test_with_makes_a_validated_copy():
    card = ModelCard(**SCALAR)
    changed = card.with_(tta="d4", units=("mg/L",))
    assert changed.tta == "d4" and changed.units == ("mg/L",) and card.tta == "none"
    with pytest.raises(CardError, match="field 'tta'"):
        card.with_(tta="sideways")


def test_to_json_is_sorted_and_round_trips():
    card = ModelCard(**SCALAR, units=("mg/L",), range=((80.0, 350.0),), provenance={"b": 1, "a": [1, 2]})
    text = card.to_json()
    keys = list(json.loads(text))
    assert keys == sorted(keys)
    assert ModelCard.from_json(text) == card
    assert text == ModelCard.from_json(text).to_json()  # byte-identical: a stable fingerprint


FROM_DICT = [
    ([], "m.onnx: expected a JSON object, got list"),
    (dict(SCALAR, format_version=True), "m.onnx: field 'format_version' must be an integer, got True"),
    (dict(SCALAR, format_version=1.0), "m.onnx: field 'format_version' must be an integer, got 1.0"),
    (dict(SCALAR), "m.onnx: field 'format_version' must be an integer, got None"),
    (dict(SCALAR, format_version=2), "m.onnx: card format_version 2 is newer than this edgereg reads (1); "
                                     "upgrade: pip install -U edgereg"),
    (dict(SCALAR, format_version=1, extra=1), "m.onnx: unknown field 'extra'"),
    (dict(SCALAR, format_version=1, unit=["x"]), "m.onnx: unknown field 'unit' (did you mean 'units'?)"),
    ({"kind": "scalar", "input_size": [8, 8], "format_version": 1}, "m.onnx: missing required field 'targets'"),
    ({"targets": ["c"], "input_size": [8, 8], "format_version": 1}, "m.onnx: missing required field 'kind'"),
    ({"kind": "scalar", "targets": ["c"], "format_version": 1}, "m.onnx: missing required field 'input_size'"),
    (dict(SCALAR, format_version=1, targets="c"), "m.onnx: field 'targets' must be a list, got 'c'"),
    (dict(SCALAR, format_version=1, units="mg"), "m.onnx: field 'units' must be a list, got 'mg'"),
    (dict(SCALAR, format_version=1, input_size=16), "m.onnx: field 'input_size' must be a list, got 16"),
    (dict(SCALAR, format_version=1, mean=0.5), "m.onnx: field 'mean' must be a list, got 0.5"),
    (dict(SCALAR, format_version=1, std=0.5), "m.onnx: field 'std' must be a list, got 0.5"),
    (dict(SCALAR, format_version=1, roi=5), "m.onnx: field 'roi' must be a list, got 5"),
    (dict(SCALAR, format_version=1, range=5), "m.onnx: field 'range' must be a list, got 5"),
    (dict(SCALAR, format_version=1, range=[5]), "m.onnx: field 'range' must be a list, got 5"),
    (dict(SCALAR, format_version=1, range=[[9, 1]]), "m.onnx: field 'range' must be 1 [lo, hi] pairs with lo < hi, "
                                                     "or null, got ((9, 1),)"),
]


@pytest.mark.parametrize("data, message", FROM_DICT, ids=[str(i) for i in range(len(FROM_DICT))])
def test_cards_read_from_files_fail_with_the_source_and_one_line(data, message):
    with pytest.raises(CardError) as info:
        ModelCard.from_dict(data, source="m.onnx")
    assert str(info.value) == message


def test_from_dict_turns_json_lists_into_tuples():
    card = ModelCard.from_dict(dict(SCALAR, format_version=1, targets=["c"], input_size=[16, 24], units=["mg/L"],
                                    mean=[0.1, 0.2, 0.3], std=[0.4, 0.5, 0.6], roi=[10, 20, 5], range=[[0, 1]]))
    assert card.targets == ("c",) and card.input_size == (16, 24) and card.units == ("mg/L",)
    assert card.mean == (0.1, 0.2, 0.3) and card.std == (0.4, 0.5, 0.6) and card.roi == (10, 20, 5)
    assert card.range == ((0, 1),)
    assert ModelCard.from_dict(dict(SCALAR, format_version=1, roi=None, range=None)).roi is None


def test_bad_json_and_a_missing_card_name_the_fix():
    with pytest.raises(CardError) as info:
        ModelCard.from_json("{nope", source="m.onnx")
    assert str(info.value) == ("m.onnx: the card is not valid JSON (Expecting property name enclosed in double "
                               "quotes at char 1); re-export the model with `edgereg export`")
    with pytest.raises(CardError) as info:
        ModelCard.from_json("{}")
    assert str(info.value).startswith("model card: field 'format_version'")
    with pytest.raises(CardError) as info:
        card_from_metadata({"other": "{}"}, source="m.onnx")
    assert str(info.value) == ("m.onnx: no edgereg model card (metadata key 'edgereg' is missing); "
                               "export the model with `edgereg export`, or pass --card CARD.json")
    card = ModelCard(**SCALAR)
    assert card_from_metadata({"edgereg": card.to_json()}, source="m.onnx") == card


def test_read_card_errors_are_one_line(tmp_path, model_factory):
    with pytest.raises(ModelFileError) as info:
        read_card(tmp_path / "missing.onnx")
    assert str(info.value) == (f"model file not found: '{tmp_path / 'missing.onnx'}'; check the path "
                               "(expected an .onnx file)")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ModelFileError) as info:
        read_card(junk)
    message = str(info.value)
    assert message.startswith(f"'{junk}' is not a loadable ONNX model (") and "\n" not in message
    assert message.endswith("); export it again with `edgereg export`")
    bare = f"'{junk}' is not a loadable ONNX model (); export it again with `edgereg export`"
    assert 0 < len(message) - len(bare) <= 200
    path = model_factory(kind="vector", targets=("a", "b"), units=("mg/L", "%"), range=((0.0, 1.0), (2.0, 3.0)))
    card = read_card(str(path))
    assert card.targets == ("a", "b") and card.range == ((0.0, 1.0), (2.0, 3.0))
    assert np.isclose(card.fill, 0.0)
