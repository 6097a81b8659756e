"""The store contract: what the writer and `fleetflow query` rely on, whichever store the sink names."""

import asyncio
import time

import msgspec
import pytest

from fleetflow.runtime.codec import AlertEvent, Command, Reading, ReadingBatch, WindowAggregate
from fleetflow.runtime.commands import DELIVERED, QUEUED, RESULTS, CommandRecord, Transition
from fleetflow.writer.stores import (
    AggregateQuery,
    AlertQuery,
    CommandQuery,
    DeviceQuery,
    ReadingQuery,
    TelemetryStore,
)
from tests.stores.conftest import Stores, unique_fleet

HOUR = 3_600_000
# Five whole hours ago: the 1h buckets of the tests below lie in the past, TTLs of 30d keep them.
T0 = (int(time.time() * 1000) // HOUR - 5) * HOUR


def batch(fleet: str, device: str, seqs: range, ts_of=lambda seq: T0 + seq * 1000, value: float = 1.0) -> ReadingBatch:
    readings = [Reading(seq=s, ts=ts_of(s), metrics={"temp": value + s, "rh": 40.0}) for s in seqs]
    return ReadingBatch(fleet=fleet, device=device, readings=readings, received_ms=int(time.time() * 1000))


async def all_readings(store: TelemetryStore, fleet: str, device: str, **window: int) -> list[tuple[int, int]]:
    """(seq, ts) of every page of a query, following the page tokens."""
    found: list[tuple[int, int]] = []
    token = None
    while True:
        page = await store.readings(ReadingQuery(fleet, device, limit=7, page_token=token, **window))
        assert len(page.items) <= 7
        found += [(r.seq, r.ts) for r in page.items]
        if page.next_page_token is None:
            return found
        token = page.next_page_token


def aggregate(fleet: str, group: str, start: int, metric: str = "temp", mean: float = 1.5) -> WindowAggregate:
    return WindowAggregate(fleet=fleet, pipeline="p1", step="per-minute", group=group, metric=metric,
                           window_start_ms=start, window_end_ms=start + 60_000, count=3, min=1.0, max=2.0,
                           mean=mean, sum=4.5, last=2.0, percentiles={"p95": 1.9})  # fmt: skip


def alert(fleet: str, device: str, ts: int, state: str = "firing") -> AlertEvent:
    return AlertEvent(fleet=fleet, pipeline="p1", rule="too-hot", device=device, state=state, severity="warning",
                      ts_ms=ts, values={"temp": 41.5}, message="temp above 40")  # fmt: skip


async def test_rewriting_a_batch_stores_each_reading_once(stores: Stores) -> None:
    store, fleet = await stores.open(), unique_fleet()
    await store.write_readings([batch(fleet, "d1", range(1, 11))])
    await store.write_readings([batch(fleet, "d1", range(1, 11)), batch(fleet, "d1", range(6, 16))])

    assert await store.count_readings(fleet) == 15
    found = await all_readings(store, fleet, "d1")
    assert [seq for seq, _ in found] == list(range(15, 0, -1))


async def test_a_rewrite_replaces_the_row_it_repeats(stores: Stores) -> None:
    store, fleet = await stores.open(), unique_fleet()
    await store.write_readings([batch(fleet, "d1", range(1, 3), value=1.0)])
    await store.write_readings([batch(fleet, "d1", range(1, 3), value=100.0)])

    page = await store.readings(ReadingQuery(fleet, "d1"))
    assert [r.metrics["temp"] for r in page.items] == [102.0, 101.0]


async def test_a_time_range_spanning_buckets_returns_exactly_its_readings(stores: Stores) -> None:
    store, fleet = await stores.open(bucket="1h"), unique_fleet()
    # One reading every 10 minutes across four hourly buckets.
    await store.write_readings([batch(fleet, "d1", range(24), ts_of=lambda s: T0 + s * 600_000)])
    since, until = T0 + 50 * 60_000, T0 + 3 * HOUR + 10 * 60_000

    found = await all_readings(store, fleet, "d1", since_ms=since, until_ms=until)

    expected = [(s, T0 + s * 600_000) for s in range(23, -1, -1) if since <= T0 + s * 600_000 < until]
    assert found == expected
    assert len({ts // HOUR for _, ts in found}) == 4


async def test_pages_cover_the_range_once_newest_first(stores: Stores) -> None:
    store, fleet = await stores.open(bucket="1h"), unique_fleet()
    await store.write_readings([batch(fleet, "d1", range(1, 26), ts_of=lambda s: T0 + s * 400_000)])

    found = await all_readings(store, fleet, "d1")

    assert [seq for seq, _ in found] == list(range(25, 0, -1))
    assert [ts for _, ts in found] == sorted((ts for _, ts in found), reverse=True)


async def test_a_foreign_page_token_is_refused_with_a_clear_error(stores: Stores) -> None:
    store, fleet = await stores.open(), unique_fleet()
    await store.write_readings([batch(fleet, "d1", range(1, 3))])
    with pytest.raises(ValueError, match="page token 'bogus' is not one this store issued"):
        await store.readings(ReadingQuery(fleet, "d1", page_token="bogus"))


async def test_rows_are_gone_once_the_ttl_has_passed(stores: Stores) -> None:
    ttl = "2s"
    store, fleet = await stores.open(ttl=ttl, prefix="ttl_"), unique_fleet()
    now = int(time.time() * 1000)
    await store.write_readings([batch(fleet, "d1", range(1, 6), ts_of=lambda s: now - 1000 + s)])
    assert await store.count_readings(fleet) == 5

    async def still_there() -> bool:
        return bool((await store.readings(ReadingQuery(fleet, "d1"))).items)

    await stores.outlive_ttl(store, ttl, still_there)

    assert not await still_there()
    assert await store.count_readings(fleet) == 0


async def test_a_reading_older_than_the_ttl_is_kept_the_ttl_after_it_was_stored(stores: Stores) -> None:
    # A device catching up after a long outage: its readings are acknowledged, so they must be stored and
    # readable, whatever their timestamp; the TTL counts from the write (as Cassandra's does).
    store, fleet = await stores.open(ttl="1h", prefix="old_"), unique_fleet()
    long_ago = int(time.time() * 1000) - 3 * HOUR
    await store.write_readings([batch(fleet, "d1", range(1, 4), ts_of=lambda s: long_ago + s)])
    if stores.kind == "sqlite":
        await store.expire(int(time.time() * 1000))  # the writer's periodic expiry, right after the write
    assert [r.seq for r in (await store.readings(ReadingQuery(fleet, "d1"))).items] == [3, 2, 1]


async def test_concurrent_writers_store_each_reading_exactly_once(stores: Stores) -> None:
    # Two writers start together (migrations race) and write overlapping redeliveries at the same time.
    first, second = await asyncio.gather(stores.open(), stores.open())
    fleet = unique_fleet()
    writes = []
    for device in ("d1", "d2", "d3"):
        for start in range(0, 40, 10):
            writes.append(first.write_readings([batch(fleet, device, range(start, start + 15))]))
            writes.append(second.write_readings([batch(fleet, device, range(start + 5, start + 12))]))
    await asyncio.gather(*writes)

    assert await first.count_readings(fleet) == 3 * 45
    for device in ("d1", "d2", "d3"):
        assert [seq for seq, _ in await all_readings(second, fleet, device)] == list(range(44, -1, -1))
        latest = await first.latest(fleet, device)
        assert latest is not None and latest.seq == 44


async def test_latest_is_the_newest_reading_whatever_the_write_order(stores: Stores) -> None:
    store, fleet = await stores.open(), unique_fleet()
    await store.write_readings([batch(fleet, "d1", range(20, 25))])
    await store.write_readings([batch(fleet, "d1", range(1, 5))])  # older readings arrive late

    latest = await store.latest(fleet, "d1")

    assert latest is not None
    assert (latest.fleet, latest.device, latest.seq, latest.ts) == (fleet, "d1", 24, T0 + 24_000)
    assert latest.metrics == {"temp": 25.0, "rh": 40.0}
    assert await store.latest(fleet, "nobody") is None


async def test_aggregates_round_trip_by_group_oldest_first_and_upsert(stores: Stores) -> None:
    store, fleet = await stores.open(bucket="1h"), unique_fleet()
    starts = [T0 + i * 20 * 60_000 for i in range(9)]  # across three hourly buckets
    written = [aggregate(fleet, g, s) for g in ("device=d1", "site=north") for s in starts]
    await store.write_aggregates(written)
    rewritten = aggregate(fleet, "device=d1", starts[2], mean=9.0)
    await store.write_aggregates([rewritten])

    d1 = await store.aggregates(fleet, "p1", "device=d1")
    everything = await store.aggregates(fleet, "p1")

    expected_d1 = [rewritten if s == starts[2] else aggregate(fleet, "device=d1", s) for s in starts]
    assert d1 == expected_d1
    key = msgspec.json.encode
    assert sorted(map(key, everything)) == sorted(map(key, expected_d1 + written[9:]))


async def test_aggregate_pages_respect_limit_and_range(stores: Stores) -> None:
    store, fleet = await stores.open(bucket="1h"), unique_fleet()
    starts = [T0 + i * 10 * 60_000 for i in range(18)]
    await store.write_aggregates([aggregate(fleet, "device=d1", s) for s in starts])
    query = AggregateQuery(fleet, "p1", "device=d1", since_ms=starts[3], until_ms=starts[15], limit=5)

    seen: list[int] = []
    while True:
        page = await store.aggregate_page(query)
        assert len(page.items) <= 5
        seen += [a.window_start_ms for a in page.items]
        if page.next_page_token is None:
            break
        query = AggregateQuery(fleet, "p1", "device=d1", starts[3], starts[15], 5, page.next_page_token)

    assert seen == starts[3:15]


async def test_aggregates_of_one_step(stores: Stores) -> None:
    store, fleet = await stores.open(bucket="1h"), unique_fleet()
    starts = [T0 + i * 20 * 60_000 for i in range(6)]
    per_minute = [aggregate(fleet, g, s) for s in starts for g in ("device=d1", "device=d2")]
    hourly = [msgspec.structs.replace(a, step="hourly") for a in per_minute]
    await store.write_aggregates(per_minute + hourly)

    for group in ("device=d1", None):
        query = AggregateQuery(fleet, "p1", group, limit=4, step="hourly")
        seen: list[WindowAggregate] = []
        while True:
            page = await store.aggregate_page(query)
            assert len(page.items) <= 4
            seen += page.items
            if page.next_page_token is None:
                break
            query = AggregateQuery(fleet, "p1", group, limit=4, page_token=page.next_page_token, step="hourly")
        expected = [a for a in hourly if group is None or a.group == group]
        assert sorted(seen, key=lambda a: (a.window_start_ms, a.group)) == expected


async def test_the_devices_page_holds_each_devices_newest_reading_in_id_order(stores: Stores) -> None:
    store, fleet = await stores.open(bucket="1h"), unique_fleet()
    devices = [f"d{i:02d}" for i in range(23)]
    await store.write_readings([batch(fleet, d, range(1, 4)) for d in devices])
    await store.write_readings([batch(fleet, "d05", range(2, 3), ts_of=lambda s: T0 - HOUR)])  # older: no change
    await store.write_readings([batch(unique_fleet(), "zz", range(1, 2))])  # another fleet's is not listed

    seen, token = [], None
    while True:
        page = await store.latest_page(DeviceQuery(fleet, limit=10, page_token=token))
        assert len(page.items) <= 10
        seen += page.items
        token = page.next_page_token
        if token is None:
            break

    assert [r.device for r in seen] == devices
    assert {(r.seq, r.ts) for r in seen} == {(3, T0 + 3000)}
    assert seen[0].metrics == {"temp": 4.0, "rh": 40.0}


async def test_a_devices_page_token_of_another_query_kind_is_refused(stores: Stores) -> None:
    store, fleet = await stores.open(), unique_fleet()
    await store.write_readings([batch(fleet, "d1", range(1, 20))])
    readings_token = (await store.readings(ReadingQuery(fleet, "d1", limit=5))).next_page_token
    assert readings_token is not None
    with pytest.raises(ValueError, match="page token"):
        await store.latest_page(DeviceQuery(fleet, page_token=readings_token))


async def test_alerts_round_trip_by_device_oldest_first(stores: Stores) -> None:
    store, fleet = await stores.open(bucket="1h"), unique_fleet()
    events = [alert(fleet, d, T0 + i * 15 * 60_000, "firing" if i % 2 == 0 else "resolved")
              for i in range(8) for d in ("d1", "d2")]  # fmt: skip
    await store.write_alerts(events)
    await store.write_alerts(events[:4])  # a redelivery rewrites, never duplicates

    d2 = await store.alerts(fleet, "p1", "d2")
    everything = await store.alerts(fleet, "p1")

    assert d2 == [e for e in events if e.device == "d2"]
    assert sorted(everything, key=lambda e: (e.ts_ms, e.device)) == events
    paged = await store.alert_page(AlertQuery(fleet, "p1", "d1", limit=3))
    assert paged.items == [e for e in events if e.device == "d1"][:3] and paged.next_page_token is not None


def command_record(fleet: str, i: int, state: str = QUEUED) -> CommandRecord:
    command = Command(id=f"c{i}", fleet=fleet, device="d1", name="set-fan", params={"speed": i, "mode": "auto"},
                      created_ms=T0 + i * 30 * 60_000, ttl_ms=60_000, source="api-key/3f9c2a71b0d4")  # fmt: skip
    record = CommandRecord(command=command, state=QUEUED, history=[Transition(state=QUEUED, at_ms=command.created_ms)])
    for step, later in enumerate((DELIVERED, state) if state in RESULTS else ()):
        record = record.moved_to(later, command.created_ms + step + 1, f"step {step}")
    return record


async def test_command_log_round_trip_newest_first(stores: Stores) -> None:
    store, fleet = await stores.open(bucket="1h"), unique_fleet()
    records = [command_record(fleet, i) for i in range(6)]
    await store.write_commands(records)
    await store.write_commands(records[2:4])

    first = await store.command_page(CommandQuery(fleet, "d1", limit=4))
    rest = await store.command_page(CommandQuery(fleet, "d1", limit=4, page_token=first.next_page_token))

    assert first.items + rest.items == records[::-1]
    assert rest.next_page_token is None


async def test_the_command_log_keeps_each_commands_newest_state_whatever_order_states_arrive_in(
    stores: Stores,
) -> None:
    store, fleet = await stores.open(bucket="1h"), unique_fleet()
    queued, done = command_record(fleet, 1), command_record(fleet, 1, "succeeded")
    await store.write_commands([queued])
    await store.write_commands([done])
    await store.write_commands([queued])  # an older state, redelivered late

    page = await store.command_page(CommandQuery(fleet, "d1"))
    assert page.items == [done]
    assert [t.state for t in page.items[0].history] == [QUEUED, DELIVERED, "succeeded"]
    assert page.items[0].command.source == "api-key/3f9c2a71b0d4"
