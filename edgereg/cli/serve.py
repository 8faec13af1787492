"""`edgereg serve MODEL [--camera SRC]`: a live web page and an HTTP API (needs the ``serve`` extra).

This module parses options, checks that the address is safe to bind, binds the socket itself (so
that a busy port is one clear line and ``--port 0`` picks a free one) and runs uvicorn on it; the
application is ``edgereg.serve.app``. See docs/serve.md.
"""

from __future__ import annotations

import argparse
import ipaddress
import re
import sys

from edgereg.cli.common import command_parser
from edgereg.cli.options import (
    MAX_PIXELS_HELP,
    MAX_THREADS,
    add_card_option,
    add_smoothing_options,
    count,
    non_negative,
    pixels,
    positive,
)
from edgereg.preprocess.decode import DEFAULT_MAX_PIXELS

DESCRIPTION = """\
Serve a model over HTTP: a live page for people, an API for the software around the analyzer.

With --camera (a device index, a video file or a stream URL), one capture loop reads the camera
for every client, with the same quality gate, smoothing, stable flag and reconnects as
`edgereg infer --camera`; a video file plays at its own frame rate and loops, like a camera.
  /              the page: live image with the reading, stable flag, chart, model card
  /stream.mjpg   MJPEG stream with the overlay      /snapshot.jpg  the latest frame
  /events        server-sent events, one JSON reading per frame (the --jsonl schema)
  /api/predict   POST images -> JSON readings (concurrent requests are batched together)
  /api/card      the model card                     /healthz       camera connected, frame age
  /metrics       Prometheus text
Without --camera, the API alone.

Safe by default: binds to 127.0.0.1. Another address needs --token (checked on every endpoint but
/healthz, as 'Authorization: Bearer TOKEN', or opening the page once as /?token=TOKEN) or an
explicit --no-auth. Requests must name the server in their Host header (its address, localhost,
or a name given with --allowed-host); others get 421, so no web page can reach it by DNS rebinding.
"""

EXAMPLES = """\
examples:
  edgereg serve model.int8.onnx --camera 0                      # http://127.0.0.1:8080/
  edgereg serve model.int8.onnx --camera 0 --host 0.0.0.0 --token-file /etc/edgereg/token
  edgereg serve model.int8.onnx                                 # the API alone
  curl -F image=@photo.jpg http://127.0.0.1:8080/api/predict
  curl -N http://127.0.0.1:8080/events
"""

LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost")
TOKEN_CHARS = re.compile(r"[A-Za-z0-9._~+/=-]+")


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = command_parser(
        subparsers, "serve", help="live web page and HTTP API for a camera and a model",
        description=DESCRIPTION, epilog=EXAMPLES,
    )
    parser.add_argument("model", help="an .onnx model exported by edgereg")
    parser.add_argument("--camera", metavar="SRC", help="device index (0), video file or stream URL; "
                                                       "without it, the API alone")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=count(0, 65535), default=8080, help="TCP port (default 8080; 0: any free port)")

    auth = parser.add_argument_group("access")
    auth.add_argument("--token", default=None, help="bearer token required on every endpoint but /healthz")
    auth.add_argument("--token-file", default=None, metavar="FILE",
                      help="read the token from FILE (keeps it out of the process list)")
    auth.add_argument("--no-auth", action="store_true",
                      help="serve a non-loopback --host without a token (a trusted network only)")
    auth.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                      help="also answer requests for this host name (repeatable), e.g. the machine's DNS name "
                           "when clients open http://NAME:PORT/; the bound address and localhost always work")
    auth.add_argument("--max-request-mb", type=positive, default=32.0, metavar="MB",
                      help="largest request body accepted (default 32 MiB)")
    auth.add_argument("--max-images", type=count(1), default=32, metavar="N",
                      help="images per /api/predict request (default 32)")
    auth.add_argument("--max-pixels", type=pixels, default=DEFAULT_MAX_PIXELS, metavar="N",
                      help=MAX_PIXELS_HELP.replace("refuse images", "refuse uploaded images"))

    model = parser.add_argument_group("model")
    model.add_argument("--tta", default=None, help="none, d4 or rot:N (default: the model card's)")
    model.add_argument("--providers", default="auto", help="auto, cpu, cuda, tensorrt, or a comma list")
    model.add_argument("--threads", type=count(1, MAX_THREADS), default=None, metavar="N",
                       help="ONNX Runtime intra-op threads (default: one per core)")
    model.add_argument("--batch", type=count(1), default=32, metavar="N",
                       help="images per inference call when API requests are batched together (default 32)")
    model.add_argument("--batch-wait-ms", type=non_negative, default=2.0, metavar="MS",
                       help="how long a lone API request waits for others to batch with (default 2)")
    add_card_option(model)

    live = parser.add_argument_group("live readout (--camera)")
    add_smoothing_options(live)
    live.add_argument("--no-quality-gate", action="store_true", help="read every frame, whatever its quality")
    live.add_argument("--blur-threshold", type=non_negative, default=None, metavar="X",
                      help="variance of the Laplacian below which a frame is blurred (default 10; 0: off)")
    live.add_argument("--stream-fps", type=positive, default=10.0, metavar="FPS",
                      help="frames per second sent to each /stream.mjpg client at most (default 10)")
    live.add_argument("--jpeg-quality", type=count(1, 100), default=80, metavar="Q",
                      help="JPEG quality of the stream and snapshots, 1..100 (default 80)")
    live.add_argument("--max-streams", type=count(1), default=16, metavar="N",
                      help="open /events and /stream.mjpg connections at most, together (default 16); "
                           "more get 503 with Retry-After")
    live.add_argument("--history", type=positive, default=300.0, metavar="S",
                      help="seconds of readings kept for the page's chart (default 300)")

    logs = parser.add_argument_group("logs")
    logs.add_argument("--access-log", action="store_true",
                      help="log every request (off by default: tokens in URLs would be logged)")
    logs.add_argument("--log-level", choices=("critical", "error", "warning", "info", "debug"), default="warning",
                      help="uvicorn's log level (default warning)")
    return parser


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_policy(host: str, names: list[str]) -> tuple[tuple[str, ...], bool]:
    """The Host names the server answers for ``--host host --allowed-host NAME...``.

    Returns:
        (names, any_ip): the bound address, the loopback names and ``names``; ``any_ip`` is True
        for a wildcard bind (0.0.0.0, ::), reachable at every address of the machine.
    """
    from edgereg.serve.guard import LOOPBACK_HOSTS

    bound = host.strip().strip("[]").lower()
    allowed = dict.fromkeys([*LOOPBACK_HOSTS, *LOOPBACK_NAMES, bound, *(name.strip().lower() for name in names)])
    try:
        wildcard = ipaddress.ip_address(bound).is_unspecified
    except ValueError:
        wildcard = bound == ""
    return tuple(name for name in allowed if name), wildcard


def connection_limit(max_streams: int) -> int:
    """uvicorn's ``limit_concurrency``: every stream slot plus room for API and page requests
    (connections beyond it get uvicorn's 503 before any work is done)."""
    return max_streams + 64


def resolve_token(args) -> str | None:
    """The token from --token or --token-file; refuses an unsafe or contradictory combination.

    Raises:
        EdgeregError: both token options, a token with --no-auth, an unreadable or empty file, or
            a non-loopback --host with neither a token nor --no-auth.
    """
    from edgereg.errors import EdgeregError

    if args.token is not None and args.token_file is not None:
        raise EdgeregError("give --token or --token-file, not both")
    token = args.token
    if args.token_file is not None:
        try:
            with open(args.token_file, encoding="utf-8") as handle:
                token = handle.read().strip()
        except OSError as exc:
            raise EdgeregError(f"cannot read --token-file '{args.token_file}' ({exc.strerror or exc}); "
                               "check the path and its permissions") from None
        if not token:
            raise EdgeregError(f"--token-file '{args.token_file}' is empty; write the token into it")
    if token is not None and not token.strip():
        raise EdgeregError("--token is empty; give a secret, e.g. --token $(openssl rand -hex 16)")
    if token is not None and not TOKEN_CHARS.fullmatch(token):
        raise EdgeregError("the token may hold letters, digits and - . _ ~ + / = only (it travels in headers, "
                           "URLs and a cookie); e.g. openssl rand -hex 16")
    if token is not None and args.no_auth:
        raise EdgeregError("--no-auth turns the token check off, and --token turns it on; choose one")
    if token is None and not args.no_auth and not is_loopback(args.host):
        raise EdgeregError(f"--host {args.host} makes the camera and the API reachable from the network: "
                           "give --token TOKEN (or --token-file FILE), or --no-auth on a trusted network")
    return token


def bind_socket(host: str, port: int):
    """A listening TCP socket on (host, port).

    Raises:
        EdgeregError: unknown host, port in use, or a port that needs privileges.
    """
    import errno
    import socket

    from edgereg.errors import EdgeregError

    try:
        family, kind, proto, _, address = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise EdgeregError(f"--host {host!r} is not an address of this machine ({exc.strerror}); "
                           "use 127.0.0.1, 0.0.0.0 or an interface's IP") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise EdgeregError(f"port {port} on {host} is in use (another server?); pick another with --port, "
                               "or --port 0 for any free one") from None
        if exc.errno == errno.EACCES:
            raise EdgeregError(f"port {port} needs privileges; use a port above 1023, e.g. --port 8080") from None
        raise EdgeregError(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from None
    sock.set_inheritable(True)
    return sock


def run(args) -> int:
    from edgereg.cli.options import card_from_option
    from edgereg.errors import require_extra

    for module in ("starlette", "uvicorn", "prometheus_client", "python_multipart"):
        require_extra(module, "serve")
    token = resolve_token(args)

    import uvicorn

    from edgereg.batch.sources import CameraSource, redact_credentials
    from edgereg.core.predictor import Predictor
    from edgereg.live.loop import LiveConfig, LiveFeed
    from edgereg.live.quality import QualityConfig
    from edgereg.serve.app import ServeConfig, create_app
    from edgereg.serve.frames import JpegOptions

    allowed_hosts, any_ip_host = host_policy(args.host, args.allowed_host)
    config = ServeConfig(token=token, allowed_hosts=allowed_hosts, any_ip_host=any_ip_host,
                         stream_fps=args.stream_fps, jpeg=JpegOptions(quality=args.jpeg_quality),
                         max_request_bytes=int(args.max_request_mb * 2**20), max_images=args.max_images,
                         batch_images=args.batch, batch_wait_s=args.batch_wait_ms / 1e3, history_s=args.history,
                         max_pixels=args.max_pixels, max_streams=args.max_streams)
    # one predictor for the camera and the API; frames are too small to wake numba's workers
    predictor = Predictor(args.model, providers=args.providers, tta=args.tta, batch_size=args.batch,
                          threads=args.threads, preprocess_parallel=False, card=card_from_option(args))
    feed = None
    if args.camera is not None:
        quality = None
        if not args.no_quality_gate:
            quality = (QualityConfig() if args.blur_threshold is None
                       else QualityConfig(blur_threshold=args.blur_threshold))
        # retry every 3 s at most: a page watcher should see the camera back soon after it is
        live = LiveConfig(smooth_window=args.smooth, smooth_method=args.smooth_method,
                          stable_tolerance=args.stable_tol, quality=quality, retry_max_s=3.0)
        source = CameraSource(args.camera, loop=True, realtime=True)
        feed = LiveFeed(source, predictor, config=live)

    def summary() -> None:  # at shutdown, before uvicorn re-raises the signal that stopped it
        if feed is not None:
            print(f"edgereg: {feed.stats.summary()}", file=sys.stderr, flush=True)

    app = create_app(predictor, feed, config, on_shutdown=summary)
    sock = bind_socket(args.host, args.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    what = f"camera {redact_credentials(feed.name)}" if feed is not None else "the API alone (no --camera)"
    print(f"edgereg: serving {args.model} with {what} on http://{shown}:{port}/"
          + (" (token required: open /?token=TOKEN once)" if token else "") + "; Ctrl-C to stop",
          file=sys.stderr, flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level=args.log_level, access_log=args.access_log,
                                           timeout_graceful_shutdown=1, lifespan="on",
                                           limit_concurrency=connection_limit(args.max_streams)))
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    return 0
