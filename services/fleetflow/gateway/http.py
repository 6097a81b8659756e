"""The device HTTP API: POST /v1/fleets/{fleet}/devices/{device}/telemetry — an adapter onto the intake."""

import functools

import msgspec
from aiohttp import web

from fleetflow.gateway.auth import certified_device
from fleetflow.gateway.errors import Rejection
from fleetflow.gateway.intake import DeviceIntake, Peer, mark_refused
from fleetflow.runtime import httpserver, telemetry

PROTOCOL = "http"
ROUTE = "/v1/fleets/{fleet}/devices/{device}/telemetry"
SPAN_NAME = f"POST {ROUTE}"
_json = msgspec.json.Encoder().encode


class TelemetryApi:
    def __init__(self, intake: DeviceIntake):
        self.intake = intake
        self.max_body = intake.max_body

    def app(self) -> web.Application:
        # The body limit is enforced by the intake, with a JSON answer, rather than by aiohttp's plain 413.
        app = httpserver.device_app(client_max_size=self.max_body + 1)
        app.router.add_post(ROUTE, self.post_telemetry)
        return app

    def hot_route(self) -> httpserver.HotRoute:
        """The telemetry route, served ahead of the application's router (httpserver.HotRoute)."""
        return httpserver.HotRoute("POST", ROUTE, self.receive)

    async def post_telemetry(self, request: web.Request) -> web.Response:
        return await self.receive(request, request.match_info["fleet"], request.match_info["device"])

    async def receive(self, request: web.BaseRequest, fleet: str, device: str) -> web.Response:
        peer = functools.partial(peer_of, request, "http")
        with self.intake.server_span(PROTOCOL, SPAN_NAME, peer, device, telemetry.extract(request.headers),
                                     lambda: _http_attributes(request)) as span:  # fmt: skip
            try:
                self.intake.admit(PROTOCOL, fleet, device, request.headers.get("Authorization"),
                                  certified_device(httpserver.peer_certificate(request)))  # fmt: skip
                with self.intake.counted(PROTOCOL, device):
                    body = await self._body(request)
                accepted = await self.intake.ingest(PROTOCOL, device, body)
            except Rejection as rejection:
                mark_refused(span, rejection)
                span.set_attribute("http.response.status_code", rejection.status)
                return web.json_response(rejection.body(), status=rejection.status, headers=rejection.headers)
            span.set_attribute("http.response.status_code", 202)
            return web.Response(body=_json(accepted.to_json()), status=202, content_type="application/json")

    async def _body(self, request: web.BaseRequest) -> bytes:
        too_large = Rejection(413, "body_too_large", f"request body exceeds {self.max_body} bytes "
                              "(spec.gateway.maxBodyBytes); split the batch")  # fmt: skip
        if request.content_length is not None and request.content_length > self.max_body:
            raise too_large
        try:
            return await httpserver.read_body(request)
        except web.HTTPRequestEntityTooLarge:
            raise too_large from None
        except httpserver.HttpRefusal as refusal:
            raise Rejection(refusal.status, refusal.reason, refusal.detail) from None


def peer_of(request: web.BaseRequest, protocol: str) -> Peer:
    """The connection of an HTTP request (or of a WebSocket's upgrade request): the host and port the device
    dialled (its Host header, else our socket's), and its own address and port."""
    host, _, port = (request.host or "").rpartition(":")
    if not port.isdigit():
        host, port = request.host or "", ""
    transport = request.transport
    local = transport.get_extra_info("sockname") if transport is not None else None
    remote = transport.get_extra_info("peername") if transport is not None else None
    server_port = int(port) if port else (local[1] if isinstance(local, tuple) else None)
    return Peer(
        transport="tcp",
        protocol=protocol,
        protocol_version=f"{request.version.major}.{request.version.minor}" if protocol == "http" else "",
        server_address=host.strip("[]") or (local[0] if isinstance(local, tuple) else ""),
        server_port=server_port,
        client_address=request.remote or "",
        client_port=remote[1] if isinstance(remote, tuple) else None,
    )


def _http_attributes(request: web.BaseRequest) -> dict[str, str | int]:
    """The HTTP server span's own attributes, beside the connection's (peer_of)."""
    attributes: dict[str, str | int] = {
        "http.request.method": request.method,
        "http.route": ROUTE,
        "url.path": request.path,
        "url.scheme": request.scheme,
    }
    if user_agent := request.headers.get("User-Agent"):
        attributes["user_agent.original"] = user_agent
    return attributes
