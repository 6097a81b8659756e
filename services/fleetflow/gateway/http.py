"""The device HTTP API: POST /v1/fleets/{fleet}/devices/{device}/telemetry — an adapter onto the intake."""

import msgspec
from aiohttp import web
from opentelemetry import trace

from fleetflow.gateway.errors import Rejection
from fleetflow.gateway.intake import DeviceIntake
from fleetflow.runtime import httpserver, telemetry

PROTOCOL = "http"
ROUTE = "/v1/fleets/{fleet}/devices/{device}/telemetry"
SPAN_NAME = f"POST {ROUTE}"
tracer = telemetry.tracer("gateway")
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

    async def post_telemetry(self, request: web.Request) -> web.Response:
        device = request.match_info["device"]
        with tracer.start_as_current_span(SPAN_NAME, context=telemetry.extract(request.headers),
                                          kind=trace.SpanKind.SERVER) as span:  # fmt: skip
            if span.is_recording():  # most requests' spans are not (sampling): their attributes would be thrown away
                span.set_attributes({**_server_attributes(request), "fleetflow.device": device})
            try:
                self.intake.admit(PROTOCOL, request.match_info["fleet"], device, request.headers.get("Authorization"))
                with self.intake.counted(PROTOCOL, device):
                    body = await self._body(request)
                accepted = await self.intake.ingest(PROTOCOL, device, body)
            except Rejection as rejection:
                _refused(span, rejection)
                return web.json_response(rejection.body(), status=rejection.status, headers=rejection.headers)
            span.set_attribute("http.response.status_code", 202)
            return web.Response(body=_json(accepted.to_json()), status=202, content_type="application/json")

    async def _body(self, request: web.Request) -> bytes:
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


def _refused(span: trace.Span, rejection: Rejection) -> None:
    span.set_attribute("http.response.status_code", rejection.status)
    span.set_attribute("error.type", rejection.reason)
    if rejection.status >= 500:
        span.set_status(trace.StatusCode.ERROR, rejection.detail)


def _server_attributes(request: web.Request) -> dict[str, str | int]:
    """The OpenTelemetry HTTP server span attributes of a telemetry request."""
    host, _, port = (request.host or "").rpartition(":")
    attributes: dict[str, str | int] = {
        "http.request.method": request.method,
        "http.route": ROUTE,
        "url.path": request.path,
        "url.scheme": request.scheme,
        "server.address": host or request.host,
        "network.protocol.version": f"{request.version.major}.{request.version.minor}",
    }
    if port.isdigit():
        attributes["server.port"] = int(port)
    if request.remote:
        attributes["client.address"] = request.remote
    if user_agent := request.headers.get("User-Agent"):
        attributes["user_agent.original"] = user_agent
    return attributes
