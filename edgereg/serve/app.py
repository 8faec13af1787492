"""The Starlette application of ``edgereg serve`` (needs the ``serve`` extra).

Endpoints (every one but ``/healthz`` behind the token when one is set, see ``guard``):

* ``GET /``: the page (static HTML/JS/CSS shipped in the package; nothing from the internet).
* ``GET /stream.mjpg``: multipart MJPEG of the frames with the overlay, at most ``stream_fps``.
* ``GET /snapshot.jpg``: the latest frame (``?overlay=0``: as the camera gave it).
* ``GET /events``: server-sent events, one reading per frame in the ``--jsonl`` schema; the ``id``
  is ``INSTANCE:SEQ``, so a client that reconnects with ``Last-Event-ID`` gets what it missed.
* ``GET /api/history?seconds=N``: recent readings as columns, for the page's chart.
* ``POST /api/predict``: images (multipart form files, or one image as the body) -> readings.
* ``GET /api/card``: the model card. ``GET /api/info``: model file, TTA, providers, camera.
* ``GET /healthz``: camera connected and age of the last frame (503 when the camera is lost).
* ``GET /metrics``: Prometheus text.

Without a camera, the live endpoints answer 404 and the page offers uploads to ``/api/predict``.
Error bodies are ``{"error": "one line"}``; every response, errors and 500s included, carries the
security headers (``guard.SecurityHeaders``). Requests whose ``Host`` is not a name of the server
get 421 (``guard.HostGuard``); more than ``max_streams`` open ``/events`` and ``/stream.mjpg``
connections together get 503 with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from importlib import resources
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from edgereg import __version__
from edgereg.batch.flags import prediction_flags
from edgereg.batch.sources import redact_credentials
from edgereg.core.predictor import Predictor
from edgereg.core.rows import reading_by_field
from edgereg.json_values import finite_values
from edgereg.live.loop import NO_FRAME, LiveFeed, Reading
from edgereg.preprocess.decode import DEFAULT_MAX_PIXELS
from edgereg.serve.batcher import MicroBatcher
from edgereg.serve.frames import FrameEncoder, JpegOptions, StreamClock
from edgereg.serve.guard import LOOPBACK_HOSTS, BodyLimit, HostGuard, SecurityHeaders, TokenGuard
from edgereg.serve.hub import CameraState, ReadingHub
from edgereg.serve.metrics import CONTENT_TYPE, ServerMetrics
from edgereg.serve.uploads import Upload, prepare_uploads

BOUNDARY = "edgeregframe"
NO_CAMERA = ("this server has no camera (it was started without --camera); "
             "POST images to /api/predict, or restart it with --camera SRC")


@dataclass(frozen=True)
class ServeConfig:
    """Options of the server (the CLI's flags)."""

    token: str | None = None  # bearer token for every endpoint but /healthz; None: no check
    stream_fps: float = 10.0  # /stream.mjpg shows at most this many frames per second (one clock for all clients)
    jpeg: JpegOptions = field(default_factory=JpegOptions)
    max_request_bytes: int = 32 * 2**20  # larger request bodies get 413
    max_images: int = 32  # images per /api/predict request
    max_pixels: int | None = DEFAULT_MAX_PIXELS  # uploads declaring more pixels are refused (None: no limit)
    batch_images: int = 32  # images per ONNX Runtime call when requests are micro-batched
    batch_wait_s: float = 0.002  # how long a lone request waits for others to batch with
    history_s: float = 300.0  # readings kept for the chart and for event-stream resumes
    stale_after_s: float = 5.0  # /healthz reports the camera lost when no frame came for this long
    keepalive_s: float = 15.0  # an idle /events stream gets a comment this often (proxies, dead peers)
    max_streams: int = 16  # open /events and /stream.mjpg connections at most (more: 503 with Retry-After)
    allowed_hosts: tuple[str, ...] = LOOPBACK_HOSTS  # Host names answered (others: 421); "*": any
    any_ip_host: bool = False  # also answer any IP-address Host (a wildcard bind such as 0.0.0.0)

    def __post_init__(self) -> None:
        if not self.stream_fps > 0:
            raise ValueError(f"stream_fps must be > 0, got {self.stream_fps}")
        if self.max_images < 1 or self.batch_images < 1 or self.max_streams < 1:
            raise ValueError("max_images, batch_images and max_streams must be >= 1")


class _HeldStream(StreamingResponse):
    """A streaming response that gives its stream slot back when it ends, however it ends."""

    def __init__(self, content, release: Callable[[], None], **options) -> None:
        super().__init__(content, **options)
        self._release = release

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()


class _Server:
    """The state behind the endpoints: one predictor, one capture loop, its readings, the encoder."""

    def __init__(self, predictor: Predictor, feed: LiveFeed | None, config: ServeConfig,
                 on_shutdown: Callable[[], None] | None = None) -> None:
        self.predictor = predictor
        self.on_shutdown = on_shutdown
        self.feed = feed
        self.config = config
        self.metrics = ServerMetrics()
        self.hub = ReadingHub(history_s=config.history_s)
        self.encoder = FrameEncoder(predictor.card, config.jpeg, on_encode=self.metrics.jpeg_encodes.inc)
        self.stream_clock = StreamClock(1.0 / config.stream_fps)
        self.batcher: MicroBatcher | None = None
        self._unsubscribe = None
        self._open_streams = 0  # /events and /stream.mjpg responses in progress (event loop only)
        if feed is not None:
            self.metrics.watch_camera(lambda: self._camera()[1], lambda: self.hub.camera_state().frame_age_s)

    # ------------------------------------------------------------------ lifecycle

    @asynccontextmanager
    async def lifespan(self, app):
        self.hub.bind(asyncio.get_running_loop())
        self.batcher = MicroBatcher(self.predictor.predict_prepared, max_images=self.config.batch_images,
                                    max_wait_s=self.config.batch_wait_s, on_batch=self._on_batch)
        if self.feed is not None:
            self._unsubscribe = self.feed.subscribe(self._on_reading)
            self.feed.start()
        try:
            yield
        finally:
            if self.feed is not None:
                self.feed.stop()
                self._unsubscribe()
            self.batcher.close()
            if self.on_shutdown is not None:
                self.on_shutdown()

    def _on_reading(self, reading: Reading) -> None:  # on the capture thread
        self.metrics.observe_reading(reading)
        self.hub.publish(reading)

    def _on_batch(self, images: int, seconds: float) -> None:  # on the batcher thread
        self.metrics.batch_images.observe(images)

    def _need_camera(self) -> None:
        if self.feed is None:
            raise HTTPException(404, NO_CAMERA)

    # ------------------------------------------------------------------ the page and static data

    async def page(self, request: Request) -> Response:
        index = resources.files("edgereg.serve") / "static" / "index.html"
        return FileResponse(str(index), headers={"cache-control": "no-cache"})

    async def card(self, request: Request) -> Response:
        return JSONResponse(asdict(self.predictor.card))

    async def info(self, request: Request) -> Response:
        card = self.predictor.card
        return JSONResponse({
            "version": __version__, "model": self.predictor.path.name, "tta": str(self.predictor.tta),
            "providers": list(self.predictor.providers), "targets": list(card.targets), "units": card.unit_of,
            "camera": redact_credentials(self.feed.name) if self.feed is not None else None,
            "stream_fps": self.config.stream_fps, "history_s": self.config.history_s,
            "max_images": self.config.max_images, "max_request_bytes": self.config.max_request_bytes,
            "max_pixels": self.config.max_pixels,
        })

    # ------------------------------------------------------------------ health and metrics

    async def healthz(self, request: Request) -> Response:
        if self.feed is None:
            return JSONResponse({"status": "ok", "camera": None})
        status, connected, state = self._camera()
        age = state.frame_age_s
        body = {"status": status, "camera": {
            "connected": connected, "last_frame_age_s": None if age is None else round(age, 3),
            "frames": self.feed.stats.frames, "readings": self.feed.stats.readings,
            "failed_reads": self.feed.stats.failed_reads,
            "error": None if self.feed.error is None else redact_credentials(str(self.feed.error))}}
        return JSONResponse(body, status_code=200 if status == "ok" else 503)

    def _camera(self) -> tuple[str, bool, CameraState]:
        """(status, connected, state) of the camera, judged from one hub state (the one that
        ``/snapshot.jpg`` and ``/events`` serve), so ``/healthz`` and ``/metrics`` agree with them."""
        state = self.hub.camera_state()
        running = self.feed is not None and self.feed.running  # asked only with a camera
        connected = running and state.connected(self.config.stale_after_s)
        if not running:
            status = "stopped"
        elif connected:
            status = "ok"
        else:
            status = "camera_lost" if state.lost or state.frame_age_s is None else "stale"
        return status, connected, state

    async def metrics_text(self, request: Request) -> Response:
        return Response(self.metrics.render(), media_type=CONTENT_TYPE)

    # ------------------------------------------------------------------ live streams

    async def snapshot(self, request: Request) -> Response:
        self._need_camera()
        overlay = request.query_params.get("overlay", "1") not in ("0", "false", "no")
        item = self.hub.latest()
        if item is None:
            raise HTTPException(503, "no frame yet: the camera has not delivered its first frame")
        lost = item.reading.quality == NO_FRAME
        if lost and not overlay:
            raise HTTPException(503, f"camera lost, retrying ({redact_credentials(item.reading.note or NO_FRAME)})")
        jpeg = await anyio.to_thread.run_sync(
            lambda: self.encoder.jpeg(item, image_item=self.hub.latest_with_image(), overlay=overlay))
        headers = {"cache-control": "no-store", "x-edgereg-seq": str(item.seq),
                   "x-edgereg-camera": "lost" if lost else "connected"}
        if item.reading.frame is not None:
            headers["x-edgereg-frame"] = str(item.reading.frame)
        return Response(jpeg, media_type="image/jpeg", headers=headers)

    def _open_stream(self, content, media_type: str) -> Response:
        """A streaming response holding one of the ``max_streams`` slots; 503 when none is free."""
        if self._open_streams >= self.config.max_streams:
            raise HTTPException(503, f"all {self.config.max_streams} stream slots are in use (/events and "
                                     "/stream.mjpg together); retry later, close another viewer, or raise the "
                                     "server's --max-streams", headers={"retry-after": "5"})
        self._open_streams += 1

        def release() -> None:
            self._open_streams -= 1
        return _HeldStream(content, release, media_type=media_type,
                           headers={"cache-control": "no-store", "x-accel-buffering": "no"})

    async def stream(self, request: Request) -> Response:
        self._need_camera()
        return self._open_stream(self._mjpeg(), f"multipart/x-mixed-replace; boundary={BOUNDARY}")

    async def _mjpeg(self):
        """One JPEG part per frame of the shared stream clock; cancelled when the client disconnects."""
        gauge = self.metrics.clients.labels("stream")
        gauge.inc()
        try:
            sent_seq = -1
            while True:
                if not await self.hub.wait_newer(sent_seq, timeout_s=1.0):
                    continue
                item = self.stream_clock.pick(self.hub.latest())
                if item.seq == sent_seq:  # the next stream frame is not due yet
                    await asyncio.sleep(max(0.005, self.stream_clock.due_in()))
                    continue
                jpeg = await anyio.to_thread.run_sync(
                    lambda item=item: self.encoder.jpeg(item, image_item=self.hub.latest_with_image()))
                sent_seq = item.seq
                yield (f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n"
                       .encode() + jpeg + b"\r\n")
        finally:
            gauge.dec()

    async def events(self, request: Request) -> Response:
        self._need_camera()
        cursor = self._resume_cursor(request.headers.get("last-event-id"))
        return self._open_stream(self._sse(cursor), "text/event-stream")

    def _resume_cursor(self, last_event_id: str | None) -> int:
        """The sequence number to send after: the client's last event when it is from this server
        instance and still buffered, else just before the latest reading (it is sent at once).
        An id this server did not write (another instance, malformed) is ignored."""
        latest = self.hub.latest()
        start = latest.seq - 1 if latest is not None else 0
        if last_event_id:
            instance, _, text = last_event_id.partition(":")
            # ASCII digits only: str.isdigit() also accepts '¹' and '٣', which int() refuses or reads
            seq = int(text) if text.isascii() and text.isdigit() and len(text) <= 18 else None
            if instance == self.hub.instance and seq is not None and seq <= self.hub.seq:
                oldest = self.hub.oldest_seq()
                if oldest is not None and seq >= oldest - 1:
                    return seq
        return start

    async def _sse(self, cursor: int):
        gauge = self.metrics.clients.labels("events")
        gauge.inc()
        try:
            yield "retry: 1000\n\n"  # reconnect 1 s after a drop (server restart, network)
            while True:
                items = self.hub.since(cursor)
                if items:
                    yield "".join(f"id: {self.hub.instance}:{item.seq}\ndata: {item.json}\n\n" for item in items)
                    cursor = items[-1].seq
                elif not await self.hub.wait_newer(cursor, timeout_s=self.config.keepalive_s):
                    yield ": keepalive\n\n"
        finally:
            gauge.dec()

    async def history(self, request: Request) -> Response:
        self._need_camera()
        try:
            seconds = float(request.query_params.get("seconds", self.config.history_s))
        except ValueError:
            raise HTTPException(400, "seconds must be a number, e.g. /api/history?seconds=300") from None
        seconds = min(max(seconds, 0.0), self.config.history_s)
        return JSONResponse(self.hub.history(seconds))

    # ------------------------------------------------------------------ the API

    async def predict(self, request: Request) -> Response:
        started = time.perf_counter()
        code = 500
        try:
            response = await self._predict(request)
            code = response.status_code
            return response
        except HTTPException as exc:
            code = exc.status_code
            raise
        finally:
            self.metrics.requests.labels(str(code)).inc()
            self.metrics.request_seconds.observe(time.perf_counter() - started)

    async def _predict(self, request: Request) -> Response:
        uploads = await self._read_uploads(request)
        prepared = await anyio.to_thread.run_sync(
            lambda: prepare_uploads(uploads, self.predictor.config, max_pixels=self.config.max_pixels))
        readings: list[dict | None] = [None] * len(uploads)
        if len(prepared.frames):
            batcher = self.batcher
            if batcher is None:  # requests are served between the lifespan's start and its end
                raise HTTPException(503, "the server is starting or stopping; try again")
            result = await asyncio.wrap_future(batcher.submit(prepared.frames, prepared.boxes))
            flags = prediction_flags(self.predictor.card, result, prepared.boxes)
            for row, position in enumerate(prepared.index):
                numbers = reading_by_field(result.names, result.values[row],
                                           None if result.spread is None else result.spread[row],
                                           None if result.lo is None else result.lo[row],
                                           None if result.hi is None else result.hi[row])
                reading = {
                    "index": position, "name": uploads[position].name,
                    "value": finite_values(numbers["value"]), "spread": finite_values(numbers["spread"]),
                    "flags": list(flags[row]),
                }
                if result.lo is not None:  # the card's intervals, at its confidence, as folder scoring writes them
                    reading["lo"] = finite_values(numbers["lo"])
                    reading["hi"] = finite_values(numbers["hi"])
                readings[position] = reading
        for position, name, reason in prepared.errors:
            readings[position] = {"index": position, "name": name, "error": reason}
        self.metrics.images.labels("read").inc(len(prepared.index))
        self.metrics.images.labels("failed").inc(len(prepared.errors))
        status = 200 if prepared.index else 422
        return JSONResponse({"model": self.predictor.path.name, "readings": readings}, status_code=status)

    async def _read_uploads(self, request: Request) -> list[Upload]:
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        uploads: list[Upload] = []
        if content_type == "multipart/form-data":
            try:
                form = await request.form(max_files=self.config.max_images, max_fields=self.config.max_images + 16)
            except HTTPException as exc:
                if exc.status_code == 400:
                    raise HTTPException(400, f"{exc.detail} (at most {self.config.max_images} images per "
                                             "request; send the rest in another request)") from None
                raise
            try:
                for key, value in form.multi_items():
                    if not isinstance(value, str):  # an UploadFile
                        uploads.append(Upload(value.filename or key, await value.read()))
            finally:
                await form.close()
        elif content_type.startswith("image/") or content_type == "application/octet-stream":
            name = request.headers.get("x-filename") or "image"
            uploads.append(Upload(name, await request.body()))
        else:
            raise HTTPException(415, "send images as multipart/form-data (curl -F image=@photo.jpg URL) or one "
                                     f"image as the body with Content-Type: image/jpeg; got {content_type or 'none'!r}")
        if not uploads:
            raise HTTPException(400, "no image in the request: add one or more files (curl -F image=@photo.jpg URL)")
        return uploads


async def _http_error(request: Request, exc: HTTPException) -> Response:
    headers = getattr(exc, "headers", None)
    return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=headers)


async def _server_error(request: Request, exc: Exception) -> Response:
    """A bug or a failing model: JSON like every other error (the traceback goes to the server's log)."""
    first_line = (str(exc).strip().splitlines() or [""])[0][:200]
    return JSONResponse({"error": f"internal error ({type(exc).__name__}: {first_line}); see the server's log"},
                        status_code=500)


class _Application(Starlette):
    """Starlette with the security headers outside its error handling, so that 500s carry them too
    (Starlette puts its ServerErrorMiddleware outside every user middleware)."""

    def build_middleware_stack(self):
        return SecurityHeaders(super().build_middleware_stack())


def create_app(predictor: Predictor, feed: LiveFeed | None = None, config: ServeConfig = ServeConfig(), *,
               on_shutdown: Callable[[], None] | None = None) -> Starlette:
    """The ASGI application: the page, the streams and the API around one predictor and one capture loop.

    The capture loop (``feed``, not yet started) starts with the application's lifespan and stops
    with it; without a feed the server is the API alone. ``on_shutdown()`` is called last when the
    application stops (the CLI prints its summary there).
    """
    server = _Server(predictor, feed, config, on_shutdown)
    static = resources.files("edgereg.serve") / "static"
    routes = [
        Route("/", server.page),
        Route("/stream.mjpg", server.stream),
        Route("/snapshot.jpg", server.snapshot),
        Route("/events", server.events),
        Route("/api/history", server.history),
        Route("/api/predict", server.predict, methods=["POST"]),
        Route("/api/card", server.card),
        Route("/api/info", server.info),
        Route("/healthz", server.healthz),
        Route("/metrics", server.metrics_text),
        Mount("/static", StaticFiles(directory=str(static)), name="static"),
    ]
    middleware = [Middleware(HostGuard, allowed=config.allowed_hosts, any_ip=config.any_ip_host)]
    if config.token:
        middleware.append(Middleware(TokenGuard, token=config.token))
    middleware.append(Middleware(BodyLimit, max_bytes=config.max_request_bytes))
    handlers: dict[Any, Callable[..., Any]] = {HTTPException: _http_error, Exception: _server_error}
    app = _Application(routes=routes, middleware=middleware, lifespan=server.lifespan, exception_handlers=handlers)
    app.state.server = server
    return app
