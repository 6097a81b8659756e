"""A fetch's readings as SQLite statements: the upserts into the readings table, in the readings' order.

One statement step per reading binds six values, and SQLite copies the two strings (fleet and device) for every
reading. A device batch's readings share fleet, device and the store time, so a batch of `SHARED_STEP` readings
or more is written by statements of many rows that bind those three once and three values per reading (seq, ts,
metrics): a quarter less CPU per reading (docs/performance.md, "The writer's SQLite statements"). A statement
costs more than it saves for a few readings, so smaller batches, and the fewer than `SHARED_STEP` readings a
batch has left over, go one row per reading as before.

Shared statements hold a multiple of `SHARED_STEP` rows, at most `SHARED_MAX`: 32 distinct statements, which
sqlite3 prepares once each and keeps in its statement cache (128 by default), whatever the batch sizes."""

from collections.abc import Iterator, Sequence
from typing import Any

import msgspec

from fleetflow.runtime.codec import Reading, ReadingBatch

SHARED_STEP = 8
SHARED_MAX = 256
COLUMNS = ("fleet", "device", "seq", "ts", "metrics", "stored_ms")
Row = tuple[Any, ...]
# (sql, parameters, many): `many` runs the sql once per row of `parameters` (executemany).
Statement = tuple[str, Sequence[Any], bool]
_metrics_encoder = msgspec.json.Encoder()


class ReadingUpserts:
    """The statements that upsert readings into one readings table."""

    def __init__(self, table: str):
        # Metrics are bound as the bytes msgspec encodes; CAST keeps the column JSON text (which SQL's JSON
        # functions read), without a str per reading.
        conflict = """ON CONFLICT (fleet, device, ts, seq) DO UPDATE SET
            metrics = excluded.metrics, stored_ms = excluded.stored_ms"""
        self.row_sql = f"""INSERT INTO {table} (fleet, device, seq, ts, metrics, stored_ms)
            VALUES (?, ?, ?, ?, CAST(? AS TEXT), ?) {conflict}"""
        # ?1 fleet, ?2 device, ?3 stored_ms, then (seq, ts, metrics) per row. The WHERE keeps SQLite from
        # reading ON CONFLICT as a join constraint (the upsert documentation asks for it after a SELECT).
        self._shared_sql = {
            rows: f"""INSERT INTO {table} (fleet, device, seq, ts, metrics, stored_ms)
                SELECT ?1, ?2, column1, column2, CAST(column3 AS TEXT), ?3
                FROM (VALUES {", ".join(["(?, ?, ?)"] * rows)}) WHERE true {conflict}"""
            for rows in range(SHARED_STEP, SHARED_MAX + 1, SHARED_STEP)
        }

    def statements(self, batches: Sequence[ReadingBatch], now_ms: int) -> list[Statement]:
        """Every reading of `batches`, stored at `now_ms`, upserted in the order of the batches and their
        readings, so that of two readings with one key the later one is kept, as one row at a time would."""
        statements: list[Statement] = []
        rows: list[Row] = []  # one-row upserts not yet in `statements`
        encode = _metrics_encoder.encode
        for batch in batches:
            readings = batch.readings
            shared = len(readings) - len(readings) % SHARED_STEP
            fleet, device = batch.fleet, batch.device
            if shared:
                if rows:
                    statements.append((self.row_sql, rows, True))
                    rows = []
                for start in range(0, shared, SHARED_MAX):
                    chunk = readings[start : min(start + SHARED_MAX, shared)]
                    statements.append(self._shared(fleet, device, now_ms, chunk))
            rows += [(fleet, device, r.seq, r.ts, encode(r.metrics), now_ms) for r in readings[shared:]]
        if rows:
            statements.append((self.row_sql, rows, True))
        return statements

    def _shared(self, fleet: str, device: str, now_ms: int, readings: Sequence[Reading]) -> Statement:
        encode = _metrics_encoder.encode
        # One list extended in place, instead of a list of tuples chained into a second one: 35 ns less per reading.
        parameters: list[Any] = [fleet, device, now_ms]
        for r in readings:
            parameters += (r.seq, r.ts, encode(r.metrics))
        return self._shared_sql[len(readings)], parameters, False


def reading_rows(batches: Sequence[ReadingBatch], now_ms: int) -> Iterator[Row]:
    """Every reading as the row of `COLUMNS` it is stored as (to name a value SQLite refused)."""
    encode = _metrics_encoder.encode
    for batch in batches:
        for r in batch.readings:
            yield batch.fleet, batch.device, r.seq, r.ts, encode(r.metrics), now_ms


def latest_rows(batches: Sequence[ReadingBatch], now_ms: int) -> list[Row]:
    """The row of each device's newest reading (greatest ts, then seq) in `batches`, for the latest table."""
    newest: dict[tuple[str, str], Row] = {}
    for batch in batches:
        if not batch.readings:
            continue
        fleet, device = batch.fleet, batch.device
        last = newest_reading(batch.readings)
        known = newest.get((fleet, device))
        if known is None or (last.ts, last.seq) > (known[3], known[2]):
            newest[(fleet, device)] = (fleet, device, last.seq, last.ts, _metrics_encoder.encode(last.metrics), now_ms)
    return list(newest.values())


def newest_reading(readings: Sequence[Reading]) -> Reading:
    """The reading with the greatest (ts, seq); a plain loop, since a key function costs a tuple per reading."""
    best = readings[0]
    for r in readings:
        if r.ts > best.ts or (r.ts == best.ts and r.seq > best.seq):
            best = r
    return best
