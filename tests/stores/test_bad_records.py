"""A record the store refuses costs no other record: the writer stores everything else of the fetched batch,
acknowledges it, and dead-letters only the refused record with the store's reason.

The writer's real path as in test_unavailable: a real nats-server, the pipeline's stream and consumer as the
writer provisions them, BatchConsumer, RecordWriter and a real store. The messages are published before the
consumer starts, so the bad record arrives in one fetch (and one store write) with all the others."""

from collections.abc import Sequence
from dataclasses import dataclass

import msgspec
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from fleetflow.runtime import codec, subjects
from fleetflow.runtime.codec import ReadingBatch
from fleetflow.runtime.consumer import ERROR_HEADER, DeadLetters
from fleetflow.writer.stores import RecordRefused
from tests.stores.conftest import Stores, unique_fleet
from tests.stores.test_contract import T0, aggregate, alert, all_readings, batch
from tests.stores.test_unavailable import SwitchedStore, Writer, counted, eventually, running_writer
from tests.support.natsserver import NatsServer

DEVICES = [f"d{n:02}" for n in range(32)]


@dataclass
class DeadLetter:
    source: str
    error: str
    msg_id: str
    data: bytes


async def dead_letters(w: Writer) -> list[DeadLetter]:
    found = []
    for msg in await w.dead_letter_messages():
        headers = msg.headers or {}
        source, error = headers.get("Fleetflow-Source-Subject", ""), headers.get(ERROR_HEADER, "")
        found.append(DeadLetter(source, error, headers.get("Nats-Msg-Id", ""), msg.data))
    return found


async def settle(w: Writer, messages: int) -> None:
    async def settled() -> bool:
        info = await w.consumer()
        return info.num_ack_pending == 0 and info.num_pending == 0 and info.ack_floor.stream_seq == messages

    await eventually(settled, 15, f"all {messages} messages were acknowledged")


def with_reading(good: ReadingBatch, seq: int, ts: int, at: int) -> ReadingBatch:
    """`good` with one more reading inserted at position `at`."""
    readings = list(good.readings)
    readings.insert(at, codec.Reading(seq=seq, ts=ts, metrics={"temp": 1.0}))
    return msgspec.structs.replace(good, readings=readings)


@pytest.mark.parametrize("bad_seq", [2**64, 2**63], ids=["seq 2^64", "seq 2^63"])
async def test_one_bad_reading_costs_only_itself(nats_server: NatsServer, stores: Stores, bad_seq: int) -> None:
    reader = InMemoryMetricReader()
    meter = MeterProvider(metric_readers=[reader]).get_meter("writer-test")
    async with running_writer(nats_server, stores, max_deliver=5, meter=meter, waiting=True) as w:
        w.store.down = False
        fleet, victim = w.fleet.name, "d13"
        for device in DEVICES:  # 64 messages: one fetch, one store write, until the store refuses it
            await w.js.publish(w.subject("readings", device), codec.encode(batch(fleet, device, range(1, 6))))
            second = batch(fleet, device, range(6, 11))
            if device == victim:
                second = with_reading(second, bad_seq, T0 + 7500, at=2)
            await w.js.publish(w.subject("readings", device), codec.encode(second))
        w.start()
        await settle(w, 2 * len(DEVICES))

        assert await w.store.count_readings(fleet) == 10 * len(DEVICES)
        for device in DEVICES:
            assert [seq for seq, _ in await all_readings(w.store, fleet, device)] == list(range(10, 0, -1)), device
        latest = await w.store.latest(fleet, victim)
        assert latest is not None and latest.seq == 10

        [letter] = await dead_letters(w)
        assert letter.source == w.subject("readings", victim)
        assert f"reading seq {bad_seq} ts {T0 + 7500} of device '{victim}'" in letter.error
        if stores.kind == "sqlite":  # the store's own words name the value too
            assert f"seq {bad_seq} is outside SQLite's INTEGER range" in letter.error
        stream = subjects.pipeline_stream(fleet, w.pipeline.name)
        assert letter.msg_id.startswith(f"dlq/{stream}/")
        refused = codec.decode_batch(letter.data)
        assert (refused.fleet, refused.device) == (fleet, victim)
        assert [(r.seq, r.ts) for r in refused.readings] == [(bad_seq, T0 + 7500)]
        assert counted(reader, "fleetflow_writer_records_dead_lettered") == {"readings": 1}
        assert counted(reader, "fleetflow_writer_readings_stored") == {"": 10 * len(DEVICES)}


async def test_a_message_keeps_its_good_readings_and_one_of_only_bad_readings_is_dead_lettered_whole(
    nats_server: NatsServer, stores: Stores
) -> None:
    async with running_writer(nats_server, stores, max_deliver=5, waiting=True) as w:
        w.store.down = False
        fleet = w.fleet.name
        two_bad = with_reading(with_reading(batch(fleet, "d1", range(1, 7)), 2**63, T0 + 500, at=0), 2**64, T0, at=7)
        only_bad = with_reading(batch(fleet, "d2", range(0)), 2**64, T0, at=0)
        await w.js.publish(w.subject("readings", "d1"), codec.encode(two_bad))
        await w.js.publish(w.subject("late", "d2"), codec.encode(only_bad))
        await w.js.publish(w.subject("readings", "d3"), codec.encode(batch(fleet, "d3", range(1, 4))))
        w.start()
        await settle(w, 3)

        assert [seq for seq, _ in await all_readings(w.store, fleet, "d1")] == [6, 5, 4, 3, 2, 1]
        assert await all_readings(w.store, fleet, "d2") == []
        assert [seq for seq, _ in await all_readings(w.store, fleet, "d3")] == [3, 2, 1]
        letters = {letter.source: letter for letter in await dead_letters(w)}
        assert letters.keys() == {w.subject("readings", "d1"), w.subject("late", "d2")}
        d1 = letters[w.subject("readings", "d1")]
        assert [r.seq for r in codec.decode_batch(d1.data).readings] == [2**63, 2**64]
        assert f"reading seq {2**63} " in d1.error and f"; reading seq {2**64} " in d1.error
        assert letters[w.subject("late", "d2")].data == codec.encode(only_bad)


async def test_a_refused_aggregate_or_alert_is_dead_lettered_alone(nats_server: NatsServer, stores: Stores) -> None:
    start, bad = 1_700_000_000_000, 2**63
    async with running_writer(nats_server, stores, max_deliver=5, waiting=True) as w:
        w.store.down = False
        fleet = w.fleet.name
        for n in range(8):
            group = f"device=d{n}"
            window = aggregate(fleet, group, bad if n == 5 else start + n * 60_000)
            await w.js.publish(w.subject("aggregates", f"d{n}"), codec.encode(window))
            event = alert(fleet, f"d{n}", bad if n == 2 else start + n)
            await w.js.publish(w.subject("alerts", f"d{n}"), codec.encode(event))
        await w.js.publish(w.subject("readings", "d1"), codec.encode(batch(fleet, "d1", range(1, 4))))
        w.start()
        await settle(w, 17)

        assert sorted(a.group for a in await w.store.aggregates(fleet, "p1")) == [
            f"device=d{n}" for n in range(8) if n != 5
        ]
        assert sorted(e.device for e in await w.store.alerts(fleet, "p1")) == [f"d{n}" for n in range(8) if n != 2]
        assert await w.store.count_readings(fleet) == 3
        letters = {letter.source: letter for letter in await dead_letters(w)}
        assert letters.keys() == {w.subject("aggregates", "d5"), w.subject("alerts", "d2")}
        assert f"window_start_ms {bad}" in letters[w.subject("aggregates", "d5")].error
        assert letters[w.subject("aggregates", "d5")].data == codec.encode(aggregate(fleet, "device=d5", bad))
        assert f"ts_ms {bad}" in letters[w.subject("alerts", "d2")].error


class TrippingStore(SwitchedStore):
    """Goes down the first time the real store refuses readings: an outage in the middle of the search."""

    tripped = False

    async def write_readings(self, batches: Sequence[ReadingBatch]) -> None:
        try:
            await super().write_readings(batches)
        except RecordRefused:
            if not self.tripped:
                self.tripped, self.down = True, True
            raise


async def test_an_outage_during_the_search_retries_and_dead_letters_nothing_for_it(
    nats_server: NatsServer, stores: Stores
) -> None:
    store = TrippingStore(await stores.open())
    store.down = False
    async with running_writer(nats_server, stores, max_deliver=10, store=store, waiting=True) as w:
        fleet = w.fleet.name
        for device in DEVICES[:8]:
            readings = batch(fleet, device, range(1, 6))
            readings = with_reading(readings, 2**64, T0, at=1) if device == "d03" else readings
            await w.js.publish(w.subject("readings", device), codec.encode(readings))
        w.start()

        async def retried() -> bool:
            return store.refused >= 2 and (await w.consumer()).num_redelivered > 0

        await eventually(retried, 10, "the search met the outage and the messages came back")
        info = await w.consumer()
        assert info.ack_floor is not None and info.ack_floor.stream_seq == 0
        assert await store.count_readings(fleet) == 0
        assert await dead_letters(w) == []

        store.down = False
        await settle(w, 8)
        assert await store.count_readings(fleet) == 5 * 8
        [letter] = await dead_letters(w)
        assert letter.source == w.subject("readings", "d03") and f"seq {2**64}" in letter.error


async def test_a_redelivered_message_is_dead_lettered_once(nats_server: NatsServer, stores: Stores) -> None:
    async with running_writer(nats_server, stores, max_deliver=5, waiting=True) as w:
        fleet = w.fleet.name
        await w.js.publish(w.subject("readings", "d1"), codec.encode(batch(fleet, "d1", range(1, 3))))
        stream = subjects.pipeline_stream(fleet, w.pipeline.name)
        sub = await w.js.pull_subscribe_bind(subjects.writer_consumer(w.pipeline.name), stream)
        [msg] = await sub.fetch(1, timeout=2)
        dead = DeadLetters(w.js, fleet, f"writer-{w.pipeline.name}")
        for delivery in (1, 2):  # the writer's ack was lost after the first: the message came back
            await dead.send(msg, f"refused (delivery {delivery})", b"the refused part")

        [letter] = await dead_letters(w)
        assert (letter.data, letter.error) == (b"the refused part", "refused (delivery 1)")


@pytest.mark.parametrize("bad_seq", [2**63, 2**64])
async def test_the_store_refuses_a_seq_beyond_64_bits_as_a_refusal_naming_it(stores: Stores, bad_seq: int) -> None:
    store, fleet = await stores.open(), unique_fleet()
    refused = with_reading(batch(fleet, "d1", range(1, 4)), bad_seq, T0, at=1)

    with pytest.raises(RecordRefused, match=rf"seq {bad_seq}"):
        await store.write_readings([batch(fleet, "d2", range(1, 4)), refused])
    if stores.kind == "sqlite":  # one transaction: nothing of the refused write is stored
        assert await store.count_readings(fleet) == 0


async def test_a_batch_without_readings_is_nothing_to_store(stores: Stores) -> None:
    store, fleet = await stores.open(), unique_fleet()
    await store.write_readings([batch(fleet, "d1", range(0)), batch(fleet, "d2", range(1, 3))])
    assert await store.count_readings(fleet) == 2
    assert await store.latest(fleet, "d1") is None
