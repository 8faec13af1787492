"""`edgereg serve` over HTTP, in-process: every endpoint, auth, limits, bad uploads, camera loss,
streams and disconnects. Non-streaming endpoints go through Starlette's TestClient; the streaming
ones (/events, /stream.mjpg) through a real uvicorn server on a thread, read with http.client."""

from __future__ import annotations

import json
import socket
import threading
import time

import cv2
import numpy as np
import pytest

pytest.importorskip("starlette")

from serve_helpers import (
    EventReader,
    SwitchableCamera,
    decode_jpeg,
    get,
    live_server,
    metric,
    read_mjpeg_parts,
    sample_frame,
    wait_for,
)
from starlette.testclient import TestClient

from edgereg import Predictor
from edgereg.batch.sources import CameraSource
from edgereg.live.loop import NO_FRAME, LiveConfig, LiveFeed
from edgereg.serve.app import ServeConfig, create_app
from edgereg.serve.frames import format_value

FAST_RETRY = LiveConfig(smooth_window=3, retry_initial_s=0.05, retry_max_s=0.1)
PATIENCE = 60.0  # seconds to wait for a state on a busy machine; a passing test waits far less


def local(app, **options) -> TestClient:
    """A test client that calls the server by its loopback address (the Host it answers by default)."""
    return TestClient(app, base_url="http://127.0.0.1", **options)


def jpeg(image: np.ndarray, ext: str = ".jpg") -> bytes:
    ok, buffer = cv2.imencode(ext, image)
    assert ok
    return buffer.tobytes()


@pytest.fixture
def predictor(assay_model):
    return Predictor(assay_model, preprocess_parallel=False)


@pytest.fixture
def camera():
    return SwitchableCamera(fps=30)


@pytest.fixture
def camera_app(predictor, camera):
    def make(config: ServeConfig | None = None, live: LiveConfig = FAST_RETRY):
        feed = LiveFeed(camera, predictor, config=live)
        return create_app(predictor, feed, ServeConfig() if config is None else config)
    return make


# ------------------------------------------------------------------ the API alone


def test_api_only_server_serves_page_card_health_and_metrics(predictor):
    with local(create_app(predictor)) as client:
        page = client.get("/")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert '<script src="/static/app.js"' in page.text and "http" not in page.text.split("<body>")[1]
        assert "default-src 'self'" in page.headers["content-security-policy"]
        for asset, kind in (("/static/app.js", "javascript"), ("/static/style.css", "text/css")):
            response = client.get(asset)
            assert response.status_code == 200 and kind in response.headers["content-type"]
            assert "https://" not in response.text and "http://" not in response.text  # nothing from the internet
        card = client.get("/api/card").json()
        assert card["targets"] == ["conc"] and card["units"] == ["mg/L"] and card["range"] == [[80.0, 350.0]]
        info = client.get("/api/info").json()
        assert info["camera"] is None and info["model"] == "assay.onnx" and info["units"] == {"conc": "mg/L"}
        assert client.get("/healthz").json() == {"status": "ok", "camera": None}
        for path in ("/events", "/stream.mjpg", "/snapshot.jpg", "/api/history"):
            response = client.get(path)
            assert response.status_code == 404 and "started without --camera" in response.json()["error"]
        missing = client.get("/nothing")
        assert missing.status_code == 404 and missing.json() == {"error": "Not Found"}
        metrics = client.get("/metrics")
        assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
        assert "edgereg_predict_requests_total" in metrics.text
        assert "# TYPE edgereg_frame_seconds histogram" in metrics.text


def test_predict_reads_uploads_like_the_predictor_and_reports_bad_ones(predictor, rng):
    images = [sample_frame(3, size=(90, 120)), sample_frame(9, size=(200, 150))]
    files = [("image", ("a.jpg", jpeg(images[0]), "image/jpeg")),
             ("image", ("b.png", jpeg(images[1], ".png"), "image/png")),
             ("image", ("corrupt.jpg", b"\xff\xd8 not really a jpeg \xff\xd9", "image/jpeg")),
             ("image", ("cut.png", jpeg(images[1], ".png")[:300], "image/png")),
             ("image", ("empty.jpg", b"", "image/jpeg"))]
    with local(create_app(predictor)) as client:
        response = client.post("/api/predict", files=files)
        assert response.status_code == 200
        readings = response.json()["readings"]
        metrics = client.get("/metrics").text
    assert [r["name"] for r in readings] == ["a.jpg", "b.png", "corrupt.jpg", "cut.png", "empty.jpg"]
    decoded = [cv2.imdecode(np.frombuffer(jpeg(images[0]), np.uint8), cv2.IMREAD_COLOR), images[1]]  # png: lossless
    expected = predictor.predict(decoded).values[:, 0]
    got = [readings[0]["value"]["conc"], readings[1]["value"]["conc"]]
    np.testing.assert_allclose(got, expected, rtol=1e-6)  # same preprocessing, batched float32 sums
    assert readings[0]["flags"] == [] and readings[0]["spread"] is None
    assert "not a decodable image" in readings[2]["error"]
    assert "truncated" in readings[3]["error"] and "empty" in readings[4]["error"]
    assert 'edgereg_predict_images_total{outcome="failed"} 3.0' in metrics


def test_predict_refuses_image_bombs_from_the_header(predictor):
    png = bytearray(jpeg(sample_frame(2, size=(48, 64)), ".png"))
    png[16:24] = (30000).to_bytes(4, "big") * 2  # IHDR declares 30000x30000: 900 MP in a few KB
    files = [("image", ("bomb.png", bytes(png), "image/png")),
             ("image", ("ok.png", jpeg(sample_frame(2), ".png"), "image/png"))]
    with local(create_app(predictor)) as client:
        readings = client.post("/api/predict", files=files).json()["readings"]
    assert readings[0]["error"] == "too large: 30000x30000 = 900 MP > 50 MP (--max-pixels)"
    assert "value" in readings[1]
    small = ServeConfig(max_pixels=1000)  # the server's --max-pixels applies to every upload
    with local(create_app(predictor, config=small)) as client:
        refused = client.post("/api/predict", files=files[1:])
    assert refused.status_code == 422 and "(--max-pixels)" in refused.json()["readings"][0]["error"]


def test_predict_raw_body_and_request_errors(predictor):
    image = jpeg(sample_frame(1))
    config = ServeConfig(max_images=2, max_request_bytes=200_000)
    with local(create_app(predictor, config=config)) as client:
        raw = client.post("/api/predict", content=image, headers={"content-type": "image/jpeg", "x-filename": "x.jpg"})
        assert raw.status_code == 200 and raw.json()["readings"][0]["name"] == "x.jpg"
        wrong_type = client.post("/api/predict", content=b"{}", headers={"content-type": "application/json"})
        assert wrong_type.status_code == 415 and "multipart/form-data" in wrong_type.json()["error"]
        no_file = client.post("/api/predict", data={"comment": "no image"})
        assert no_file.status_code in (400, 415)
        empty_form = client.post("/api/predict", files=[], data={"a": "b"},
                                 headers={"content-type": "multipart/form-data; boundary=x"})
        assert empty_form.status_code == 400
        all_bad = client.post("/api/predict", files=[("image", ("bad.jpg", b"junk", "image/jpeg"))])
        assert all_bad.status_code == 422 and "error" in all_bad.json()["readings"][0]
        too_many = client.post("/api/predict", files=[("image", (f"{i}.jpg", image, "image/jpeg")) for i in range(3)])
        assert too_many.status_code == 400 and "at most 2 images" in too_many.json()["error"]
        too_big = client.post("/api/predict", content=b"\0" * 300_000, headers={"content-type": "image/jpeg"})
        assert too_big.status_code == 413 and "--max-request-mb" in too_big.json()["error"]

        def chunks():  # no Content-Length: the limit applies while the body streams in
            for _ in range(30):
                yield b"\0" * 10_000
        streamed = client.post("/api/predict", content=chunks(), headers={"content-type": "image/jpeg"})
        assert streamed.status_code == 413
        get_predict = client.get("/api/predict")
        assert get_predict.status_code == 405
        codes = client.get("/metrics").text
    # the streamed one (Content-Length: refused before)
    assert 'edgereg_predict_requests_total{code="413"} 1.0' in codes


def test_a_failing_model_is_a_json_500_and_the_server_goes_on(predictor, monkeypatch):
    with local(create_app(predictor), raise_server_exceptions=False) as client:
        def broken(frames, boxes):
            raise RuntimeError("ORT went away")
        monkeypatch.setattr(client.app.state.server.batcher, "_predict", broken)
        response = client.post("/api/predict", content=jpeg(sample_frame(1)), headers={"content-type": "image/jpeg"})
        assert response.status_code == 500 and "RuntimeError: ORT went away" in response.json()["error"]
        assert response.headers["x-content-type-options"] == "nosniff"  # errors carry the security headers too
        assert response.headers["x-frame-options"] == "DENY" and "default-src 'self'" in response.headers[
            "content-security-policy"]
        monkeypatch.undo()
        again = client.post("/api/predict", content=jpeg(sample_frame(1)), headers={"content-type": "image/jpeg"})
        assert again.status_code == 200
        assert 'edgereg_predict_requests_total{code="500"} 1.0' in client.get("/metrics").text


def test_token_guards_every_endpoint_but_healthz_and_no_cors(predictor):
    with local(create_app(predictor, config=ServeConfig(token="s3cret"))) as client:
        assert client.get("/healthz").status_code == 200
        for path in ("/", "/api/card", "/metrics", "/static/app.js", "/events"):
            refused = client.get(path)
            assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Bearer")
            assert "token" in refused.json()["error"]
        assert client.post("/api/predict", files=[("image", ("a.jpg", b"x", "image/jpeg"))]).status_code == 401
        assert client.get("/api/card", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.get("/api/card", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert client.get("/?token=wrong").status_code == 401
        page = client.get("/?token=s3cret")
        assert page.status_code == 200
        cookie = page.headers["set-cookie"]
        assert "edgereg_token=s3cret" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie
        assert client.get("/api/card").status_code == 200  # the page's own requests carry the cookie
        client.cookies.clear()
        assert client.get("/api/card").status_code == 401
        cross = client.get("/healthz", headers={"Origin": "https://evil.example"})
        preflight = client.options("/api/predict", headers={"Origin": "https://evil.example",
                                                            "Access-Control-Request-Method": "POST"})
        assert not any(h.lower().startswith("access-control-") for h in [*cross.headers, *preflight.headers])


def test_only_the_servers_own_host_names_are_answered(predictor):
    """DNS rebinding: a page on evil.example that re-points its name at 127.0.0.1 sends
    ``Host: evil.example``; the server refuses it (421, one line, security headers) on every path."""
    with TestClient(create_app(predictor), base_url="http://evil.example:8080") as client:
        for path in ("/", "/api/info", "/healthz", "/metrics", "/static/app.js"):
            refused = client.get(path)
            assert refused.status_code == 421, path
            assert refused.json()["error"].startswith("Host 'evil.example' is not a name of this server")
            assert "--allowed-host evil.example" in refused.json()["error"]
            assert refused.headers["x-content-type-options"] == "nosniff"
        assert client.post("/api/predict", content=b"x", headers={"content-type": "image/jpeg"}).status_code == 421
        for host in ("127.0.0.1:8080", "localhost", "LOCALHOST.:80", "[::1]:8080"):
            assert client.get("/api/info", headers={"host": host}).status_code == 200, host
        assert client.get("/api/info", headers={"host": "192.168.1.20"}).status_code == 421
    named = ServeConfig(allowed_hosts=("analyzer.lab",), any_ip_host=True)  # --host 0.0.0.0 --allowed-host analyzer.lab
    with TestClient(create_app(predictor, config=named), base_url="http://analyzer.lab:8080") as client:
        assert client.get("/api/info").status_code == 200
        assert client.get("/api/info", headers={"host": "192.168.1.20:8080"}).status_code == 200
        assert client.get("/api/info", headers={"host": "[fe80::1]:8080"}).status_code == 200
        assert client.get("/api/info", headers={"host": "evil.example"}).status_code == 421
        assert client.get("/api/info", headers={"host": "localhost"}).status_code == 421  # not in this list


# ------------------------------------------------------------------ the camera


def test_camera_health_snapshot_history_and_loss(camera_app, camera):
    with local(camera_app()) as client:
        health = wait_for(lambda: (h := client.get("/healthz")).status_code == 200 and h.json(), PATIENCE)
        assert health and health["status"] == "ok" and health["camera"]["connected"]
        assert 0 <= health["camera"]["last_frame_age_s"] <= ServeConfig().stale_after_s
        snap = client.get("/snapshot.jpg")
        raw = client.get("/snapshot.jpg?overlay=0")
        assert snap.status_code == raw.status_code == 200 and snap.headers["x-edgereg-camera"] == "connected"
        drawn, plain = decode_jpeg(snap.content), decode_jpeg(raw.content)
        assert drawn.shape == plain.shape == (120, 160, 3)
        if snap.headers["x-edgereg-seq"] == raw.headers["x-edgereg-seq"]:  # the same frame: only the overlay differs
            assert np.abs(drawn.astype(int) - plain.astype(int)).max() > 100
        history = wait_for(lambda: (h := client.get("/api/history?seconds=60").json())["timestamp"][1:] and h,
                           PATIENCE)  # the first healthy moment may have one reading: wait for two
        assert history and set(history["smoothed"]) == {"conc"}
        assert all(80 <= v <= 350 for v in history["smoothed"]["conc"] if v is not None)
        assert client.get("/api/history?seconds=soon").status_code == 400

        camera.unplugged = True
        lost = wait_for(lambda: (h := client.get("/healthz")).json()["status"] == "camera_lost" and h, PATIENCE)
        assert lost and lost.status_code == 503 and not lost.json()["camera"]["connected"]
        assert lost.json()["camera"]["failed_reads"] >= 1
        lost_snap = client.get("/snapshot.jpg")  # the state /healthz judged: it stays until the camera is back
        assert lost_snap.status_code == 200 and lost_snap.headers["x-edgereg-camera"] == "lost"
        assert client.get("/snapshot.jpg?overlay=0").status_code == 503
        assert 'edgereg_camera_connected 0.0' in client.get("/metrics").text

        camera.unplugged = False
        assert wait_for(lambda: client.get("/healthz").status_code == 200, PATIENCE)
        assert 'edgereg_camera_connected 1.0' in client.get("/metrics").text
    assert camera.released  # the lifespan's end stopped the loop and released the camera


def test_health_metrics_and_snapshot_judge_the_camera_from_one_state(predictor, camera):
    """While the capture thread still hands a failed read to its subscribers, /healthz, /metrics and
    /snapshot.jpg all see the last published reading: none says "lost" while another says "connected"."""
    feed = LiveFeed(camera, predictor, config=FAST_RETRY)
    handing_out, release = threading.Event(), threading.Event()

    def slow_subscriber(reading):  # subscribed first: runs before the server's own subscriber
        if reading.quality == NO_FRAME:
            handing_out.set()
            release.wait(PATIENCE)
    feed.subscribe(slow_subscriber)
    config = ServeConfig(stale_after_s=3600.0)  # never stale here, however slow the machine
    with local(create_app(predictor, feed, config)) as client:
        assert wait_for(lambda: client.get("/healthz").status_code == 200, PATIENCE)
        camera.unplugged = True
        assert handing_out.wait(PATIENCE)  # the feed has the failed read; the hub has not published it yet
        health = client.get("/healthz")
        snap = client.get("/snapshot.jpg")
        metrics = client.get("/metrics").text
        assert snap.headers["x-edgereg-camera"] == "connected"
        assert health.status_code == 200 and health.json()["status"] == "ok", health.json()
        assert "edgereg_camera_connected 1.0" in metrics
        release.set()
        lost = wait_for(lambda: (h := client.get("/healthz")).status_code == 503 and h.json(), PATIENCE)
        assert lost and lost["status"] == "camera_lost"
        assert client.get("/snapshot.jpg").headers["x-edgereg-camera"] == "lost"
        assert "edgereg_camera_connected 0.0" in client.get("/metrics").text


class UnreachableCapture:
    """A ``cv2.VideoCapture`` stand-in for a stream that never opens."""

    def __init__(self, target) -> None:
        self.target = target

    def isOpened(self) -> bool:
        return False

    def release(self) -> None:
        pass


def test_camera_credentials_never_reach_a_client(predictor):
    secret = "hunter2"
    source = CameraSource(f"rtsp://admin:{secret}@10.0.0.5:554/stream", open_capture=UnreachableCapture)
    assert secret not in source.name  # `edgereg infer --camera` and `serve` name the source by it
    feed = LiveFeed(source, predictor, config=FAST_RETRY)
    with live_server(create_app(predictor, feed)) as port:
        reader = EventReader(port)
        lost = reader.wait(2, PATIENCE)
        reader.close()
        assert lost and all(r["quality"] == NO_FRAME for _, r in lost)
        assert "rtsp://***@10.0.0.5:554/stream" in lost[0][1]["note"], lost[0][1]["note"]
        bodies = {path: get(port, path)[2].decode() for path in ("/snapshot.jpg?overlay=0", "/healthz", "/api/info")}
    assert "rtsp://***@10.0.0.5" in bodies["/snapshot.jpg?overlay=0"]
    for text in [*bodies.values(), *(r["note"] for _, r in lost)]:
        assert secret not in text and "admin" not in text, text


def test_events_one_reading_per_frame_resume_and_loss(camera_app, camera, predictor):
    with live_server(camera_app()) as port:
        reader = EventReader(port)
        assert reader.status == 200
        records = reader.wait(12, PATIENCE)
        assert len(records) >= 12
        ids = [event_id for event_id, _ in records]
        instance = ids[0].split(":")[0]
        seqs = [int(event_id.split(":")[1]) for event_id in ids]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # every reading, in order, none skipped
        frames = [r["frame"] for _, r in records]
        assert frames == list(range(frames[0], frames[0] + len(frames)))
        first = records[0][1]
        assert set(first) == {"timestamp", "frame", "value", "lo", "hi", "spread", "smoothed", "stable", "flags",
                              "quality", "note", "quality_detail"}  # lo/hi/flags: docs/lab-grade.md
        assert first["quality"] == "ok" and 80 < first["value"]["conc"] < 350
        expected = predictor.predict([sample_frame(first["frame"] + 1, size=camera.size)]).values[0, 0]
        assert first["value"]["conc"] == pytest.approx(expected, abs=1e-5)  # same numbers: test_serve_numbers.py

        resumed = EventReader(port, headers={"Last-Event-ID": ids[3]})  # a reconnect gets what it missed
        assert int(resumed.wait(1, PATIENCE)[0][0].split(":")[1]) == seqs[3] + 1
        resumed.close()
        foreign = EventReader(port, headers={"Last-Event-ID": "0000beef:5"})  # another server instance
        assert int(foreign.wait(1, PATIENCE)[0][0].split(":")[1]) >= seqs[-1]  # the latest, not seq 6
        foreign.close()

        camera.black = True  # the light goes off: readings withheld, with the reason
        black = wait_for(lambda: [r for _, r in reader.records if r["quality"] == "black"], PATIENCE)
        assert black and black[0]["value"] is None and black[0]["note"].startswith("black: brightness")
        assert metric(port, 'edgereg_withheld_total{reason="black"}') >= 1
        camera.black = False
        camera.unplugged = True
        lost = wait_for(lambda: [r for _, r in reader.records if r["quality"] == "no_frame"], PATIENCE)
        assert lost and lost[0]["value"] is None and "retry" in lost[0]["note"]
        camera.unplugged = False
        back = wait_for(lambda: [r for _, r in reader.records if r["note"] and "frames are back" in r["note"]],
                        PATIENCE)
        assert back
        assert instance == ids[-1].split(":")[0]
        reader.close()


def test_malformed_last_event_ids_are_ignored(camera_app):
    with live_server(camera_app()) as port:
        events = EventReader(port)
        first = events.wait(1, PATIENCE)
        assert events.status == 200 and first
        instance = first[0][0].split(":")[0]
        for bad in (f"{instance}:\u00b9", "1:\u00b9", f"{instance}:", f"{instance}:-3", "::", f"{instance}:{'9' * 40}"):
            resumed = EventReader(port, headers={"Last-Event-ID": bad})  # '¹': str.isdigit() says yes, int() no
            assert resumed.status == 200, bad
            assert resumed.wait(1, PATIENCE), bad  # starts from the latest reading
            resumed.close()
        events.close()


def test_stream_clients_are_capped(camera_app):
    with live_server(camera_app(ServeConfig(max_streams=2))) as port:
        events = EventReader(port)
        assert events.status == 200 and events.wait(1, PATIENCE)
        stream = socket.create_connection(("127.0.0.1", port))
        stream.sendall(b"GET /stream.mjpg HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert stream.recv(4096).startswith(b"HTTP/1.1 200")
        for path in ("/events", "/stream.mjpg"):  # two slots, both taken
            status, headers, body = get(port, path)
            assert status == 503 and headers["retry-after"] == "5", path
            assert "--max-streams" in json.loads(body)["error"] and headers["x-content-type-options"] == "nosniff"
        assert get(port, "/api/info")[0] == 200  # the API still answers
        stream.close()  # a slot comes free when the server notices
        again = wait_for(lambda: (reader := EventReader(port)).status == 200 and reader, PATIENCE)
        assert again and again.wait(1, PATIENCE)
        again.close()
        events.close()


def test_mjpeg_shares_one_encode_per_frame_caps_fps_and_stops_on_disconnect(camera_app):
    fps = 8.0
    config = ServeConfig(stream_fps=fps, keepalive_s=3600.0)  # no keepalive write notices the disconnect for us
    with live_server(camera_app(config)) as port:
        assert wait_for(lambda: get(port, "/healthz")[0] == 200, PATIENCE)
        encodes_before = metric(port, "edgereg_jpeg_encodes_total")
        results: list[list[bytes]] = [[] for _ in range(3)]
        threads = [threading.Thread(target=lambda i=i: results[i].extend(read_mjpeg_parts(port, PATIENCE, parts=6)))
                   for i in range(3)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.monotonic() - started  # measured, not bounded: a slow machine only loosens the caps
        encodes = metric(port, "edgereg_jpeg_encodes_total") - encodes_before
        counts = [len(parts) for parts in results]
        assert counts == [6, 6, 6], counts
        cap = fps * elapsed + 3  # the stream clock's cap over the whole read (30 fps camera)
        assert len({part for parts in results for part in parts}) <= cap, (counts, elapsed)
        assert encodes <= cap and encodes < sum(counts), (encodes, counts, elapsed)  # shared, not one per client
        frame = decode_jpeg(results[0][-1])
        assert frame.shape == (120, 160, 3)
        assert len({part for parts in results for part in parts}) > 3  # the frames change

        for path, endpoint in (("/stream.mjpg", "stream"), ("/events", "events")):
            client = socket.create_connection(("127.0.0.1", port))
            client.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            assert client.recv(4096)
            gauge = f'edgereg_clients{{endpoint="{endpoint}"}}'
            assert wait_for(lambda gauge=gauge: metric(port, gauge) == 1, PATIENCE)
            client.close()  # the server notices the disconnect and closes its side
            assert wait_for(lambda gauge=gauge: metric(port, gauge) == 0, PATIENCE), endpoint


def test_page_number_format_matches_the_overlay():
    assert [format_value(v) for v in (181.234, 0.012345, 1234.5, -2.5, 0.0)] == \
        ["181.2", "0.01235", "1234", "-2.500", "0.000"]
    assert format_value(float("nan")) == "n/a"
