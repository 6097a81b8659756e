"""The one intake every device protocol goes through.

Authentication, identifier and limit checks, validation, the per-device rate limit (one bucket per device,
shared by every protocol), the dedupe identity, publishing with its outage buffer, and the metrics of all of
it live here; a protocol adapter (http.py, grpc_api.py, mqtt_bridge.py, ws.py, coap.py) only translates its
protocol into these calls and the answers back. Adding a protocol means one adapter module that calls

    intake.admit(protocol, fleet, device, authorization, certified)  # who is it?  Rejection 401/403/404/400
    accepted = await intake.ingest(protocol, device, body)   # validate, rate-limit, publish; Rejection 4xx/503

(or `receive` and `publish` separately, when the adapter merges several messages into one batch as MQTT does)
inside `with intake.server_span(protocol, name, peer, device, ...)`, where `peer` (a Peer) is the connection the
request came over, so every protocol's SERVER span carries the same OpenTelemetry attributes (network.*,
server.*, client.*, fleetflow.protocol, fleetflow.device) and marks a refusal the same way; its registration in
connectivity.py (and its name in PROTOCOLS below, so its metrics exist from the start), its docs section in
docs/devices.md and its tests. An adapter that holds a session open and pushes commands (ws.py,
coap.py) also opens the device's session in sessions.py (one per device, across those protocols) and takes its
commands from command_push.py.

A Rejection's status says whether a retry can help: 503 and 429 are passing conditions, every other status is
permanent and must never be retried or buffered."""

import contextlib
import re
import time
from collections.abc import Callable, Mapping
from contextvars import Token
from dataclasses import dataclass
from types import TracebackType

import structlog
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.metrics import Meter

from fleetflow.api import DeviceFleet
from fleetflow.gateway.auth import DeviceAuthenticator
from fleetflow.gateway.errors import Rejection
from fleetflow.gateway.ingest import BatchValidator, check_device_id
from fleetflow.gateway.publisher import TelemetryMessage, TelemetryPublisher
from fleetflow.gateway.ratelimit import DeviceRateLimiter
from fleetflow.runtime import telemetry
from fleetflow.runtime.codec import ReadingBatch

log = structlog.get_logger(__name__)
_tracer = telemetry.tracer("gateway")
PROTOCOLS = ("http", "grpc", "mqtt", "ws", "coap")
# Exported at 0 from the start, so that rate() and increase() see the first refusal of each reason.
REASONS = (
    "malformed_json", "malformed_body", "invalid_reading", "invalid_timestamp", "non_finite_number",
    "invalid_metric_name", "duplicate_key", "seq_not_increasing", "empty_batch", "invalid_device_id",
    "missing_token", "invalid_token", "certificate_mismatch", "unknown_fleet", "batch_too_large", "body_too_large",
    "rate_limited", "unavailable", "buffer_full", "request_timeout", "invalid_message", "unsupported_content_format",
    "storage_full",
)  # fmt: skip


@dataclass(frozen=True)
class Accepted:
    """JetStream has the batch (or the outage buffer does); `duplicate`: it had it already."""

    readings: int
    duplicate: bool
    first_seq: int
    last_seq: int

    def to_json(self) -> dict[str, object]:
        return {"accepted": self.readings, "duplicate": self.duplicate, "firstSeq": self.first_seq,
                "lastSeq": self.last_seq}  # fmt: skip


@dataclass(frozen=True)
class Peer:
    """The connection a device's request came over, as the OpenTelemetry semantic conventions describe it on a
    SERVER span. Empty fields are left out (a protocol that cannot tell, or a listener on the any-address)."""

    transport: str  # network.transport: "tcp", "udp"
    protocol: str  # network.protocol.name: "http", "websocket", "coap"
    server_address: str = ""  # the name or address the device dialled (Host, :authority, Uri-Host), else ours
    server_port: int | None = None
    client_address: str = ""
    client_port: int | None = None
    protocol_version: str = ""

    def attributes(self) -> dict[str, str | int]:
        found: dict[str, str | int | None] = {
            "network.transport": self.transport,
            "network.protocol.name": self.protocol,
            "network.protocol.version": self.protocol_version,
            "server.address": self.server_address,
            "server.port": self.server_port,
            "client.address": self.client_address,
            "client.port": self.client_port,
        }
        return {key: value for key, value in found.items() if value not in ("", None)}


def mark_refused(span: trace.Span, rejection: Rejection) -> None:
    """A refused request's span: error.type is the reason; only a 5xx (the gateway's trouble, not the device's
    request) makes the span an error, as the HTTP conventions have it for servers."""
    span.set_attribute("error.type", rejection.reason)
    if rejection.status >= 500:
        span.set_status(trace.StatusCode.ERROR, rejection.detail)


class DeviceIntake:
    def __init__(
        self,
        fleet: DeviceFleet,
        fleet_secret: bytes,
        publisher: TelemetryPublisher,
        meter: Meter,
        wall_clock: Callable[[], float] = time.time,
        previous_secret: bytes | None = None,
    ):
        self.fleet = fleet
        self.id_pattern = re.compile(fleet.spec.devices.id_pattern)
        self.auth = DeviceAuthenticator(fleet.name, fleet_secret, previous_secret)
        self.validator = BatchValidator(fleet)
        self.limiter = DeviceRateLimiter(fleet.spec.gateway.rate_limit)
        self.publisher = publisher
        self.max_body = fleet.spec.gateway.max_body_bytes
        self._wall_clock = wall_clock
        self.meter = meter
        self._instruments(meter)

    def _instruments(self, meter: Meter) -> None:
        # Added on every request: summed here and read when the metrics are collected (telemetry.SummedCounter).
        self.readings_received = telemetry.SummedCounter(
            meter, "fleetflow_gateway_readings_received", unit="1", description="Readings in requests that parsed"
        )
        self.readings_accepted = telemetry.SummedCounter(
            meter, "fleetflow_gateway_readings_accepted", unit="1", description="Readings acknowledged by JetStream"
        )
        self.readings_duplicate = telemetry.SummedCounter(
            meter, "fleetflow_gateway_readings_duplicate", unit="1", description="Readings in retried batches"
        )
        self.requests_rejected = meter.create_counter(
            "fleetflow_gateway_requests_rejected", unit="1", description="Requests refused, by protocol and reason"
        )
        self.request_duration = telemetry.latency_histogram(
            meter, "fleetflow_gateway_request_duration_seconds", "Time to answer a device"
        )
        for protocol in PROTOCOLS:
            for counter in (self.readings_received, self.readings_accepted, self.readings_duplicate):
                counter.add(0, _summed_labels(protocol))
            for reason in REASONS:
                self.requests_rejected.add(0, {**_labels(protocol), "reason": reason})

    def admit(
        self, protocol: str, fleet: str, device: str, authorization: str | None, certified: str | None = None
    ) -> None:
        """The caller is `device` of this fleet; Rejection (404, 400, 401, 403) otherwise. `certified`: the device
        id of the client certificate the TLS handshake verified, which stands in for a token (auth.py)."""
        with self.counted(protocol, device):
            if fleet != self.fleet.name:
                raise Rejection(404, "unknown_fleet", f"fleet {fleet!r} is not served here; this is fleet "
                                f"{self.fleet.name!r}")  # fmt: skip
            check_device_id(self.fleet, device, self.id_pattern)
            self.auth.authenticate(device, authorization, certified)

    def receive(self, protocol: str, device: str, body: bytes, received_bytes: int | None = None) -> ReadingBatch:
        """A body, checked against every limit and the device's rate. `received_bytes`: the size the device sent,
        where the adapter translated its protocol's message into the JSON body (default: the body's size)."""
        size = len(body) if received_bytes is None else received_bytes
        with self.counted(protocol, device):
            if size > self.max_body:
                raise Rejection(413, "body_too_large", f"the message is {size} bytes; at most {self.max_body} "
                                "bytes (spec.gateway.maxBodyBytes) are accepted: split the batch")  # fmt: skip
            batch = self.validator.validate(device, body, int(self._wall_clock() * 1000))
            self.readings_received.add(len(batch.readings), _summed_labels(protocol))
            self.limiter.admit(device, len(batch.readings))
            return batch

    def server_span(
        self,
        protocol: str,
        name: str,
        peer: Peer | Callable[[], Peer],
        device: str,
        trace_context: Context | None = None,
        attributes: Callable[[], Mapping[str, str | int]] | None = None,
    ) -> "_ServerSpan":
        """The SERVER span of one device request (current inside the `with`), continuing the device's trace
        (`trace_context`) if it sent one; `attributes`: gives the protocol's own (http.*, rpc.*). `peer` may be a
        function that finds it, called only for a recorded span. A Rejection raised inside is marked
        (mark_refused) and goes on to the adapter."""
        span = _unrecorded_root(trace_context) or _tracer.start_span(
            name, context=trace_context, kind=trace.SpanKind.SERVER, record_exception=False,
            set_status_on_exception=False,
        )  # fmt: skip
        if span.is_recording():  # most requests' spans are not (sampling): their attributes would be thrown away
            connection = peer() if callable(peer) else peer
            span.set_attributes({**connection.attributes(), "fleetflow.protocol": protocol,
                                 "fleetflow.device": device, **(attributes() if attributes else {})})  # fmt: skip
        return _ServerSpan(span)

    async def publish(self, protocol: str, batch: ReadingBatch) -> Accepted:
        """Publish a received batch; answered once JetStream (or, in an outage, the disk buffer) has it.

        Within the adapter's span (HTTP, gRPC, WebSocket and CoAP open a SERVER span that continues the device's
        trace), or, for an adapter that has none (MQTT's messages arrive through a stream), in a CONSUMER span of
        its own: every protocol's batch starts a trace here at the latest.

        Only the batch's message waits for the ack: the readings are freed as soon as it is built, while they are
        still in the CPU's caches (TelemetryMessage), unless the caller holds them."""
        span: contextlib.AbstractContextManager[object] = contextlib.nullcontext()
        if not trace.get_current_span().get_span_context().is_valid:
            span = _tracer.start_as_current_span(f"receive {protocol} telemetry", kind=trace.SpanKind.CONSUMER,
                                                 attributes=_intake_attributes(protocol, batch))  # fmt: skip
        with span:
            message = self._message(protocol, batch)
            del batch
            return await self._publish(protocol, message)

    def _message(self, protocol: str, batch: ReadingBatch) -> TelemetryMessage:
        with self.counted(protocol, batch.device):
            return self.publisher.message(batch)

    async def _publish(self, protocol: str, message: TelemetryMessage) -> Accepted:
        with self.counted(protocol, message.device):
            duplicate = await self.publisher.publish(message)
        count = message.readings
        (self.readings_duplicate if duplicate else self.readings_accepted).add(count, _summed_labels(protocol))
        return Accepted(count, duplicate, message.first_seq, message.last_seq)

    async def ingest(self, protocol: str, device: str, body: bytes, received_bytes: int | None = None) -> Accepted:
        started = time.perf_counter()
        try:
            return await self.publish(protocol, self.receive(protocol, device, body, received_bytes))
        finally:
            self.request_duration.record(time.perf_counter() - started, _labels(protocol))

    def counted(self, protocol: str, device: str) -> "_Counted":
        """Counts a Rejection raised inside, by protocol and reason, and lets it go on to the adapter."""
        return _Counted(self, protocol, device)

    def refused(self, protocol: str, rejection: Rejection, device: str) -> None:
        self.requests_rejected.add(1, {"protocol": protocol, "reason": rejection.reason})
        log.info("telemetry refused", protocol=protocol, reason=rejection.reason, detail=rejection.detail,
                 device=device)  # fmt: skip


class _Counted:
    """DeviceIntake.counted: a class rather than a generator, as it wraps several steps of every request."""

    __slots__ = ("device", "intake", "protocol")

    def __init__(self, intake: DeviceIntake, protocol: str, device: str):
        self.intake, self.protocol, self.device = intake, protocol, device

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, _: TracebackType | None) -> None:
        if isinstance(error, Rejection):
            self.intake.refused(self.protocol, error, self.device)


class _ServerSpan:
    """DeviceIntake.server_span: what start_as_current_span does (the span current inside, ended on the way out),
    as a class rather than two generator context managers, since it wraps every request."""

    __slots__ = ("_token", "span")

    def __init__(self, span: trace.Span):
        self.span = span
        self._token: Token[Context] | None = None

    def __enter__(self) -> trace.Span:
        self._token = otel_context.attach(trace.set_span_in_context(self.span))
        return self.span

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, _: TracebackType | None) -> None:
        try:
            if isinstance(error, Rejection):
                mark_refused(self.span, error)
        finally:
            if self._token is not None:
                otel_context.detach(self._token)
            self.span.end()


def _unrecorded_root(trace_context: Context | None) -> trace.Span | None:
    """The span start_span would give a request that continues no trace, when it would certainly not be recorded
    (telemetry.unsampled_root_context): the same ids, without asking the sampler. Most devices send no trace
    context, and the sampler's answer is known for them. None for a request that continues a trace."""
    if trace.get_current_span(trace_context).get_span_context().is_valid:
        return None
    span_context = telemetry.unsampled_root_context(_tracer)
    return trace.NonRecordingSpan(span_context) if span_context is not None else None


# The attributes of every request's measurements, built once per protocol rather than per request.
_LABELS = {protocol: {"protocol": protocol} for protocol in PROTOCOLS}
_SUMMED_LABELS = {protocol: (("protocol", protocol),) for protocol in PROTOCOLS}


def _labels(protocol: str) -> dict[str, str]:
    return _LABELS.get(protocol) or {"protocol": protocol}


def _summed_labels(protocol: str) -> tuple[tuple[str, str], ...]:
    return _SUMMED_LABELS.get(protocol) or (("protocol", protocol),)


def _intake_attributes(protocol: str, batch: ReadingBatch) -> dict[str, str | int]:
    return {
        "messaging.system": "nats",
        "messaging.operation.type": "receive",
        "network.protocol.name": protocol,
        "fleetflow.protocol": protocol,
        "fleetflow.device": batch.device,
        "fleetflow.readings": len(batch.readings),
    }
