"""The writer's handler: route a fetched batch of messages by record type, write each kind in one go.

The processor publishes to `ff.<fleet>.pl.<pipeline>.<record>.<device>`; the record token says what the
message holds. Readings and late readings (arrived after their window closed; still readings) carry a
ReadingBatch, aggregates one WindowAggregate, alerts one AlertEvent. The consumer acks a message only after
this handler reports it committed; a message that cannot be decoded, or names an unknown record type, is
dead-lettered at once with the reason, since no retry can fix it.

A store outage fails the whole write, to be retried. A refusal (the store will not hold some value) is searched
for the records at fault (see isolate.py): the others are stored and acknowledged, and only the refused ones are
dead-lettered, each with the store's reason; of a ReadingBatch, a batch holding just its refused readings."""

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
import structlog
from nats.aio.msg import Msg
from opentelemetry import trace
from opentelemetry.metrics import Meter

from fleetflow.runtime import codec, telemetry
from fleetflow.runtime.codec import AlertEvent, ReadingBatch, WindowAggregate
from fleetflow.runtime.consumer import Failure
from fleetflow.writer.isolate import Isolation, Part, Split, WriteError, isolate
from fleetflow.writer.stores import RecordRefused, StoreUnavailable, TelemetryStore

READINGS, LATE, AGGREGATES, ALERTS = "readings", "late", "aggregates", "alerts"
RECORDS = (READINGS, LATE, AGGREGATES, ALERTS)
tracer = telemetry.tracer("writer")
log = structlog.get_logger(__name__)
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


def split_batch(batch: ReadingBatch) -> tuple[ReadingBatch, ReadingBatch] | None:
    """Two batches of the same device, each with half of the readings; None for one reading (or none)."""
    if len(batch.readings) < 2:
        return None
    middle = len(batch.readings) // 2
    replace = msgspec.structs.replace
    return replace(batch, readings=batch.readings[:middle]), replace(batch, readings=batch.readings[middle:])


def whole(_record: object) -> None:
    """An aggregate or an alert is one record: nothing to split."""
    return None


def describe(record: object) -> str:
    """A refused record, named for a dead letter's reason and the log."""
    if isinstance(record, ReadingBatch):
        if len(record.readings) == 1:
            r = record.readings[0]
            return f"reading seq {r.seq} ts {r.ts} of device {record.device!r}"
        return f"{len(record.readings)} readings of device {record.device!r}"
    if isinstance(record, WindowAggregate):
        return (
            f"aggregate {record.step}/{record.metric} of group {record.group!r} "
            f"window_start_ms {record.window_start_ms} window_end_ms {record.window_end_ms}"
        )
    if isinstance(record, AlertEvent):
        return f"alert {record.rule!r} {record.state} of device {record.device!r} ts_ms {record.ts_ms}"
    return type(record).__name__


def count_of(record: object) -> int:
    return len(record.readings) if isinstance(record, ReadingBatch) else 1


_writes: dict[str, Callable[[TelemetryStore, list[Any]], Awaitable[None]]] = {
    READINGS: lambda store, records: store.write_readings(records),
    AGGREGATES: lambda store, records: store.write_aggregates(records),
    ALERTS: lambda store, records: store.write_alerts(records),
}
_splits: dict[str, Split[Any]] = {READINGS: split_batch, AGGREGATES: whole, ALERTS: whole}


class RecordWriter:
    def __init__(self, store: TelemetryStore, meter: Meter, consumer_group: str = ""):
        self.store = store
        self.consumer_group = consumer_group  # the durable consumer, for messaging.consumer.group.name
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
            "fleetflow_writer_write_errors",
            unit="1",
            description="Failed store writes, by record type and reason (the writes searching a refusal included)",
        )
        self.dead_lettered = meter.create_counter(
            "fleetflow_writer_records_dead_lettered",
            unit="1",
            description="Records the store refused, dead-lettered alone, by record type and the store's error",
        )
        for record in (READINGS, AGGREGATES, ALERTS):  # export 0, so rate() and increase() see the first one
            self.errors.add(0, {"record": record, "reason": "unavailable"})
            self.stored.add(0, {"record": record})
        self.rows.add(0)
        self.late.add(0)
        self.write_duration = telemetry.latency_histogram(
            meter, "fleetflow_writer_write_duration_seconds", "One batched store write, by record"
        )
        self.batch_size = meter.create_histogram(
            "fleetflow_writer_batch_readings", unit="1", description="Readings per store write"
        )
        self.e2e_latency = meter.create_histogram(
            "fleetflow_end_to_end_latency_seconds",
            unit="s",
            description="Device timestamp of a batch's newest reading to its commit in the store (late excluded)",
            explicit_bucket_boundaries_advisory=telemetry.END_TO_END_BUCKETS,
        )

    async def handle(self, msgs: Sequence[Msg]) -> list[Failure | None]:
        outcomes: list[Failure | None] = [None] * len(msgs)
        decoded = Decoded()
        links: dict[int, trace.Link] = {}  # message position -> its receive span
        for index, msg in enumerate(msgs):
            outcomes[index] = self._receive(msg, decoded, index, links)
        groups: dict[str, list[Part[Any]]] = {
            READINGS: [Part(i, b) for i, b in decoded.readings] + [Part(i, b, late=True) for i, b in decoded.late],
            AGGREGATES: [Part(i, a) for i, a in decoded.aggregates],
            ALERTS: [Part(i, a) for i, a in decoded.alerts],
        }
        verdicts = await asyncio.gather(
            *(self._store(record, parts, links) for record, parts in groups.items() if parts)
        )
        for verdict in verdicts:
            for index, failure in verdict.items():
                outcomes[index] = failure
        return outcomes

    def _receive(self, msg: Msg, decoded: Decoded, index: int, links: dict[int, trace.Link]) -> Failure | None:
        """Decode one message inside a span that continues its trace; the write that stores it links to it.

        A fetch holds hundreds of messages, so the span costs what it must and no more: it is not made the
        current span (decoding logs nothing and starts no span), and its attributes are built only when it is
        recorded (most are not: sampling). When its trace is certainly not sampled, not even the span is made:
        its context, all that the write's links and the logs use, is built from the message's traceparent."""
        unrecorded = telemetry.unsampled_child_context(msg.headers, tracer)
        if unrecorded is not None:
            links[index] = trace.Link(unrecorded)
            return decode(msg, decoded, index)
        name = f"process {msg.subject.rsplit('.', 2)[0]}"
        span = tracer.start_span(name, telemetry.extract(msg.headers), trace.SpanKind.CONSUMER)
        with span:  # ends it, recording an exception that escapes
            if span.is_recording():
                span.set_attributes(telemetry.consumer_attributes(msg, self.consumer_group))
            links[index] = trace.Link(span.get_span_context())
            failure = decode(msg, decoded, index)
            if failure is not None:
                span.set_status(trace.StatusCode.ERROR, failure.reason)
            return failure

    async def _store(
        self, record: str, parts: list[Part[Any]], links: dict[int, trace.Link]
    ) -> dict[int, Failure | None]:
        """Write one record type's messages in one go; the outcome by message position."""
        error = await self._write(record, parts, links)
        if error is None:
            return dict.fromkeys((p.index for p in parts), None)
        if error.outage:
            return {p.index: self._retry(record, error) for p in parts}
        isolation = await isolate(parts, error, lambda half: self._write(record, half, links), _splits[record])
        return self._verdicts(record, parts, isolation, links)

    @staticmethod
    def _retry(record: str, outage: WriteError) -> Failure:
        return Failure(f"store unavailable while writing {record}: {outage.message}")

    def _verdicts(
        self, record: str, parts: list[Part[Any]], isolation: Isolation[Any], links: dict[int, trace.Link]
    ) -> dict[int, Failure | None]:
        """A message with records left unwritten by an outage is retried whole (nothing dead-lettered for an
        outage); one with refused records is dead-lettered, as a whole if none of it was stored."""
        verdicts: dict[int, Failure | None] = dict.fromkeys((p.index for p in parts), None)
        unwritten = {p.index for p in isolation.unwritten}
        for index in unwritten:
            assert isolation.outage is not None  # only an outage leaves records unwritten
            verdicts[index] = self._retry(record, isolation.outage)
        stored = {p.index for p in isolation.stored}
        refused: dict[int, list[tuple[Part[Any], WriteError]]] = {}
        for part, error in isolation.refused:
            if part.index not in unwritten:
                refused.setdefault(part.index, []).append((part, error))
        for index, refusals in refused.items():
            # Logged in the refused message's trace, like its dead letter, so the log line and the trace join up.
            with trace.use_span(trace.NonRecordingSpan(links[index].context)):
                verdicts[index] = self._dead_letter(record, refusals, partial=index in stored)
        return verdicts

    def _dead_letter(self, record: str, refusals: list[tuple[Part[Any], WriteError]], partial: bool) -> Failure:
        """The Failure that dead-letters one message's refused records: the message itself when none of it was
        stored, else a ReadingBatch of the same device holding only the refused readings."""
        reasons = []
        for part, error in refusals:
            what = describe(part.record)
            self.dead_lettered.add(count_of(part.record), {"record": record, "reason": error.kind})
            log.warning("record refused by the store; dead-lettering it", record=record, what=what, error=error.message)
            reasons.append(f"{what}: {error.message}")
        data = None
        if partial:
            first = refusals[0][0].record
            assert isinstance(first, ReadingBatch)  # only a ReadingBatch splits into parts
            readings = [r for part, _ in refusals for r in part.record.readings]
            data = codec.encode(msgspec.structs.replace(first, readings=readings))
        return Failure("; ".join(reasons), poison=True, dead_letter=data)

    async def _write(
        self, record: str, parts: Sequence[Part[Any]], all_links: dict[int, trace.Link]
    ) -> WriteError | None:
        """Run one store write; why it failed, if it did.

        One write combines many messages: its span continues the first message's trace and links to the span
        of every message it writes (the OpenTelemetry convention for batch consumers), so each trace reaches
        the store, and a message reaches only the writes that held its records."""
        links = [all_links[i] for i in dict.fromkeys(p.index for p in parts) if i in all_links]
        records = [p.record for p in parts]
        count = sum(count_of(r) for r in records)
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
                await _writes[record](self.store, records)
            except StoreUnavailable as exc:
                error = WriteError(outage=True, kind="unavailable", message=str(exc))
            except Exception as exc:  # refused, or failed in a way no store foresaw: searched either way
                message = str(exc) if isinstance(exc, RecordRefused) else f"{type(exc).__name__}: {exc}"
                error = WriteError(outage=False, kind=type(exc.__cause__ or exc).__name__, message=message)
            else:
                self._count_stored(record, parts, count, time.perf_counter() - started)
                return None
            self.errors.add(1, {"record": record, "reason": error.kind})
            span.set_status(trace.StatusCode.ERROR, error.message)
            return error

    def _count_stored(self, record: str, parts: Sequence[Part[Any]], count: int, seconds: float) -> None:
        self.write_duration.record(seconds, {"record": record})
        self.stored.add(count, {"record": record})
        if record != READINGS:
            return
        self.rows.add(count)
        self.late.add(sum(count_of(p.record) for p in parts if p.late))
        self.batch_size.record(count)
        now_ms = time.time() * 1000
        for part in parts:
            if not part.late and part.record.readings:
                self.e2e_latency.record(max(0.0, (now_ms - max(r.ts for r in part.record.readings)) / 1000))
