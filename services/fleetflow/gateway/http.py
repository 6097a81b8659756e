"""The device HTTP API: POST /v1/fleets/{fleet}/devices/{device}/telemetry."""

import re
import time

import msgspec
import structlog
from aiohttp import web
from opentelemetry import trace
from opentelemetry.metrics import Meter

from fleetflow.api import DeviceFleet
from fleetflow.gateway.auth import DeviceAuthenticator
from fleetflow.gateway.errors import Rejection
from fleetflow.gateway.ingest import BatchValidator, check_device_id
from fleetflow.gateway.publisher import TelemetryPublisher
from fleetflow.gateway.ratelimit import DeviceRateLimiter
from fleetflow.runtime import telemetry

log = structlog.get_logger(__name__)
PROTOCOL = {"protocol": "http"}
ROUTE = "/v1/fleets/{fleet}/devices/{device}/telemetry"
tracer = telemetry.tracer("gateway")
_json = msgspec.json.Encoder().encode


class TelemetryApi:
    def __init__(self, fleet: DeviceFleet, fleet_secret: bytes, publisher: TelemetryPublisher, meter: Meter):
        self.fleet = fleet
        self.id_pattern = re.compile(fleet.spec.devices.id_pattern)
        self.auth = DeviceAuthenticator(fleet.name, fleet_secret)
        self.validator = BatchValidator(fleet)
        self.limiter = DeviceRateLimiter(fleet.spec.gateway.rate_limit)
        self.publisher = publisher
        self.max_body = fleet.spec.gateway.max_body_bytes
        self.readings_received = meter.create_counter(
            "fleetflow_gateway_readings_received", unit="1", description="Readings in requests that parsed"
        )
        self.readings_accepted = meter.create_counter(
            "fleetflow_gateway_readings_accepted", unit="1", description="Readings acknowledged by JetStream"
        )
        self.readings_duplicate = meter.create_counter(
            "fleetflow_gateway_readings_duplicate", unit="1", description="Readings in retried batches"
        )
        self.requests_rejected = meter.create_counter(
            "fleetflow_gateway_requests_rejected", unit="1", description="Requests refused, by reason"
        )
        self.request_duration = meter.create_histogram(
            "fleetflow_gateway_request_duration_seconds", unit="s", description="Time to answer a device"
        )

    def app(self) -> web.Application:
        # The body limit is enforced here, with a JSON answer, rather than by aiohttp's plain-text 413.
        app = web.Application(client_max_size=self.max_body + 1)
        app.router.add_post(ROUTE, self.post_telemetry)
        return app

    async def post_telemetry(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        attributes = {"http.request.method": "POST", "http.route": ROUTE, "url.path": request.path,
                      "fleetflow.device": request.match_info["device"]}  # fmt: skip
        with tracer.start_as_current_span(f"POST {ROUTE}", context=telemetry.extract(request.headers),
                                          kind=trace.SpanKind.SERVER, attributes=attributes) as span:  # fmt: skip
            try:
                answer = await self._ingest(request)
            except Rejection as rejection:
                self._rejected(span, rejection, request.match_info["device"])
                return web.json_response(rejection.body(), status=rejection.status, headers=rejection.headers)
            finally:
                self.request_duration.record(time.perf_counter() - started, PROTOCOL)
            span.set_attribute("http.response.status_code", 202)
            return web.Response(body=_json(answer), status=202, content_type="application/json")

    def _rejected(self, span: trace.Span, rejection: Rejection, device: str) -> None:
        self.requests_rejected.add(1, {**PROTOCOL, "reason": rejection.reason})
        span.set_attribute("http.response.status_code", rejection.status)
        span.set_attribute("error.type", rejection.reason)
        if rejection.status >= 500:
            span.set_status(trace.StatusCode.ERROR, rejection.detail)
        log.info("request rejected", reason=rejection.reason, detail=rejection.detail, device=device)

    async def _ingest(self, request: web.Request) -> dict[str, object]:
        fleet, device = request.match_info["fleet"], request.match_info["device"]
        if fleet != self.fleet.name:
            raise Rejection(
                404, "unknown_fleet", f"fleet {fleet!r} is not served here; this is fleet {self.fleet.name!r}"
            )
        check_device_id(self.fleet, device, self.id_pattern)
        self.auth.authenticate(device, request.headers.get("Authorization"))
        batch = self.validator.validate(device, await self._body(request), int(time.time() * 1000))
        count = len(batch.readings)
        self.readings_received.add(count, PROTOCOL)
        self.limiter.admit(device, count)
        duplicate = await self.publisher.publish(batch)
        (self.readings_duplicate if duplicate else self.readings_accepted).add(count, PROTOCOL)
        return {
            "accepted": count,
            "duplicate": duplicate,
            "firstSeq": batch.readings[0].seq,
            "lastSeq": batch.readings[-1].seq,
        }

    async def _body(self, request: web.Request) -> bytes:
        too_large = Rejection(413, "body_too_large", f"request body exceeds {self.max_body} bytes; split the batch")
        if request.content_length is not None and request.content_length > self.max_body:
            raise too_large
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise too_large from None
        if len(body) > self.max_body:
            raise too_large
        return body
