"""The model card: round trip, validation with one clear line, ONNX metadata."""

from __future__ import annotations

import json

import pytest

from edgereg.core.card import FORMAT_VERSION, ModelCard, read_card
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

    from edgereg.core.card import ModelCard
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


def test_card_files_read_back_and_every_failure_names_the_fix(tmp_path):
    from edgereg.core.card import read_card_file

    card = ModelCard.from_dict(BASE)
    saved = tmp_path / "card.json"
    saved.write_text(card.to_json(), encoding="utf-8")
    assert read_card_file(saved) == card and read_card_file(str(saved)) == card
    missing = tmp_path / "nope.json"
    with pytest.raises(CardError) as info:
        read_card_file(missing)
    assert str(info.value) == (f"card file not found: '{missing}'; write one with "
                               f"`edgereg info MODEL --json > {missing}`")
    latin = tmp_path / "latin.json"
    latin.write_bytes(b'{"kind": "\xe9"}')
    with pytest.raises(CardError) as info:
        read_card_file(latin)
    assert str(info.value) == (f"cannot read card file '{latin}' (not UTF-8 text at byte 10); "
                               "expected a UTF-8 JSON file")
    folder = tmp_path / "folder.json"
    folder.mkdir()
    with pytest.raises(CardError, match=r"^cannot read card file: .*folder\.json") as info:
        read_card_file(folder)
    assert "an image" not in str(info.value)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json", encoding="utf-8")
    with pytest.raises(CardError, match="broken.json"):
        read_card_file(broken)


def test_a_file_that_is_not_onnx_is_named_with_the_runtime_s_first_line(tmp_path):
    from edgereg.errors import ModelFileError

    fake = tmp_path / "fake.onnx"
    fake.write_bytes(b"not a model\nsecond line")
    with pytest.raises(ModelFileError) as info:
        read_card(fake)
    message = str(info.value)
    assert message.startswith(f"'{fake}' is not a loadable ONNX model (") and "\n" not in message
    assert message.endswith("); export it again with `edgereg export`")
    with pytest.raises(ModelFileError, match=r"^model file not found: '.*nothing\.onnx'; check the path"):
        read_card(tmp_path / "nothing.onnx")


def test_int8_speed_note_reads_the_nearest_measured_batch():
    from edgereg.core.card import int8_speed_note

    def with_speed(speed):
        return ModelCard.from_dict({**BASE, "quantization": {"speed": speed}})

    speed = {"measured": True, "int8_vs_fp32": {"1": 0.9, "32": 1.4}, "recommended": "int8", "machine": "cpu X"}
    card = with_speed(speed)
    assert int8_speed_note(card, batch_size=32) is None and int8_speed_note(card) is None
    assert int8_speed_note(card, batch_size=2) == (
        "this int8 model ran no faster than fp32 when exported (int8/fp32 0.90x at batch 1, 1.40x at batch 32 "
        "on cpu X); deploy model.onnx on such a machine, or run `edgereg bench` on yours to compare")
    assert int8_speed_note(card, batch_size=17) is None  # 17 is nearer 32 than 1
    exactly_one = with_speed({**speed, "int8_vs_fp32": {"1": 1.0}, "machine": None})
    assert int8_speed_note(exactly_one, batch_size=8).endswith("(int8/fp32 1.00x at batch 1); deploy model.onnx "
                                                              "on such a machine, or run `edgereg bench` on yours "
                                                              "to compare")
    assert int8_speed_note(with_speed({**speed, "recommended": "fp32"})) is not None
    assert int8_speed_note(with_speed({**speed, "measured": False}), batch_size=1) is None
    assert int8_speed_note(with_speed({**speed, "int8_vs_fp32": {"all": 0.5}}), batch_size=1) is None
    assert int8_speed_note(ModelCard.from_dict(BASE), batch_size=1) is None
