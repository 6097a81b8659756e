"""An aiohttp server for untrusted clients: every refusal is JSON, and slow or idle clients are cut off.

aiohttp answers what no handler sees (a request it cannot parse, a header line too long, a handler's crash) in
plain text, and keeps a connection that never finishes its request headers open for ever. A device API
promises `{"error": reason, "detail": ...}` on every refusal and must not be held open by a few hundred slow
clients, so this module adds:

- a middleware that turns aiohttp's own HTTP errors (404, 405, 413, ...) and any unexpected exception into the
  JSON error body (a crash is a 500 `internal` whose detail names no internals, logged with its traceback);
- a request handler whose parse errors (400, 431, ...) are JSON too, which closes a connection that has not
  sent complete request headers within `header_timeout`, and which closes idle keep-alive connections after
  `keepalive_timeout`.

Handlers that read a body bound the read with `read_body` (a 408 `request_timeout` when it takes too long)."""

import asyncio
import re
import ssl
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web, web_protocol, web_server
from aiohttp.http_exceptions import HttpProcessingError

log = structlog.get_logger(__name__)

HEADER_TIMEOUT_S = 10.0
KEEPALIVE_TIMEOUT_S = 30.0
BODY_TIMEOUT_S = 30.0

_REASONS = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 408: "request_timeout",
            413: "body_too_large", 414: "uri_too_long", 415: "unsupported_media_type",
            431: "headers_too_large"}  # fmt: skip


class HttpRefusal(Exception):
    """A refusal raised by a handler: answered as the JSON error body with `status`."""

    def __init__(self, status: int, reason: str, detail: str, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status, self.reason, self.detail, self.headers = status, reason, detail, headers or {}


def error_body(status: int, reason: str | None, detail: str) -> dict[str, str]:
    return {"error": reason or _REASONS.get(status, f"http_{status}"), "detail": detail}


def json_error(status: int, detail: str, reason: str | None = None, headers: Any = None) -> web.Response:
    return web.json_response(error_body(status, reason, detail), status=status, headers=headers)


@web.middleware
async def json_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {k: v for k, v in exc.headers.items() if k.lower() not in ("content-type", "content-length")}
        return json_error(exc.status, _detail(request, exc), headers=headers)
    except HttpRefusal as refusal:
        return json_error(refusal.status, refusal.detail, refusal.reason, refusal.headers)
    except Exception:
        log.exception("request failed", method=request.method, path=request.path)
        return json_error(500, "the server failed to handle this request; it was logged", "internal")


def _detail(request: web.Request, exc: web.HTTPException) -> str:
    if exc.status == 404:
        return f"no resource at {request.path!r}; see docs/devices.md for the device API"
    if exc.status == 405:
        allowed = exc.headers.get("Allow", "")
        return f"{request.method} is not allowed on {request.path!r}; allowed: {allowed or 'none'}"
    return exc.text or HTTPStatus(exc.status).phrase


async def read_body(request: web.BaseRequest, timeout: float | None = None) -> bytes:
    """The request body within `timeout` (default BODY_TIMEOUT_S); a JSON 408 for a client that sends it too
    slowly, a 400 for a body whose Content-Encoding does not decode."""
    timeout = BODY_TIMEOUT_S if timeout is None else timeout
    try:
        if request.content.is_eof():  # the whole body has arrived (the common case): reading it cannot wait
            return await request.read()
        async with asyncio.timeout(timeout):
            return await request.read()
    except TimeoutError:
        raise HttpRefusal(408, "request_timeout", f"the request body did not arrive within {timeout:g} s") from None
    except (HttpProcessingError, web_protocol.RequestPayloadError) as exc:  # e.g. gzip that does not decompress
        detail = " ".join(str(exc).split())
        raise HttpRefusal(400, "malformed_body", f"the request body cannot be read: {detail}") from None


class _DeviceRequestHandler(web_protocol.RequestHandler):
    """aiohttp's handler with JSON parse errors and a deadline for the first request's headers."""

    header_timeout = HEADER_TIMEOUT_S

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        asyncio.get_running_loop().call_later(self.header_timeout, self._close_if_silent)

    def _close_if_silent(self) -> None:
        """A client that opened a connection but did not finish its request headers in time (slowloris)."""
        if self._request_count == 0 and self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        super().handle_error(request, status, exc, message)  # logs it and checks nothing was sent yet
        detail = message or HTTPStatus(status).phrase
        if status == 500:
            detail = "the server failed to handle this request; it was logged"
        response = json_error(status, detail, "internal" if status == 500 else None)
        response.force_close()
        return response


class _DeviceServer(web_server.Server):
    def __call__(self) -> web_protocol.RequestHandler:
        return _DeviceRequestHandler(self, loop=self._loop, **self._kwargs)


class HotRoute:
    """The one route that carries nearly every request (devices' telemetry), served before the Application.

    aiohttp's Application resolves each request through its router, builds its match info and wraps the handler in
    the middlewares; for a request of a few hundred microseconds that is a noticeable share. A request whose method
    is `method` and whose path is plainly `template` (its `{name}` segments only ASCII letters, digits, `_` and `-`,
    no query: nothing the router would decode, normalise or cut off) goes straight to `handler(request,
    *segments)` inside the same `json_errors`; any other request, and one that sends `Expect` (the route's expect
    handler answers it), goes through the Application as before, where the same route is registered too."""

    def __init__(self, method: str, template: str, handler: Callable[..., Awaitable[web.StreamResponse]]):
        literal = (re.escape(part) for part in re.split(r"\{\w+\}", template))
        self.method, self.handler = method, handler
        self._path = re.compile(r"([A-Za-z0-9_-]+)".join(literal))

    def segments(self, request: web.BaseRequest) -> tuple[str, ...] | None:
        """The template's segments of `request`, or None when the Application must handle it."""
        if request.method != self.method or request.headers.get("Expect") is not None:
            return None
        found = self._path.fullmatch(request.raw_path)
        return found.groups() if found is not None else None


def _serving_first(
    route: HotRoute, app_handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
) -> Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]:
    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        segments = route.segments(request)
        if segments is None:
            return await app_handler(request)
        return await json_errors(request, lambda request: route.handler(request, *segments))  # type: ignore[arg-type]

    return handle


class DeviceRunner(web.AppRunner):
    """An AppRunner whose connections use _DeviceRequestHandler, and which serves `hot_route` before the app."""

    def __init__(self, app: web.Application, *, hot_route: HotRoute | None = None, **kwargs: Any):
        super().__init__(app, **kwargs)
        self._hot_route = hot_route

    async def _make_server(self) -> web_server.Server:
        server = await super()._make_server()
        server.__class__ = _DeviceServer  # the same object; only how it makes connection handlers differs
        if self._hot_route is not None:
            server.request_handler = _serving_first(self._hot_route, server.request_handler)
        return server


def device_app(client_max_size: int) -> web.Application:
    return web.Application(client_max_size=client_max_size, middlewares=[json_errors])


def tls_context(
    cert_file: Path | None, key_file: Path | None, client_ca_file: Path | None = None, client_required: bool = False
) -> ssl.SSLContext | None:
    """A server TLS context from PEM files, or None for plain HTTP (both files or neither must be given).

    With `client_ca_file` the server asks every client for a certificate and fails the handshake of one whose
    certificate that CA did not sign; a client without one fails it only when `client_required`."""
    if cert_file is None and key_file is None:
        return None
    if cert_file is None or key_file is None:
        raise ValueError(f"TLS needs both tls_cert_file and tls_key_file; got cert {cert_file} and key {key_file}")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"tls_cert_file {str(cert_file)!r} and tls_key_file {str(key_file)!r}: {exc}") from None
    if client_ca_file is not None:
        try:
            context.load_verify_locations(cafile=client_ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"tls_client_ca_file {str(client_ca_file)!r}: not a readable PEM CA ({exc})") from None
        context.verify_mode = ssl.CERT_REQUIRED if client_required else ssl.CERT_OPTIONAL
    return context


def peer_certificate(request: web.BaseRequest) -> dict[str, Any] | None:
    """The client certificate the TLS handshake verified (as `ssl.SSLSocket.getpeercert()` gives it), or None."""
    ssl_object = request.transport.get_extra_info("ssl_object") if request.transport is not None else None
    return ssl_object.getpeercert() if ssl_object is not None else None


async def start_device_site(
    app: web.Application, host: str, port: int, tls: ssl.SSLContext | None = None, hot_route: HotRoute | None = None
) -> tuple[web.AppRunner, int]:
    """Serve a device-facing `app`, over TLS only when `tls` is given, `hot_route` first; returns the runner and
    the port bound (port 0 picks a free one)."""
    runner = DeviceRunner(app, hot_route=hot_route, access_log=None, handle_signals=False,
                          keepalive_timeout=KEEPALIVE_TIMEOUT_S)  # fmt: skip
    await runner.setup()
    site = _DeviceSite(runner, host, port, reuse_address=True, ssl_context=tls)
    await site.start()
    return runner, runner.addresses[0][1]


class _DeviceSite(web.TCPSite):
    """aiohttp's TCPSite, with the TLS handshake held to the deadline of the request headers: the header deadline
    starts only once the handshake is done, and asyncio's own handshake timeout is 60 s, so a client that sent no
    ClientHello held a connection six times as long as one that sent no headers."""

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner, as TCPSite.start does first
        assert self._runner.server is not None
        self._server = await asyncio.get_running_loop().create_server(
            self._runner.server, self._host, self._port, ssl=self._ssl_context, backlog=self._backlog,
            reuse_address=self._reuse_address, reuse_port=self._reuse_port,
            ssl_handshake_timeout=HEADER_TIMEOUT_S if self._ssl_context else None,
        )  # fmt: skip
