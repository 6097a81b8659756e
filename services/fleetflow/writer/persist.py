"""The writer's handler: route a fetched batch of messages by record type, write each kind in one go.

The processor publishes to `ff.<fleet>.pl.<pipeline>.<record>.<device>`; the record token says what the
message holds. Readings and late readings (arrived after their window closed; still readings) carry a
ReadingBatch, aggregates one WindowAggregate, alerts one AlertEvent. The consumer acks a message only after
this handler reports it committed; a message that cannot be decoded, or names an unknown record type, is
dead-lettered at once with the reason, since no retry can fix it."""

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
from nats.aio.msg import Msg
from opentelemetry import trace
from opentelemetry.metrics import Meter

from fleetflow.runtime import telemetry
from fleetflow.runtime.codec import AlertEvent, ReadingBatch, WindowAggregate
from fleetflow.runtime.consumer import Failure
from fleetflow.writer.stores import StoreUnavailable, TelemetryStore

READINGS, LATE, AGGREGATES, ALERTS = "readings", "late", "aggregates", "alerts"
RECORDS = (READINGS, LATE, AGGREGATES, ALERTS)
tracer = telemetry.tracer("writer")
_decoders: dict[str, msgspec.json.Decoder[Any]] = {
    READINGS: msgspec.json.Decoder(ReadingBatch),
    LATE: msgspec.json.Decoder(ReadingBatch),
    AGGREGATES: msgspec.json.Decoder(WindowAggregate),
    ALERTS: msgspec.json.Decoder(AlertEvent),
}


def record_of(subject: str) -> tuple[str, str] | None:
    """(fleet, record) of a pipeline output subject `ff.<fleet>.pl.<pipeline>.<record>.<device>`, else None."""
    tokens = subject.split(".")
    if len(tokens) != 6 or tokens[0] != "ff" or tokens[2] != "pl":
        return None
    return tokens[1], tokens[4]


@dataclass
class Decoded:
    """The messages of one batch that decoded, by record type, with their positions in the batch."""

    readings: list[tuple[int, ReadingBatch]] = field(default_factory=list)
    late: list[tuple[int, ReadingBatch]] = field(default_factory=list)
    aggregates: list[tuple[int, WindowAggregate]] = field(default_factory=list)
    alerts: list[tuple[int, AlertEvent]] = field(default_factory=list)


def decode(msg: Msg, into: Decoded, index: int) -> Failure | None:
    """Decode `msg` into `into`; a poison Failure saying why if it cannot be stored."""
    parsed = record_of(msg.subject)
    if parsed is None:
        return Failure(f"subject {msg.subject!r} is not ff.<fleet>.pl.<pipeline>.<record>.<device>", poison=True)
    fleet, record = parsed
    decoder = _decoders.get(record)
    if decoder is None:
        return Failure(
            f"unknown record type {record!r} in subject {msg.subject!r}; accepted: {', '.join(RECORDS)}", poison=True
        )
    try:
        value = decoder.decode(msg.data)
    except msgspec.DecodeError as exc:
        return Failure(f"{record} message on {msg.subject!r} is not a valid {decoder.type.__name__}: {exc}", True)
    if value.fleet != fleet:
        return Failure(f"{record} message on {msg.subject!r} belongs to fleet {value.fleet!r}, not {fleet!r}", True)
    getattr(into, record).append((index, value))
    return None


class RecordWriter:
    def __init__(self, store: TelemetryStore, meter: Meter):
        self.store = store
        self.stored = meter.create_counter(
            "fleetflow_writer_records_stored",
            unit="1",
            description="Records written, by record type: readings (late ones included), aggregates, alerts",
        )
        self.rows = meter.create_counter(
            "fleetflow_writer_readings_stored",
            unit="1",
            description="Readings written (rewrites of redeliveries included)",
        )
        self.late = meter.create_counter(
            "fleetflow_writer_late_readings_stored",
            unit="1",
            description="Readings stored that arrived after their window had closed",
        )
        self.errors = meter.create_counter(
            "fleetflow_writer_write_errors", unit="1", description="Failed store writes, by record type and reason"
        )
        for record in (READINGS, AGGREGATES, ALERTS):  # export 0, not nothing, until the first error
            self.errors.add(0, {"record": record, "reason": "unavailable"})
        self.write_duration = meter.create_histogram(
            "fleetflow_writer_write_duration_seconds", unit="s", description="One batched store write, by record"
        )
        self.batch_size = meter.create_histogram(
            "fleetflow_writer_batch_readings", unit="1", description="Readings per store write"
        )
        self.e2e_latency = meter.create_histogram(
            "fleetflow_end_to_end_latency_seconds",
            unit="s",
            description="Device timestamp of a batch's newest reading to its commit in the store (late excluded)",
        )

    async def handle(self, msgs: Sequence[Msg]) -> list[Failure | None]:
        outcomes: list[Failure | None] = [None] * len(msgs)
        decoded = Decoded()
        links: list[trace.Link] = []
        for index, msg in enumerate(msgs):
            outcomes[index] = self._receive(msg, decoded, index, links)
        readings = decoded.readings + decoded.late
        writes: list[tuple[list[int], Awaitable[Failure | None]]] = []
        if readings:
            writes.append(([i for i, _ in readings], self._write_readings(decoded, links)))
        if decoded.aggregates:
            aggregates = [a for _, a in decoded.aggregates]
            call = self._write(AGGREGATES, len(aggregates), lambda: self.store.write_aggregates(aggregates), links)
            writes.append(([i for i, _ in decoded.aggregates], call))
        if decoded.alerts:
            alerts = [a for _, a in decoded.alerts]
            call = self._write(ALERTS, len(alerts), lambda: self.store.write_alerts(alerts), links)
            writes.append(([i for i, _ in decoded.alerts], call))
        failures = await asyncio.gather(*(call for _, call in writes))
        for (indexes, _), failure in zip(writes, failures, strict=True):
            for index in indexes:
                outcomes[index] = failure
        return outcomes

    def _receive(self, msg: Msg, decoded: Decoded, index: int, links: list[trace.Link]) -> Failure | None:
        """Decode one message inside a span that continues its trace; the batched write links to it."""
        attributes = {
            "messaging.system": "nats",
            "messaging.operation.type": "process",
            "messaging.destination.name": msg.subject,
        }
        name = f"process {msg.subject.rsplit('.', 2)[0]}"
        context = telemetry.extract(msg.headers)
        with tracer.start_as_current_span(name, context, trace.SpanKind.CONSUMER, attributes) as span:
            links.append(trace.Link(span.get_span_context()))
            return decode(msg, decoded, index)

    async def _write_readings(self, decoded: Decoded, links: list[trace.Link]) -> Failure | None:
        batches = [b for _, b in decoded.readings] + [b for _, b in decoded.late]
        count = sum(len(b.readings) for b in batches)
        failure = await self._write(READINGS, count, lambda: self.store.write_readings(batches), links)
        if failure is not None:
            return failure
        self.rows.add(count)
        self.late.add(sum(len(b.readings) for _, b in decoded.late))
        self.batch_size.record(count)
        now_ms = time.time() * 1000
        for _, batch in decoded.readings:
            if batch.readings:
                self.e2e_latency.record(max(0.0, (now_ms - max(r.ts for r in batch.readings)) / 1000))
        return None

    async def _write(
        self, record: str, count: int, write: Callable[[], Awaitable[None]], links: list[trace.Link]
    ) -> Failure | None:
        """Run one store write; a (retryable) Failure naming the record type and the error if it fails.

        One write combines many messages: its span continues the first message's trace and links to every
        message's span (the OpenTelemetry convention for batch consumers), so each trace reaches the store."""
        started = time.perf_counter()
        attributes: dict[str, str | int] = {
            "db.system.name": self.store.system,
            "db.operation.name": "upsert",
            "db.collection.name": record,
            "db.operation.batch.size": count,
        }
        first = trace.set_span_in_context(trace.NonRecordingSpan(links[0].context)) if links else None
        with tracer.start_as_current_span(f"upsert {record}", first, trace.SpanKind.CLIENT, attributes, links) as span:
            try:
                await write()
            except StoreUnavailable as exc:
                self.errors.add(1, {"record": record, "reason": "unavailable"})
                span.set_status(trace.StatusCode.ERROR, str(exc))
                return Failure(f"store unavailable while writing {record}: {exc}")
            except Exception as exc:  # a store bug or a rejected statement: retried, then dead-lettered with it
                self.errors.add(1, {"record": record, "reason": type(exc).__name__})
                span.set_status(trace.StatusCode.ERROR, str(exc))
                return Failure(f"writing {record} failed: {type(exc).__name__}: {exc}")
        self.write_duration.record(time.perf_counter() - started, {"record": record})
        self.stored.add(count, {"record": record})
        return None
