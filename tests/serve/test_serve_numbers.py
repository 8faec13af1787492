"""A reading has the same numbers on every route: /events (and --jsonl) and /api/predict write them
unrounded, NaN and infinities as null (edgereg.json_values; docs/serve.md, "Numbers")."""

from __future__ import annotations

import http.client
import json
import math

import cv2
import pytest

pytest.importorskip("starlette")

from serve_helpers import EventReader, SwitchableCamera, live_server, sample_frame

from edgereg import Predictor
from edgereg.json_values import finite_or_none, finite_values, json_safe
from edgereg.live.loop import LiveConfig, LiveFeed, Reading
from edgereg.serve.app import create_app

PATIENCE = 60.0
NUMBER_FIELDS = ("value", "spread", "lo", "hi")


def post_png(port: int, image) -> dict:
    ok, buffer = cv2.imencode(".png", image)  # lossless: the server reads the camera's exact pixels
    assert ok
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("POST", "/api/predict", body=buffer.tobytes(), headers={"Content-Type": "image/png"})
        response = connection.getresponse()
        assert response.status == 200
        return json.loads(response.read())
    finally:
        connection.close()


def test_a_reading_has_the_same_numbers_on_events_and_api_predict(assay_model):
    predictor = Predictor(assay_model, preprocess_parallel=False)
    camera = SwitchableCamera(fps=30)
    feed = LiveFeed(camera, predictor, config=LiveConfig(smooth_window=3, retry_initial_s=0.05, retry_max_s=0.1))
    with live_server(create_app(predictor, feed)) as port:
        reader = EventReader(port)
        records = reader.wait(1, PATIENCE)
        reader.close()
        event = next(r for _, r in records if r["quality"] == "ok")
        frame = sample_frame(event["frame"] + 1, size=camera.size)  # what the camera sent for that reading
        (reading,) = post_png(port, frame)["readings"]
    assert reading["value"] == event["value"]  # bit for bit: neither route rounds
    for field in NUMBER_FIELDS:
        assert reading.get(field) == event[field], field
    value = event["value"]["conc"]
    assert value != round(value, 6)  # a reading with more than 6 decimals: the old /events rounded it


def test_reading_json_writes_floats_unrounded_and_non_finite_as_null():
    reading = Reading(timestamp=12.34567, frame=3, quality="ok", values={"a": 1 / 3, "b": math.nan},
                      spread={"a": math.inf, "b": 0.1}, lo={"a": 0.2, "b": -math.inf}, hi={"a": 0.5, "b": 1e-9})
    record = json.loads(reading.to_json())
    assert record["value"] == {"a": 1 / 3, "b": None}
    assert record["spread"] == {"a": None, "b": 0.1}
    assert record["lo"] == {"a": 0.2, "b": None} and record["hi"] == {"a": 0.5, "b": 1e-9}
    assert record["timestamp"] == 12.346  # timestamps alone are rounded, to the millisecond
    assert record["value"] == finite_values(reading.values)  # what /api/predict writes for the same numbers


def test_json_values_helpers():
    import numpy as np

    assert finite_or_none(None) is None and finite_or_none(np.float32(0.5)) == 0.5
    assert finite_or_none(math.nan) is None and finite_or_none(-math.inf) is None
    assert finite_values(None) is None
    assert json_safe({1: (np.float64(2.0), np.array([math.inf, 1.0])), "x": [np.int64(3), "s"]}) == \
        {"1": [2.0, [None, 1.0]], "x": [3, "s"]}
