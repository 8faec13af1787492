"""Helpers of the `edgereg serve` tests: an assay-like model with units and range, a video of a
sample whose colour drifts (readings change from frame to frame and pass the quality gate), a
camera double that can be unplugged, a real uvicorn server on a thread, and small readers for the
streaming endpoints. No test needs a camera or the network."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
import time
from pathlib import Path

import cv2
import numpy as np

from edgereg.core.card import ModelCard

LEVELS = (80.0, 350.0)  # mg/L, the card's range


def make_assay_model(path: Path) -> Path:
    """A tiny real ONNX model: conc = 215 + 60 * (mean of the normalized green channel), in mg/L.

    Input ``image (N, 3, 32, 32)``, output ``value (N, 1)``; the circle crop masks the plate.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgereg.export.card_io import embed_card

    card = ModelCard(kind="scalar", targets=("conc",), units=("mg/L",), range=(LEVELS,), input_size=(32, 32),
                     crop="circle", provenance={"dataset": "synthetic assay (test)", "metrics": {"test_rmse": 1.6}})
    inits = [numpy_helper.from_array(np.array([0, 1, 0], np.float32).reshape(3, 1), "pick"),
             numpy_helper.from_array(np.array([60.0], np.float32), "scale"),
             numpy_helper.from_array(np.array([215.0], np.float32), "offset")]
    nodes = [helper.make_node("ReduceMean", ["image"], ["means"], axes=[2, 3], keepdims=0),  # (N, 3)
             helper.make_node("MatMul", ["means", "pick"], ["green"]),  # (N, 1)
             helper.make_node("Mul", ["green", "scale"], ["scaled"]),
             helper.make_node("Add", ["scaled", "offset"], ["value"])]
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 32, 32])
    graph = helper.make_graph(nodes, "assay_test", [image],
                              [helper.make_tensor_value_info("value", TensorProto.FLOAT, ["N", 1])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    embed_card(model, card)
    onnx.save(model, str(path))
    return path


def sample_frame(i: int, *, size=(240, 320), seed=0) -> np.ndarray:
    """(H, W, 3) uint8 BGR: a white plate with a well whose colour holds for 12 frames, then steps
    (a new sample: red -> orange -> yellow -> orange), plus grain that differs in every frame."""
    height, width = size
    rng = np.random.default_rng(seed * 10_000 + i)
    frame = np.full((height, width, 3), 205, np.uint8)
    green = (70, 120, 175, 120)[(i // 12) % 4]
    cv2.circle(frame, (width // 2, height // 2), int(min(size) * 0.36), (50, green, 225), -1, cv2.LINE_AA)
    grain = rng.integers(-12, 13, frame.shape)
    return np.clip(frame.astype(np.int16) + grain, 0, 255).astype(np.uint8)


def write_video(path: Path, n: int = 30, fps: float = 15.0, size=(240, 320)) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (size[1], size[0]))
    for i in range(n):
        writer.write(sample_frame(i, size=size))
    writer.release()
    return path


class SwitchableCamera:
    """Frames of a drifting sample at ``fps``; ``unplugged = True`` makes reads fail and
    ``black = True`` gives black frames, until reset."""

    def __init__(self, fps: float = 30.0, size=(120, 160)) -> None:
        self.period = 1.0 / fps
        self.size = size
        self.unplugged = False
        self.black = False  # frames with the light off: the quality gate withholds them
        self.count = 0
        self.released = False
        self.name = "test camera"

    def read(self):
        time.sleep(self.period)
        if self.unplugged:
            return False, None
        self.count += 1
        if self.black:
            return True, np.zeros((*self.size, 3), np.uint8)
        return True, sample_frame(self.count, size=self.size)

    def release(self) -> None:
        self.released = True


@contextlib.contextmanager
def live_server(app):
    """Run ``app`` with uvicorn on a free loopback port in a thread; yields the port."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def get(port: int, path: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def metric(port: int, name: str) -> float:
    """The value of one sample line (``name`` includes its labels) of /metrics."""
    _, _, body = get(port, "/metrics")
    for line in body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise KeyError(name)


def wait_for(predicate, timeout_s: float, interval_s: float = 0.05):
    """Poll ``predicate()`` until it returns a truthy value; returns it, or None after the timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    return None


class EventReader:
    """Reads /events on a thread: ``records`` (id, reading dict) as they arrive."""

    def __init__(self, port: int, *, headers: dict | None = None, path: str = "/events") -> None:
        self.records: list[tuple[str, dict]] = []
        self.comments: list[str] = []
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.connection.request("GET", path, headers=headers or {})
        self.response = self.connection.getresponse()
        self.status = self.response.status
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        event_id, data = None, []
        try:
            for raw in self.response:
                line = raw.decode().rstrip("\r\n")
                if line.startswith(":"):
                    self.comments.append(line)
                elif line.startswith("id: "):
                    event_id = line[4:]
                elif line.startswith("data: "):
                    data.append(line[6:])
                elif line == "" and data:
                    self.records.append((event_id, json.loads("\n".join(data))))
                    event_id, data = None, []
        except Exception:
            pass

    def wait(self, n: int, timeout_s: float = 60.0) -> list[tuple[str, dict]]:
        wait_for(lambda: len(self.records) >= n, timeout_s)
        return list(self.records)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.connection.sock.shutdown(socket.SHUT_RDWR)
        self.connection.close()


def read_mjpeg_parts(port: int, seconds: float, *, parts: int | None = None) -> list[bytes]:
    """The JPEG parts of /stream.mjpg received within ``seconds`` (stops early after ``parts`` parts)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("GET", "/stream.mjpg")
    response = connection.getresponse()
    boundary = response.getheader("content-type").split("boundary=")[1].encode()
    wanted, parts, deadline = parts, [], time.monotonic() + seconds
    try:
        while time.monotonic() < deadline and (wanted is None or len(parts) < wanted):
            line = response.fp.readline()
            if line.strip() != b"--" + boundary:
                continue
            headers = {}
            while (header := response.fp.readline().strip()):
                key, _, value = header.decode().partition(":")
                headers[key.lower()] = value.strip()
            parts.append(response.fp.read(int(headers["content-length"])))
    finally:
        connection.sock.shutdown(socket.SHUT_RDWR)
        connection.close()
    return parts


def decode_jpeg(data: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, "not a JPEG"
    return image
