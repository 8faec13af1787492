"""Access control and request limits, as ASGI middleware around the application.

:class:`HostGuard`: the ``Host`` header must name this server: one of the allowed names (the
bound address, the loopback names, ``--allowed-host``) or, on a wildcard bind (``0.0.0.0``),
any IP address. Otherwise 421 and a one-line reason: a web page on another site that re-points
its DNS name at this address (DNS rebinding) cannot read the camera or the API through a
browser, even on a loopback server without a token.

:class:`TokenGuard`: with a token configured, every request but the open paths (``/healthz``)
must carry it, as ``Authorization: Bearer TOKEN`` (API clients, Prometheus), as the
``edgereg_token`` cookie (the page's own requests: an ``<img>`` and an ``EventSource`` cannot set
headers), or as ``?token=TOKEN`` in the URL (to open the page, or a stream in a viewer that can
only take a URL). A page opened with ``?token=`` gets the cookie (HttpOnly, SameSite=Lax), so
its requests authenticate without the token in every URL; Lax keeps other sites' scripts, images
and form posts from carrying it, and lets a link from another page open ours. Tokens are
compared in constant time.
Failures get 401 with ``WWW-Authenticate: Bearer`` and a one-line JSON reason.

:class:`BodyLimit`: a request body larger than ``max_bytes`` is refused with 413, at once when
``Content-Length`` says so, otherwise as soon as the streamed body passes the limit.

:class:`SecurityHeaders`: ``X-Content-Type-Options: nosniff``, ``X-Frame-Options: DENY``,
``Referrer-Policy: no-referrer`` and a Content-Security-Policy that lets the page load only from
the server itself, on every response. No CORS headers are ever sent (cross-origin scripts cannot
read the API).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from collections.abc import Collection, Sequence
from http.cookies import SimpleCookie
from urllib.parse import parse_qs

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

COOKIE = "edgereg_token"
CSP = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
       "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")


async def send_json(send: Send, status: int, payload: dict, headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")  # names no other site can take (resolved on this machine)


def host_name(header: str) -> str:
    """The host of a ``Host`` header without its port, lower case (``[::1]:8080`` -> ``::1``)."""
    host = header.strip().lower()
    if host.startswith("["):  # an IPv6 literal
        return host[1:].partition("]")[0]
    if host.count(":") == 1:
        host = host.partition(":")[0]
    return host.rstrip(".")


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class HostGuard:
    """Answer only requests whose ``Host`` names this server (see the module docstring).

    Args:
        allowed: host names or addresses (without port); ``"*"`` turns the check off.
        any_ip: also allow every IP-address ``Host`` (a wildcard bind is reachable at all of this
            machine's addresses; an IP address cannot be re-pointed like a DNS name).
    """

    def __init__(self, app: ASGIApp, allowed: Collection[str], *, any_ip: bool = False) -> None:
        self.app = app
        self.allowed = frozenset(host_name(name) for name in allowed)
        self.any_ip = any_ip

    def permits(self, header: str | None) -> bool:
        if header is None or "*" in self.allowed:  # no Host: not a browser (HTTP/1.0 tools)
            return True
        host = host_name(header)
        return host in self.allowed or (self.any_ip and _is_ip(host))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header = _header(scope, b"host")
        if header is None or self.permits(header):
            await self.app(scope, receive, send)
            return
        name = host_name(header)[:100]
        await send_json(send, 421, {"error": f"Host '{name}' is not a name of this server (a DNS rebinding "
                                             f"attempt?); open it by its address, or start it with "
                                             f"--allowed-host {name}"})


class TokenGuard:
    """Require ``token`` on every HTTP request except ``open_paths`` (see the module docstring)."""

    def __init__(self, app: ASGIApp, token: str, *, open_paths: Collection[str] = ("/healthz",)) -> None:
        if not token:
            raise ValueError("TokenGuard needs a non-empty token")
        self.app = app
        self.token = token.encode()
        self.open_paths = frozenset(open_paths)

    def _matches(self, candidate: str | None) -> bool:
        return candidate is not None and hmac.compare_digest(candidate.encode(), self.token)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        authorization = _header(scope, b"authorization")
        if authorization is not None:
            scheme, _, credentials = authorization.partition(" ")
            if scheme.lower() == "bearer" and self._matches(credentials.strip()):
                await self.app(scope, receive, send)
                return
            await self._refuse(send, "wrong token in the Authorization header; send 'Authorization: Bearer TOKEN' "
                                     "with the server's --token")
            return
        query = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token", [None])[-1]
        if query is not None:
            if not self._matches(query):
                await self._refuse(send, "wrong ?token= in the URL; use the server's --token")
                return
            await self.app(scope, receive, self._setting_cookie(send))
            return
        cookie = SimpleCookie()
        try:
            cookie.load(_header(scope, b"cookie") or "")
        except Exception:
            cookie = SimpleCookie()
        if COOKIE in cookie and self._matches(cookie[COOKIE].value):
            await self.app(scope, receive, send)
            return
        await self._refuse(send, "this server needs its token: send 'Authorization: Bearer TOKEN', or open "
                                 "the page once as /?token=TOKEN")

    def _setting_cookie(self, send: Send) -> Send:
        """``send`` that adds the session cookie to the response (the token came in the URL)."""
        value = f"{COOKIE}={self.token.decode()}; Path=/; HttpOnly; SameSite=Lax".encode("latin-1")

        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"set-cookie", value)]}
            await send(message)
        return wrapped

    @staticmethod
    async def _refuse(send: Send, reason: str) -> None:
        await send_json(send, 401, {"error": reason}, [(b"www-authenticate", b'Bearer realm="edgereg"')])


class BodyLimit:
    """Refuse request bodies over ``max_bytes`` with 413 (see the module docstring)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = int(max_bytes)

    def _message(self) -> str:
        return (f"request body over the server's limit of {self.max_bytes / 2**20:g} MiB; send fewer or smaller "
                "images per request, or raise the server's --max-request-mb")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = _header(scope, b"content-length")
        if length is not None and length.strip().isdigit() and int(length) > self.max_bytes:
            await send_json(send, 413, {"error": self._message()})
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(413, self._message())
            return message

        await self.app(scope, counting_receive, send)


class SecurityHeaders:
    """Add the headers of the module docstring to every HTTP response."""

    HEADERS = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
               (b"referrer-policy", b"no-referrer"), (b"content-security-policy", CSP.encode())]

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *self.HEADERS]}
            await send(message)
        await self.app(scope, receive, wrapped)
