"""The embedded store: one SQLite file in WAL mode, written in batches inside transactions.

Table names come from the Pipeline's sink, where the API models validated them as plain identifiers; that
is what makes it safe to put them into SQL text. Values always travel as parameters."""

import asyncio
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from fleetflow.api.identifiers import check_table_name
from fleetflow.api.pipeline import Tables
from fleetflow.runtime.codec import AlertEvent, ReadingBatch, WindowAggregate
from fleetflow.runtime.commands import CommandRecord, encode_record
from fleetflow.writer.stores.base import (
    AggregateQuery,
    AlertQuery,
    CommandQuery,
    DeviceQuery,
    Page,
    ReadingQuery,
    RecordRefused,
    StoredReading,
    StoreUnavailable,
    TelemetryStore,
)
from fleetflow.writer.stores.paging import decode_token, encode_token
from fleetflow.writer.stores.sqlite_readings import COLUMNS as READING_COLUMNS
from fleetflow.writer.stores.sqlite_readings import ReadingUpserts, latest_rows, reading_rows

T = TypeVar("T")
INTEGER_MIN, INTEGER_MAX = -(2**63), 2**63 - 1
# Errors about a statement or a value SQLite will not take: the same rows would be refused again. They are
# matched before sqlite3.DatabaseError, their base, which otherwise means a damaged or unreadable file.
REFUSALS: tuple[type[Exception], ...] = (
    sqlite3.IntegrityError,
    sqlite3.DataError,
    sqlite3.InterfaceError,
    sqlite3.ProgrammingError,
    sqlite3.NotSupportedError,
    OverflowError,
    ValueError,
    TypeError,
)
AGGREGATE_COLUMNS = ("fleet", "pipeline", "step", "grp", "metric", "window_start_ms", "window_end_ms", "record")
ALERT_COLUMNS = ("fleet", "pipeline", "rule", "device", "ts_ms", "state", "record")
COMMAND_COLUMNS = ("fleet", "device", "created_ms", "id", "record")
CACHE_KIB = 32 * 1024  # SQLite's page cache of a store's connection (the writer's, the application API's), at most
_metrics_decoder = msgspec.json.Decoder(dict[str, float])


def migrations(tables: Tables) -> list[list[str]]:
    """Schema versions in order; version N is the list at index N-1. Only ever append."""
    readings, latest = check_table_name(tables.readings), check_table_name(tables.latest)
    aggregates, alerts = check_table_name(tables.aggregates), check_table_name(tables.alerts)
    commands = check_table_name(tables.commands)
    return [
        [
            f"""CREATE TABLE IF NOT EXISTS {readings} (
                fleet TEXT NOT NULL, device TEXT NOT NULL, seq INTEGER NOT NULL, ts INTEGER NOT NULL,
                metrics TEXT NOT NULL, stored_ms INTEGER NOT NULL,
                PRIMARY KEY (fleet, device, seq)) WITHOUT ROWID""",
            f"CREATE INDEX IF NOT EXISTS {readings}_by_time ON {readings} (fleet, device, ts DESC, seq DESC)",
            f"""CREATE TABLE IF NOT EXISTS {latest} (
                fleet TEXT NOT NULL, device TEXT NOT NULL, seq INTEGER NOT NULL, ts INTEGER NOT NULL,
                metrics TEXT NOT NULL, stored_ms INTEGER NOT NULL,
                PRIMARY KEY (fleet, device)) WITHOUT ROWID""",
            f"""CREATE TABLE IF NOT EXISTS {aggregates} (
                fleet TEXT NOT NULL, pipeline TEXT NOT NULL, step TEXT NOT NULL, grp TEXT NOT NULL,
                metric TEXT NOT NULL, window_start_ms INTEGER NOT NULL, window_end_ms INTEGER NOT NULL,
                record TEXT NOT NULL,
                PRIMARY KEY (fleet, pipeline, step, grp, metric, window_start_ms)) WITHOUT ROWID""",
            f"""CREATE TABLE IF NOT EXISTS {alerts} (
                fleet TEXT NOT NULL, pipeline TEXT NOT NULL, rule TEXT NOT NULL, device TEXT NOT NULL,
                ts_ms INTEGER NOT NULL, state TEXT NOT NULL, record TEXT NOT NULL,
                PRIMARY KEY (fleet, pipeline, rule, device, ts_ms, state)) WITHOUT ROWID""",
        ],
        [
            f"CREATE INDEX IF NOT EXISTS {alerts}_by_time ON {alerts} (fleet, pipeline, ts_ms, device, rule, state)",
            f"""CREATE TABLE IF NOT EXISTS {commands} (
                fleet TEXT NOT NULL, device TEXT NOT NULL, created_ms INTEGER NOT NULL, id TEXT NOT NULL,
                record TEXT NOT NULL,
                PRIMARY KEY (fleet, device, created_ms, id)) WITHOUT ROWID""",
        ],
        # Readings keyed as Cassandra clusters them, (fleet, device, ts, seq): one b-tree serves both the
        # upsert and time-range reads, where a key on seq plus a time index cost two inserts per reading.
        [
            f"""CREATE TABLE {readings}_v3 (
                fleet TEXT NOT NULL, device TEXT NOT NULL, ts INTEGER NOT NULL, seq INTEGER NOT NULL,
                metrics TEXT NOT NULL, stored_ms INTEGER NOT NULL,
                PRIMARY KEY (fleet, device, ts, seq)) WITHOUT ROWID""",
            f"""INSERT INTO {readings}_v3 (fleet, device, ts, seq, metrics, stored_ms)
                SELECT fleet, device, ts, seq, metrics, stored_ms FROM {readings}""",
            f"DROP TABLE {readings}",
            f"ALTER TABLE {readings}_v3 RENAME TO {readings}",
        ],
    ]


class SqliteStore(TelemetryStore):
    system = "sqlite"

    def __init__(self, path: Path, tables: Tables, ttl_seconds: float):
        self.path = path
        self.tables = tables
        self.ttl_ms = int(ttl_seconds * 1000)
        # One thread owns the connection: SQLite connections are not to be shared across threads.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self._db: sqlite3.Connection | None = None
        self._readings = ReadingUpserts(tables.readings)
        latest = tables.latest
        self._upsert_latest = f"""INSERT INTO {latest} (fleet, device, seq, ts, metrics, stored_ms)
            VALUES (?, ?, ?, ?, CAST(? AS TEXT), ?) ON CONFLICT (fleet, device) DO UPDATE SET
            seq = excluded.seq, ts = excluded.ts, metrics = excluded.metrics, stored_ms = excluded.stored_ms
            WHERE excluded.ts > {latest}.ts OR (excluded.ts = {latest}.ts AND excluded.seq >= {latest}.seq)"""

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def call() -> T:
            if self._db is None:
                raise StoreUnavailable(f"store {self.path} is not open")
            try:
                return fn(self._db)
            except REFUSALS:
                raise
            except sqlite3.DatabaseError as exc:  # locked, disk full, I/O error, damaged file: not the rows
                raise StoreUnavailable(f"sqlite {self.path}: {exc}") from exc

        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    async def _write(
        self,
        what: str,
        columns: Sequence[str],
        rows: Iterable[tuple[Any, ...]],
        work: Callable[[sqlite3.Connection], object],
    ) -> None:
        """Run `work` in one transaction; RecordRefused naming the value if SQLite will not take some row."""
        try:
            await self._run(lambda db: _in_transaction(db, lambda: work(db)))
        except REFUSALS as exc:
            raise RecordRefused(f"sqlite refused {what}: {_explain(exc, columns, rows)}") from exc

    async def open(self) -> None:
        def connect() -> None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
            _enable_wal(db, self.path)
            # FULL: a batch acknowledged to JetStream must survive a power cut, not only a crash.
            db.execute("PRAGMA synchronous=FULL")
            # The pages a fetch's upserts touch (a leaf per device, and the interior pages above them) outgrow
            # SQLite's default 2 MiB cache once the table holds millions of readings; each miss is a read.
            db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
            self._migrate(db)
            self._db = db

        await asyncio.get_running_loop().run_in_executor(self._executor, connect)

    def _migrate(self, db: sqlite3.Connection) -> None:
        db.execute("BEGIN IMMEDIATE")  # serialises writers that start together
        try:
            db.execute("CREATE TABLE IF NOT EXISTS fleetflow_schema (version INTEGER NOT NULL)")
            row = db.execute("SELECT max(version) FROM fleetflow_schema").fetchone()
            current = row[0] or 0
            for version, statements in enumerate(migrations(self.tables), start=1):
                if version > current:
                    for statement in statements:
                        db.execute(statement)
                    db.execute("INSERT INTO fleetflow_schema (version) VALUES (?)", (version,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    async def close(self) -> None:
        def close() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        await asyncio.get_running_loop().run_in_executor(self._executor, close)
        self._executor.shutdown(wait=True)

    async def write_readings(self, batches: Sequence[ReadingBatch]) -> None:
        now_ms = int(time.time() * 1000)
        statements = self._readings.statements(batches, now_ms)
        newest = latest_rows(batches, now_ms)

        def write(db: sqlite3.Connection) -> None:
            for sql, parameters, many in statements:
                if many:
                    db.executemany(sql, parameters)
                else:
                    db.execute(sql, parameters)
            db.executemany(self._upsert_latest, newest)

        await self._write("readings", READING_COLUMNS, reading_rows(batches, now_ms), write)

    async def write_aggregates(self, aggregates: Sequence[WindowAggregate]) -> None:
        rows = [(a.fleet, a.pipeline, a.step, a.group, a.metric, a.window_start_ms, a.window_end_ms,
                 msgspec.json.encode(a).decode()) for a in aggregates]  # fmt: skip
        sql = f"INSERT OR REPLACE INTO {self.tables.aggregates} VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
        await self._write("aggregates", AGGREGATE_COLUMNS, rows, lambda db: db.executemany(sql, rows))

    async def write_alerts(self, events: Sequence[AlertEvent]) -> None:
        rows = [(e.fleet, e.pipeline, e.rule, e.device, e.ts_ms, e.state, msgspec.json.encode(e).decode())
                for e in events]  # fmt: skip
        sql = f"INSERT OR REPLACE INTO {self.tables.alerts} VALUES (?, ?, ?, ?, ?, ?, ?)"
        await self._write("alerts", ALERT_COLUMNS, rows, lambda db: db.executemany(sql, rows))

    async def write_commands(self, records: Sequence[CommandRecord]) -> None:
        rows = [(r.command.fleet, r.command.device, r.command.created_ms, r.command.id, encode_record(r).decode())
                for r in records]  # fmt: skip
        t = self.tables.commands
        sql = f"""INSERT INTO {t} VALUES (?, ?, ?, ?, ?) ON CONFLICT (fleet, device, created_ms, id)
            DO UPDATE SET record = excluded.record WHERE json_array_length(excluded.record, '$.history')
            >= coalesce(json_array_length({t}.record, '$.history'), 0)"""
        await self._write("commands", COMMAND_COLUMNS, rows, lambda db: db.executemany(sql, rows))

    async def aggregate_page(self, query: AggregateQuery) -> Page[WindowAggregate]:
        after = decode_token(query.page_token, 4) if query.page_token else [-(2**62), "", "", ""]
        sql = f"""SELECT record, window_start_ms, grp, step, metric FROM {self.tables.aggregates}
            WHERE fleet = ? AND pipeline = ? AND (? IS NULL OR grp = ?) AND (? IS NULL OR step = ?)
            AND window_start_ms >= ? AND window_start_ms < ? AND (window_start_ms, grp, step, metric) > (?, ?, ?, ?)
            ORDER BY window_start_ms, grp, step, metric LIMIT ?"""
        params = (query.fleet, query.pipeline, query.group, query.group, query.step, query.step, query.since_ms,
                  query.until_ms, *after, query.limit + 1)  # fmt: skip
        rows = await self._run(lambda db: db.execute(sql, params).fetchall())
        return _page(rows, query.limit, WindowAggregate)

    async def alert_page(self, query: AlertQuery) -> Page[AlertEvent]:
        after = decode_token(query.page_token, 4) if query.page_token else [-(2**62), "", "", ""]
        sql = f"""SELECT record, ts_ms, device, rule, state FROM {self.tables.alerts}
            WHERE fleet = ? AND pipeline = ? AND (? IS NULL OR device = ?) AND ts_ms >= ? AND ts_ms < ?
            AND (ts_ms, device, rule, state) > (?, ?, ?, ?) ORDER BY ts_ms, device, rule, state LIMIT ?"""
        params = (query.fleet, query.pipeline, query.device, query.device, query.since_ms, query.until_ms,
                  *after, query.limit + 1)  # fmt: skip
        rows = await self._run(lambda db: db.execute(sql, params).fetchall())
        return _page(rows, query.limit, AlertEvent)

    async def command_page(self, query: CommandQuery) -> Page[CommandRecord]:
        before = decode_token(query.page_token, 2) if query.page_token else [2**62, ""]
        sql = f"""SELECT record, created_ms, id FROM {self.tables.commands}
            WHERE fleet = ? AND device = ? AND created_ms >= ? AND created_ms < ? AND (created_ms, id) < (?, ?)
            ORDER BY created_ms DESC, id DESC LIMIT ?"""
        params = (query.fleet, query.device, query.since_ms, query.until_ms, *before, query.limit + 1)
        rows = await self._run(lambda db: db.execute(sql, params).fetchall())
        return _page(rows, query.limit, CommandRecord)

    async def readings(self, query: ReadingQuery) -> Page[StoredReading]:
        before_ts, before_seq = decode_token(query.page_token, 2) if query.page_token else (2**62, 2**62)
        sql = f"""SELECT fleet, device, seq, ts, metrics, stored_ms FROM {self.tables.readings}
            WHERE fleet = ? AND device = ? AND ts >= ? AND ts < ? AND (ts < ? OR (ts = ? AND seq < ?))
            ORDER BY ts DESC, seq DESC LIMIT ?"""
        params = (query.fleet, query.device, query.since_ms, query.until_ms,
                  before_ts, before_ts, before_seq, query.limit + 1)  # fmt: skip
        rows = await self._run(lambda db: db.execute(sql, params).fetchall())
        items = [_stored(row) for row in rows[: query.limit]]
        token = encode_token([items[-1].ts, items[-1].seq]) if len(rows) > query.limit else None
        return Page(items, token)

    async def latest(self, fleet: str, device: str) -> StoredReading | None:
        sql = f"SELECT fleet, device, seq, ts, metrics, stored_ms FROM {self.tables.latest} " \
              "WHERE fleet = ? AND device = ?"  # fmt: skip
        row = await self._run(lambda db: db.execute(sql, (fleet, device)).fetchone())
        return _stored(row) if row else None

    async def latest_page(self, query: DeviceQuery) -> Page[StoredReading]:
        after = _device_after(query.page_token)
        sql = f"""SELECT fleet, device, seq, ts, metrics, stored_ms FROM {self.tables.latest}
            WHERE fleet = ? AND device > ? ORDER BY device LIMIT ?"""
        rows = await self._run(lambda db: db.execute(sql, (query.fleet, after, query.limit + 1)).fetchall())
        items = [_stored(row) for row in rows[: query.limit]]
        return Page(items, encode_token([items[-1].device]) if len(rows) > query.limit else None)

    async def count_readings(self, fleet: str) -> int:
        sql = f"SELECT count(*) FROM {self.tables.readings} WHERE fleet = ?"
        return int((await self._run(lambda db: db.execute(sql, (fleet,)).fetchone()))[0])

    async def expire(self, now_ms: int) -> int:
        cutoff = now_ms - self.ttl_ms
        t = self.tables
        # A reading lives at least the TTL after it was stored, as in Cassandra, whose TTL counts from the write:
        # one that arrives already older than the TTL (a device catching up) is kept, never acked and dropped.
        statements = [
            f"DELETE FROM {t.readings} WHERE ts < ?1 AND stored_ms < ?1",
            f"DELETE FROM {t.aggregates} WHERE window_end_ms < ?",
            f"DELETE FROM {t.alerts} WHERE ts_ms < ?",
            f"DELETE FROM {t.commands} WHERE created_ms < ?",
        ]

        def delete(db: sqlite3.Connection) -> int:
            removed = 0
            for sql in statements:
                removed += db.execute(sql, (cutoff,)).rowcount  # ?1 binds the one value everywhere
            return removed

        return await self._run(delete)


def _enable_wal(db: sqlite3.Connection, path: Path, timeout: float = 30.0) -> None:
    """Switch to WAL. SQLite does not wait on its busy handler for this, so when another writer is opening
    the same file at that moment ("database is locked"), try again until `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise StoreUnavailable(f"sqlite {path}: cannot switch to WAL: {exc}") from exc
            time.sleep(0.01)


def _in_transaction(db: sqlite3.Connection, work: Callable[[], object]) -> None:
    db.execute("BEGIN IMMEDIATE")
    try:
        work()
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def _explain(exc: Exception, columns: Sequence[str], rows: Iterable[tuple[Any, ...]]) -> str:
    """The error, with the first value SQLite cannot bind named: sqlite3's own messages do not say which."""
    error = f"{type(exc).__name__}: {exc}"
    for row in rows:
        for column, value in zip(columns, row, strict=True):
            problem = _unbindable(value)
            if problem:
                return f"{column} {problem} ({error})"
    return error


def _unbindable(value: object) -> str | None:
    if isinstance(value, int) and not INTEGER_MIN <= value <= INTEGER_MAX:
        return f"{value} is outside SQLite's INTEGER range {INTEGER_MIN}..{INTEGER_MAX}"
    if isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError as exc:
            return f"{value[:80]!r} cannot be encoded as UTF-8 ({exc.reason})"
    return None


def _device_after(token: str | None) -> str:
    """The device id a devices page token resumes after ("" for the first page)."""
    if token is None:
        return ""
    (after,) = decode_token(token, 1)
    if not isinstance(after, str):
        raise ValueError(f"page token {token!r} is not one this store issued for this query; omit it to start over")
    return after


def _stored(row: tuple[Any, ...]) -> StoredReading:
    fleet, device, seq, ts, metrics, stored_ms = row
    return StoredReading(fleet, device, seq, ts, _metrics_decoder.decode(metrics), stored_ms)


def _page(rows: list[tuple[Any, ...]], limit: int, kind: type[T]) -> Page[T]:
    """Rows are (record JSON, *sort key); one row beyond `limit` means there is a next page."""
    items = [msgspec.json.decode(row[0], type=kind) for row in rows[:limit]]
    token = encode_token(list(rows[limit - 1][1:])) if len(rows) > limit else None
    return Page(items, token)
