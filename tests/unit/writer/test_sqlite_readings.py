"""The SQLite store's readings statements (many rows per statement where a batch is large enough) leave the
readings table exactly as upserting one row per reading in order does: every row, its metrics text and its
store time, and of two readings with one key the later one, within a batch or across batches of a fetch."""

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetflow.api.pipeline import Tables
from fleetflow.runtime.codec import Reading, ReadingBatch
from fleetflow.writer.stores import RecordRefused
from fleetflow.writer.stores.sqlite import SqliteStore, migrations
from fleetflow.writer.stores.sqlite_readings import SHARED_MAX, SHARED_STEP, ReadingUpserts, reading_rows

T0 = 1_796_000_000_000
NOW = T0 + 5_000
TABLES = Tables()
UPSERTS = ReadingUpserts(TABLES.readings)


@pytest.fixture(scope="module")
def db() -> Iterator[sqlite3.Connection]:
    db = sqlite3.connect(":memory:", isolation_level=None)
    for statements in migrations(TABLES):
        for statement in statements:
            db.execute(statement)
    yield db
    db.close()


def stored(db: sqlite3.Connection) -> list[tuple[object, ...]]:
    rows = db.execute(f"SELECT fleet, device, ts, seq, metrics, typeof(metrics), stored_ms FROM {TABLES.readings} "
                      "ORDER BY fleet, device, ts, seq").fetchall()  # fmt: skip
    db.execute(f"DELETE FROM {TABLES.readings}")
    return rows


def batch(device: str, size: int, first_seq: int, same_ts: int, repeat: int, value: float) -> ReadingBatch:
    """`size` readings from `first_seq`; `same_ts` readings in a row share a ts; seqs repeat every `repeat`
    readings (0: never), so that keys repeat within a batch, and `value` tells the metrics of batches apart."""
    readings = [
        Reading(seq=first_seq + (i % repeat if repeat else i), ts=T0 + i // same_ts,
                metrics={"temp": value + i, "rh": 40.0} if i % 3 else {"temp": value})
        for i in range(size)
    ]  # fmt: skip
    return ReadingBatch(fleet="f1", device=device, readings=readings, received_ms=T0)


# Sizes around the edges that matter: none, below a shared statement, its multiples with and without
# rows left over, and past the largest statement.
sizes = st.one_of(
    st.integers(min_value=0, max_value=3 * SHARED_STEP),
    st.sampled_from([SHARED_MAX - 1, SHARED_MAX, SHARED_MAX + 1, 2 * SHARED_MAX + SHARED_STEP + 3]),
    st.integers(min_value=0, max_value=600),
)
batches = st.builds(
    batch,
    device=st.sampled_from(["d1", "d2"]),
    size=sizes,
    first_seq=st.integers(min_value=0, max_value=40),
    same_ts=st.sampled_from([1, 3, 1000]),
    repeat=st.sampled_from([0, 0, 5, 11]),
    value=st.floats(min_value=-1e6, max_value=1e6, allow_nan=False),
)


@settings(max_examples=150, deadline=None)
@given(fetch=st.lists(batches, max_size=6))
def test_the_statements_store_what_one_row_at_a_time_stores(db: sqlite3.Connection, fetch: list[ReadingBatch]) -> None:
    db.executemany(UPSERTS.row_sql, list(reading_rows(fetch, NOW)))
    expected = stored(db)

    for sql, parameters, many in UPSERTS.statements(fetch, NOW):
        if many:
            db.executemany(sql, parameters)
        else:
            db.execute(sql, parameters)

    assert stored(db) == expected


def test_a_large_batch_takes_few_statements_of_few_kinds() -> None:
    fetch = [batch("d1", size, 0, 1, 0, 1.0) for size in (100, 3, 1000, 7, 257)]
    statements = UPSERTS.statements(fetch, NOW)
    shared = [len(parameters) for _, parameters, many in statements if not many]
    rows = [len(parameters) for _, parameters, many in statements if many]
    # 100 = 96 + 4 rows; 3 rows; 1000 = 3 x 256 + 232; 7 rows; 257 = 256 + 1 row
    assert shared == [3 + 3 * n for n in (96, 256, 256, 256, 232, 256)]
    assert rows == [4 + 3, 7, 1]
    assert len({sql for sql, _, _ in statements}) == 4  # of 96, 256 and 232 rows, and of one row


async def test_a_value_sqlite_refuses_in_a_large_batch_is_named_and_the_write_stores_nothing(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "store.sqlite3", TABLES, ttl_seconds=86_400)
    await store.open()
    try:
        good = batch("d1", 40, 0, 1, 0, 1.0)
        readings = list(good.readings)
        readings[17] = Reading(seq=2**63, ts=T0 + 17, metrics={"temp": 1.0})  # inside a shared statement
        with pytest.raises(RecordRefused, match=f"seq {2**63} is outside SQLite's INTEGER range"):
            await store.write_readings([batch("d2", 3, 0, 1, 0, 1.0), ReadingBatch(
                fleet="f1", device="d1", readings=readings, received_ms=T0)])  # fmt: skip
        assert await store.count_readings("f1") == 0
        await store.write_readings([good])
        assert await store.count_readings("f1") == 40
    finally:
        await store.close()
