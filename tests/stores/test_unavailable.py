"""While the store is unavailable the writer retries and acknowledges nothing; once it is back, everything is
stored and acknowledged; a message that keeps failing ends in the dead-letter stream with its error.

Runs the writer's real path: a real nats-server, the pipeline's stream and durable consumer as the writer
provisions them, BatchConsumer, RecordWriter, and a real store behind a switch that makes writes fail."""

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import nats
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerInfo
from opentelemetry.metrics import Meter, get_meter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from fleetflow.api import DeviceFleet, Pipeline
from fleetflow.runtime import codec, jetstream, subjects
from fleetflow.runtime.codec import AlertEvent, ReadingBatch, WindowAggregate
from fleetflow.runtime.commands import CommandRecord
from fleetflow.runtime.consumer import ERROR_HEADER, BatchConsumer, DeadLetters
from fleetflow.writer.persist import RecordWriter
from fleetflow.writer.stores import (
    AggregateQuery,
    AlertQuery,
    CommandQuery,
    DeviceQuery,
    Page,
    ReadingQuery,
    StoredReading,
    StoreUnavailable,
    TelemetryStore,
)
from tests.stores.conftest import Stores, unique_fleet
from tests.stores.test_contract import aggregate, alert, batch
from tests.support.natsserver import NatsServer


class SwitchedStore(TelemetryStore):
    """A real store whose writes fail with StoreUnavailable while `down` is set (as a store outage would)."""

    def __init__(self, store: TelemetryStore):
        self.store = store
        self.system = store.system
        self.down = True
        self.refused = 0

    def _gate(self) -> None:
        if self.down:
            self.refused += 1
            raise StoreUnavailable("store is down for this test")

    async def open(self) -> None:
        await self.store.open()

    async def close(self) -> None:
        await self.store.close()

    async def write_readings(self, batches: Sequence[ReadingBatch]) -> None:
        self._gate()
        await self.store.write_readings(batches)

    async def write_aggregates(self, aggregates: Sequence[WindowAggregate]) -> None:
        self._gate()
        await self.store.write_aggregates(aggregates)

    async def write_alerts(self, events: Sequence[AlertEvent]) -> None:
        self._gate()
        await self.store.write_alerts(events)

    async def write_commands(self, records: Sequence[CommandRecord]) -> None:
        self._gate()
        await self.store.write_commands(records)

    async def readings(self, query: ReadingQuery) -> Page[StoredReading]:
        return await self.store.readings(query)

    async def aggregate_page(self, query: AggregateQuery) -> Page[WindowAggregate]:
        return await self.store.aggregate_page(query)

    async def alert_page(self, query: AlertQuery) -> Page[AlertEvent]:
        return await self.store.alert_page(query)

    async def command_page(self, query: CommandQuery) -> Page[CommandRecord]:
        return await self.store.command_page(query)

    async def latest(self, fleet: str, device: str) -> StoredReading | None:
        return await self.store.latest(fleet, device)

    async def latest_page(self, query: DeviceQuery) -> Page[StoredReading]:
        return await self.store.latest_page(query)

    async def count_readings(self, fleet: str) -> int:
        return await self.store.count_readings(fleet)

    async def expire(self, now_ms: int) -> int:
        return await self.store.expire(now_ms)


@dataclass
class Writer:
    js: JetStreamContext
    fleet: DeviceFleet
    pipeline: Pipeline
    store: SwitchedStore
    start: Callable[[], None]  # start consuming, when running_writer was told to wait

    def subject(self, record: str, device: str) -> str:
        return subjects.pipeline_subject(self.fleet.name, self.pipeline.name, record, device)

    async def consumer(self) -> ConsumerInfo:
        stream = subjects.pipeline_stream(self.fleet.name, self.pipeline.name)
        return await self.js.consumer_info(stream, subjects.writer_consumer(self.pipeline.name))

    async def dead_letter_messages(self) -> list[Msg]:
        """Every dead-lettered message: as many as the dead-letter stream holds now, each waited for (not "until
        0.3 s pass without one", which a loaded machine can take before the first arrives)."""
        held = (await self.js.stream_info(subjects.dead_letter_stream(self.fleet.name))).state.messages
        sub = await self.js.subscribe(f"ff.{self.fleet.name}.dlq.>", ordered_consumer=True)
        try:
            return [await sub.next_msg(timeout=10) for _ in range(held)]
        finally:
            await sub.unsubscribe()

    async def dead_letters(self) -> list[tuple[str, str]]:
        """(source subject, error) of every dead-lettered message."""
        return [((m.headers or {}).get("Fleetflow-Source-Subject", ""), (m.headers or {}).get(ERROR_HEADER, ""))
                for m in await self.dead_letter_messages()]  # fmt: skip


@asynccontextmanager
async def running_writer(
    server: NatsServer,
    stores: Stores,
    max_deliver: int,
    meter: Meter | None = None,
    store: SwitchedStore | None = None,
    waiting: bool = False,
) -> AsyncIterator[Writer]:
    """Provision the fleet and pipeline as the writer does, and run its consumer on a switched store; with
    `waiting`, only once the test calls start() (so that what it published first arrives in one fetch)."""
    name = unique_fleet()
    fleet = DeviceFleet.model_validate({"metadata": {"name": name}, "spec": {}})
    pipeline = stores.pipeline(fleetRef={"name": name}, delivery={"maxDeliver": max_deliver})
    store = store or SwitchedStore(await stores.open())
    nc = await nats.connect(server.url)
    js = nc.jetstream()
    await jetstream.provision_fleet(js, fleet)
    await jetstream.provision_pipeline(js, fleet, pipeline)
    consumer = BatchConsumer(
        js,
        subjects.pipeline_stream(name, pipeline.name),
        subjects.writer_consumer(pipeline.name),
        RecordWriter(store, meter or get_meter("test")).handle,
        DeadLetters(js, name, f"writer-{pipeline.name}"),
        max_deliver,
        batch=64,
    )
    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []

    def start() -> None:
        if not tasks:
            tasks.append(asyncio.create_task(consumer.run(stop)))

    if not waiting:
        start()
    try:
        yield Writer(js, fleet, pipeline, store, start)
    finally:
        stop.set()
        for task in tasks:
            await asyncio.wait_for(task, 10)
        await nc.close()


async def eventually(condition: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.05)


async def test_nothing_is_acked_while_the_store_is_down_and_all_is_stored_after(
    nats_server: NatsServer, stores: Stores
) -> None:
    async with running_writer(nats_server, stores, max_deliver=10) as w:
        fleet = w.fleet.name
        for device in ("d1", "d2", "d3"):
            await w.js.publish(w.subject("readings", device), codec.encode(batch(fleet, device, range(1, 11))))
        await w.js.publish(w.subject("late", "d1"), codec.encode(batch(fleet, "d1", range(100, 103))))
        await w.js.publish(
            w.subject("aggregates", "d1"), codec.encode(aggregate(fleet, "device=d1", 1_700_000_000_000))
        )
        await w.js.publish(w.subject("alerts", "d2"), codec.encode(alert(fleet, "d2", 1_700_000_000_000)))

        # Delivered, refused, redelivered, refused again: the writer keeps trying ...
        async def redelivered() -> bool:
            return w.store.refused >= 6 and (await w.consumer()).num_redelivered > 0

        await eventually(redelivered, 10, "the writer retried the refused messages")
        # ... and has acknowledged nothing, because nothing was committed.
        info = await w.consumer()
        assert info.ack_floor is not None and info.ack_floor.stream_seq == 0
        assert await w.store.count_readings(fleet) == 0

        w.store.down = False

        async def all_acked() -> bool:
            info = await w.consumer()
            return info.num_ack_pending == 0 and info.num_pending == 0 and info.ack_floor.stream_seq == 6

        await eventually(all_acked, 15, "every message was acknowledged after the store came back")
        assert await w.store.count_readings(fleet) == 33
        assert len(await w.store.aggregates(fleet, "p1")) == 1
        assert len(await w.store.alerts(fleet, "p1")) == 1
        assert await w.dead_letters() == []


async def test_a_message_that_keeps_failing_is_dead_lettered_with_its_error(
    nats_server: NatsServer, stores: Stores
) -> None:
    async with running_writer(nats_server, stores, max_deliver=2) as w:
        subject = w.subject("readings", "d1")
        await w.js.publish(subject, codec.encode(batch(w.fleet.name, "d1", range(1, 4))))

        async def settled() -> bool:
            return (await w.consumer()).num_ack_pending == 0 and w.store.refused >= 2

        await eventually(settled, 10, "the message was delivered twice and then settled")
        assert [(s, e.split(";")[0]) for s, e in await w.dead_letters()] == [
            (subject, "store unavailable while writing readings: store is down for this test (delivery 2 of 2)")
        ]


async def test_unknown_or_undecodable_records_are_dead_lettered_at_once(
    nats_server: NatsServer, stores: Stores
) -> None:
    async with running_writer(nats_server, stores, max_deliver=5) as w:
        w.store.down = False
        fleet = w.fleet.name
        await w.js.publish(w.subject("forecasts", "d1"), b"{}")
        await w.js.publish(w.subject("aggregates", "d1"), codec.encode(batch(fleet, "d1", range(1, 3))))
        await w.js.publish(w.subject("readings", "d1"), codec.encode(batch("otherfleet", "d1", range(1, 3))))
        await w.js.publish(w.subject("readings", "d2"), codec.encode(batch(fleet, "d2", range(1, 3))))

        async def settled() -> bool:
            info = await w.consumer()
            return info.num_ack_pending == 0 and info.num_pending == 0 and info.ack_floor.stream_seq == 4

        await eventually(settled, 10, "all four messages were settled")
        errors = dict(await w.dead_letters())
        assert (
            errors[w.subject("forecasts", "d1")].startswith("unknown record type 'forecasts' in subject ")
            and "accepted: readings, late, aggregates, alerts" in errors[w.subject("forecasts", "d1")]
        )
        assert "is not a valid WindowAggregate" in errors[w.subject("aggregates", "d1")]
        assert "belongs to fleet 'otherfleet'" in errors[w.subject("readings", "d1")]
        assert "(delivery 1 of 5)" in errors[w.subject("readings", "d1")]
        assert await w.store.count_readings(fleet) == 2


def counted(reader: InMemoryMetricReader, name: str) -> dict[str, int]:
    """Sum of a counter by its `record` attribute ("" without one)."""
    totals: dict[str, int] = {}
    data = reader.get_metrics_data()
    for resource in data.resource_metrics if data else []:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == name:
                    for point in metric.data.data_points:
                        key = str((point.attributes or {}).get("record", ""))
                        totals[key] = totals.get(key, 0) + int(point.value)
    return totals


async def test_late_readings_are_stored_as_readings_and_counted(nats_server: NatsServer, stores: Stores) -> None:
    reader = InMemoryMetricReader()
    meter = MeterProvider(metric_readers=[reader]).get_meter("writer-test")
    async with running_writer(nats_server, stores, max_deliver=5, meter=meter) as w:
        w.store.down = False
        fleet = w.fleet.name
        await w.js.publish(w.subject("readings", "d1"), codec.encode(batch(fleet, "d1", range(10, 15))))
        await w.js.publish(w.subject("late", "d1"), codec.encode(batch(fleet, "d1", range(1, 4))))

        async def stored() -> bool:
            return (await w.consumer()).ack_floor.stream_seq == 2

        await eventually(stored, 10, "both messages were acknowledged")
        page = await w.store.readings(ReadingQuery(fleet, "d1"))
        assert [r.seq for r in page.items] == [14, 13, 12, 11, 10, 3, 2, 1]
        assert counted(reader, "fleetflow_writer_late_readings_stored") == {"": 3}
        assert counted(reader, "fleetflow_writer_readings_stored") == {"": 8}
        # every record kind is exported from the start, at 0
        assert counted(reader, "fleetflow_writer_records_stored") == {"readings": 8, "aggregates": 0, "alerts": 0}
