"""The server's Prometheus metrics (prometheus_client, one registry per application).

Capture loop: ``edgereg_frames_total``, ``edgereg_readings_total``,
``edgereg_withheld_total{reason}``, ``edgereg_failed_reads_total``, ``edgereg_camera_connected``,
``edgereg_last_frame_age_seconds`` (both read at every scrape from the state ``/healthz`` reads),
``edgereg_frame_seconds`` (histogram of the time from frame
to reading: quality gate + model + smoothing). Streams: ``edgereg_clients{endpoint}`` (open
``/stream.mjpg`` and ``/events`` connections) and ``edgereg_jpeg_encodes_total``. API:
``edgereg_predict_requests_total{code}``, ``edgereg_predict_images_total{outcome}``,
``edgereg_predict_seconds`` (request latency) and ``edgereg_predict_batch_images`` (images per
ONNX Runtime call, the micro-batching at work).
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from edgereg.live.loop import NO_FRAME, Reading

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
FRAME_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class ServerMetrics:
    """The metrics of one server; :meth:`render` gives the exposition text."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.frames = Counter("edgereg_frames", "Frames read from the camera", registry=r)
        self.readings = Counter("edgereg_readings", "Frames that gave a reading", registry=r)
        self.withheld = Counter("edgereg_withheld", "Frames withheld by the quality gate, by reason",
                                ["reason"], registry=r)
        self.failed_reads = Counter("edgereg_failed_reads", "Reads that returned no frame", registry=r)
        self.camera_connected = Gauge("edgereg_camera_connected",
                                      "1 while frames arrive (as /healthz says), 0 when lost or stale", registry=r)
        self.frame_age = Gauge("edgereg_last_frame_age_seconds", "Seconds since the last frame was read",
                               registry=r)
        self.frame_seconds = Histogram("edgereg_frame_seconds", "Time from frame to reading (gate + model)",
                                       buckets=FRAME_BUCKETS, registry=r)
        self.clients = Gauge("edgereg_clients", "Open streaming connections", ["endpoint"], registry=r)
        self.jpeg_encodes = Counter("edgereg_jpeg_encodes", "JPEG encodes of frames (shared by all clients)",
                                    registry=r)
        self.requests = Counter("edgereg_predict_requests", "/api/predict requests by status code", ["code"],
                                registry=r)
        self.images = Counter("edgereg_predict_images", "Uploaded images by outcome (read, failed)",
                              ["outcome"], registry=r)
        self.request_seconds = Histogram("edgereg_predict_seconds", "/api/predict request latency",
                                         buckets=REQUEST_BUCKETS, registry=r)
        self.batch_images = Histogram("edgereg_predict_batch_images", "Images per ONNX Runtime call of the API",
                                      buckets=BATCH_BUCKETS, registry=r)
        for endpoint in ("stream", "events"):
            self.clients.labels(endpoint).set(0)

    def watch_camera(self, connected: Callable[[], bool], frame_age_s: Callable[[], float | None]) -> None:
        """Report the camera at every scrape: ``connected()`` (1/0) and ``frame_age_s()``, the age of
        the last frame in seconds (None before the first frame: reported as -1)."""
        self.camera_connected.set_function(lambda: float(connected()))
        self.frame_age.set_function(lambda: -1.0 if (age := frame_age_s()) is None else age)

    def observe_reading(self, reading: Reading) -> None:
        """Count one reading of the capture loop (called on the capture thread)."""
        if reading.quality == NO_FRAME:
            self.failed_reads.inc()
            return
        self.frames.inc()
        self.frame_seconds.observe(reading.process_ms / 1e3)
        if reading.ok:
            self.readings.inc()
        else:
            self.withheld.labels(reading.quality).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
