"""Publishing telemetry batches to JetStream: one message per batch, answered only after JetStream's ack."""

import asyncio
import time

import nats.errors
from nats.js import JetStreamContext
from nats.js.errors import APIError
from opentelemetry import trace
from opentelemetry.metrics import Meter

from fleetflow.gateway.errors import Rejection
from fleetflow.runtime import codec, subjects, telemetry
from fleetflow.runtime.codec import ReadingBatch

PUBLISH_TIMEOUT = 5.0
tracer = telemetry.tracer("gateway")


class TelemetryPublisher:
    def __init__(self, js: JetStreamContext, meter: Meter, max_in_flight: int):
        self.js = js
        self._in_flight = asyncio.Semaphore(max_in_flight)
        self.publish_duration = meter.create_histogram(
            "fleetflow_gateway_publish_duration_seconds", unit="s", description="JetStream publish to ack"
        )

    async def publish(self, batch: ReadingBatch) -> bool:
        """Publish and wait for the ack; True if JetStream recognised the batch as a duplicate."""
        first, last = batch.readings[0].seq, batch.readings[-1].seq
        message_id = subjects.batch_id(batch.fleet, batch.device, first, last)
        subject = subjects.telemetry_subject(batch.fleet, batch.device)
        payload = codec.encode(batch)
        attributes: dict[str, str | int] = {"messaging.system": "nats", "messaging.operation.type": "send",
                      "messaging.destination.name": subject, "messaging.message.id": message_id,
                      "fleetflow.readings": len(batch.readings)}  # fmt: skip
        with tracer.start_as_current_span(f"send ff.{batch.fleet}.tm", kind=trace.SpanKind.PRODUCER,
                                          attributes=attributes):  # fmt: skip
            headers = telemetry.inject({"Nats-Msg-Id": message_id})
            return await self._publish(subject, payload, headers)

    async def _publish(self, subject: str, payload: bytes, headers: dict[str, str]) -> bool:
        async with self._in_flight:
            started = time.perf_counter()
            try:
                ack = await self.js.publish(subject, payload, timeout=PUBLISH_TIMEOUT, headers=headers)
            except (TimeoutError, nats.errors.Error, APIError) as exc:
                raise Rejection(
                    503,
                    "unavailable",
                    f"the telemetry stream did not acknowledge the batch ({type(exc).__name__}); retry it",
                    {"Retry-After": "1"},
                ) from None
            self.publish_duration.record(time.perf_counter() - started)
        return bool(ack.duplicate)
