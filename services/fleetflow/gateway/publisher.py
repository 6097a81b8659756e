"""Publishing telemetry batches to JetStream: one message per batch, answered only after JetStream's ack.

Every failure is classified. A batch NATS can never carry (larger than the server's max_payload, or refused by
the stream as too large) is a permanent 413 the device is told at once; a missing answer, a lost connection or a
JetStream that cannot store right now is a transient 503 (buffered by BufferedPublisher, retried by devices); an
edge site's stream at its byte budget that refuses new batches is a 507 storage_full, never buffered."""

import asyncio
import time
from typing import NamedTuple

import nats.errors
from nats.aio.client import Client
from nats.js.errors import APIError
from opentelemetry import trace
from opentelemetry.metrics import Meter

from fleetflow.gateway.errors import Rejection
from fleetflow.runtime import codec, subjects, telemetry
from fleetflow.runtime.acks import AckedPublisher
from fleetflow.runtime.codec import ReadingBatch

PUBLISH_TIMEOUT = 5.0
# Room kept for the message's headers (message id, trace context) within the server's max_payload.
HEADER_ALLOWANCE = 1024
# JetStream's "message size exceeds maximum allowed" (a stream's max_msg_size): no retry can fix it.
JS_MESSAGE_TOO_LARGE = 10054
# JetStream's "could not store": with a stream that refuses new batches when full (an edge site's disk budget with
# whenFull RejectNew, docs/edge.md) it says "maximum bytes exceeded" or "maximum messages exceeded".
JS_STORE_FAILED = 10077
tracer = telemetry.tracer("gateway")


def too_large(size: int, limit: int | None) -> Rejection:
    carries = f"which carries at most {limit} bytes per message" if limit else "whose stream refuses it as too large"
    return Rejection(413, "batch_too_large", f"the batch is {size} bytes once encoded for NATS, {carries}: send "
                     "fewer readings per request")  # fmt: skip


def storage_full(description: str) -> Rejection:
    """Not an outage: buffering it in the gateway would only move the budget's overflow to another disk."""
    detail = (f"the telemetry stream is at its disk budget and refuses new batches ({description}); it keeps what "
              "it has until the oldest ages out")  # fmt: skip
    return Rejection(507, "storage_full", detail, {"Retry-After": "60"})


def unavailable(cause: str) -> Rejection:
    return Rejection(503, "unavailable", f"the telemetry stream did not acknowledge the batch ({cause}); retry it",
                     {"Retry-After": "1"})  # fmt: skip


class TelemetryMessage(NamedTuple):
    """A batch as it is published: its bytes and message id, and what the device's answer reports.

    Built from the validated batch before the wait for JetStream's ack, so that the batch's readings (a few hundred
    objects per request) are freed at once, while they are still in the CPU's caches; freed after the wait, with
    hundreds of requests in flight in between, they cost the gateway about a tenth of its CPU (docs/performance.md,
    "Round 5")."""

    fleet: str
    device: str
    message_id: str
    payload: bytes
    readings: int
    first_seq: int
    last_seq: int

    @classmethod
    def of(cls, batch: ReadingBatch, payload: bytes) -> "TelemetryMessage":
        """The message of `batch`, whose encoding `payload` is (as TelemetryPublisher.message or the outage buffer's
        file has it)."""
        readings = batch.readings
        message_id = subjects.batch_id(batch.fleet, batch.device, readings)
        return cls(batch.fleet, batch.device, message_id, payload, len(readings), readings[0].seq, readings[-1].seq)


class TelemetryPublisher:
    def __init__(self, nc: Client, meter: Meter, max_in_flight: int, budgeted: bool = False):
        """`budgeted`: the stream refuses new batches when full by design (an edge site's disk budget with
        whenFull RejectNew), so "maximum bytes exceeded" is the documented 507; elsewhere a full stream is an
        operational fault like any other JetStream refusal, a passing 503 the outage buffer and devices retry."""
        self.nc, self.budgeted = nc, budgeted
        self.acks = AckedPublisher(nc)  # a third less CPU per publish than nats-py's js.publish
        self._in_flight = asyncio.Semaphore(max_in_flight)
        self.publish_duration = telemetry.latency_histogram(
            meter, "fleetflow_gateway_publish_duration_seconds", "JetStream publish to ack"
        )

    @property
    def max_message_bytes(self) -> int:
        """What one batch may take once encoded: the server's max_payload (known from its last INFO, so also
        during an outage) less the headers' share."""
        return self.nc.max_payload - HEADER_ALLOWANCE

    def message(self, batch: ReadingBatch) -> TelemetryMessage:
        """The message for `batch`; a permanent 413 if NATS could never carry it."""
        payload = codec.encode(batch)
        if len(payload) > self.max_message_bytes:
            raise too_large(len(payload), self.max_message_bytes)
        return TelemetryMessage.of(batch, payload)

    async def publish(self, message: TelemetryMessage) -> bool:
        """Publish and wait for the ack; True if JetStream recognised the batch as a duplicate."""
        return await self.send(message)

    async def send(self, message: TelemetryMessage) -> bool:
        """Publish now (never buffered) and wait for the ack; True if JetStream had the batch already."""
        subject = subjects.telemetry_subject(message.fleet, message.device)
        request = trace.get_current_span()
        if request.get_span_context().is_valid and not request.is_recording():
            # A request's span that is not recorded has a PRODUCER child that no sampler records either (a parent
            # based one follows it, a trace id ratio decides as it did for the same trace id): the message carries
            # the request's trace context instead, and no span is made that nothing would ever see.
            headers = telemetry.inject({"Nats-Msg-Id": message.message_id})
            return await self._publish(subject, message.payload, headers)
        with tracer.start_as_current_span(f"send ff.{message.fleet}.tm", kind=trace.SpanKind.PRODUCER) as span:
            if span.is_recording():  # a sampled request's span; the attributes of the others would be discarded
                span.set_attributes({**telemetry.producer_attributes(subject, message.message_id),
                                     "fleetflow.readings": message.readings})  # fmt: skip
            headers = telemetry.inject({"Nats-Msg-Id": message.message_id})
            return await self._publish(subject, message.payload, headers)

    async def _publish(self, subject: str, payload: bytes, headers: dict[str, str]) -> bool:
        async with self._in_flight:
            started = time.perf_counter()
            try:
                ack = await self.acks.publish(subject, payload, headers, PUBLISH_TIMEOUT)
            except nats.errors.MaxPayloadError:
                raise too_large(len(payload), self.max_message_bytes) from None
            except APIError as exc:
                if exc.err_code == JS_MESSAGE_TOO_LARGE:
                    raise too_large(len(payload), None) from None
                if self.budgeted and exc.err_code == JS_STORE_FAILED and "maximum" in (exc.description or ""):
                    raise storage_full(exc.description or "") from None
                raise unavailable(f"JetStream error {exc.err_code}: {exc.description}") from None
            except (TimeoutError, nats.errors.Error) as exc:
                raise unavailable(type(exc).__name__) from None
            self.publish_duration.record(time.perf_counter() - started)
        return ack.duplicate
