"""The production store: Cassandra, written with prepared idempotent statements from asyncio.

Writes run concurrently with at most `max_in_flight` requests outstanding and are retried with capped
exponential backoff on timeouts and unavailable errors; when the retries run out the writer gets
StoreUnavailable and leaves the JetStream messages unacknowledged. Rows of one partition travel in small
unlogged batches (one mutation on each replica); rows of different partitions never share a batch.

Reads use a partition index: the buckets (and aggregate groups) that hold data, so a time range spanning
many buckets reads only partitions that exist, and paging resumes at a (partition, driver paging state)."""

import asyncio
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import structlog
from cassandra import UnresolvableContactPoints
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, Session
from cassandra.query import BatchStatement, BatchType, PreparedStatement, Statement

from fleetflow.api.pipeline import SinkSpec
from fleetflow.runtime.codec import AlertEvent, Command, ReadingBatch, WindowAggregate
from fleetflow.runtime.commands import QUEUED, CommandRecord, Transition
from fleetflow.writer.stores import cql
from fleetflow.writer.stores.base import (
    FOREVER_MS,
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
from fleetflow.writer.stores.cassandra_auth import read_credentials
from fleetflow.writer.stores.cassandra_cluster import (
    READS,
    RETRYABLE,
    Backoff,
    ClusterOptions,
    Unavailable,
    build_cluster,
    describe,
    execute,
    with_retries,
)
from fleetflow.writer.stores.cassandra_errors import ENCODING_ERRORS, classify, unencodable
from fleetflow.writer.stores.cassandra_schema import Lease, migrate
from fleetflow.writer.stores.paging import decode_token, encode_token
from fleetflow.writer.stores.partition_pages import Fetch, Partition, from_list, parse_token, read_page

log = structlog.get_logger(__name__)
T = TypeVar("T")
EPOCH = datetime(1970, 1, 1)
INDEX_CACHE_SIZE = 200_000
INDEX_FETCH = 5000
# Readings per unlogged batch: well below Cassandra's 5 KiB batch_size_warn_threshold for typical rows.
BATCH_ROWS = 20
OPEN_ERRORS: tuple[type[BaseException], ...] = (*RETRYABLE, Unavailable)
_params_encoder = msgspec.json.Encoder()
_params_decoder = msgspec.json.Decoder(dict[str, Any])
_history_encoder = msgspec.json.Encoder()
_history_decoder = msgspec.json.Decoder(list[Transition])


def _ms(value: datetime) -> int:
    return round((value - EPOCH) / timedelta(milliseconds=1))


@dataclass(frozen=True)
class IndexEntry:
    tbl: str
    fleet: str
    scope: str
    bucket: int
    member: str = ""


class CassandraStore(TelemetryStore):
    system = "cassandra"

    def __init__(
        self,
        sink: SinkSpec,
        credentials_dir: Path | None = None,
        *,
        max_in_flight: int = 128,
        batch_rows: int = BATCH_ROWS,
        backoff: Backoff | None = None,
        lease: Lease | None = None,
        options: ClusterOptions | None = None,
    ):
        self.layout = cql.layout(sink)  # validates now, so a bad sink fails at start with a clear message
        assert sink.cassandra is not None  # layout() checked it
        self.options = options or ClusterOptions(sink.cassandra.contact_points, sink.cassandra.port)
        self.credentials = read_credentials(credentials_dir)
        self.text = cql.statements(self.layout)
        self.batch_rows = max(1, batch_rows)
        self.backoff = backoff or Backoff()
        self.lease = lease or Lease()
        self._in_flight = asyncio.Semaphore(max_in_flight)
        self._cluster: Cluster | None = None
        self._session: Session | None = None
        self._prepared: dict[str, PreparedStatement] = {}
        self._indexed: OrderedDict[IndexEntry, float] = OrderedDict()
        ttl = self.layout.ttl_seconds + self.layout.bucket_ms // 1000 + 2 * cql.INDEX_REFRESH_SECONDS
        self._index_ttl = min(cql.MAX_TTL_SECONDS, ttl)

    @property
    def where(self) -> str:
        return f"cassandra {','.join(self.options.contact_points)}:{self.options.port} (dc {self.layout.local_dc})"

    async def open(self) -> None:
        try:
            # Contact points are resolved here: a DNS name not (yet) resolvable is an outage, not a bug.
            cluster = build_cluster(self.layout, self.options, self.credentials)
        except UnresolvableContactPoints as exc:
            raise StoreUnavailable(f"{self.where}: no contact point resolves: {describe(exc)}") from exc
        try:
            session = await asyncio.to_thread(cluster.connect)
            await migrate(session, self.layout, self.text, self.lease)
            await self._prepare(session)
        except OPEN_ERRORS as exc:
            await asyncio.to_thread(cluster.shutdown)
            raise StoreUnavailable(f"{self.where}: {describe(exc)}") from exc
        except BaseException:
            await asyncio.to_thread(cluster.shutdown)
            raise
        self._cluster, self._session = cluster, session
        log.info("cassandra store open", where=self.where, keyspace=self.layout.keyspace)

    async def _prepare(self, session: Session) -> None:
        for name, text in vars(self.text).items():
            if name.endswith("_version"):
                continue  # the ledger's statements belong to migrations
            statement = await asyncio.to_thread(session.prepare, text)
            # Every statement here is an upsert or a read: retrying or speculating it cannot change the result.
            statement.is_idempotent = True
            self._prepared[name] = statement

    async def close(self) -> None:
        if self._cluster is not None:
            await asyncio.to_thread(self._cluster.shutdown)
        self._cluster = self._session = None
        self._prepared.clear()

    def _session_or_fail(self) -> Session:
        if self._session is None:
            raise StoreUnavailable(f"{self.where} is not open")
        return self._session

    # Writes

    async def _run(self, statement: Statement, params: Sequence[Any] | None, what: str) -> Any:
        session = self._session_or_fail()

        async def once() -> Any:
            async with self._in_flight:
                return await execute(session, statement, params, profile=EXEC_PROFILE_DEFAULT)

        try:
            return await with_retries(once, what, self.backoff)
        except Unavailable as exc:
            raise StoreUnavailable(f"{self.where}: {exc}") from exc
        except Exception as exc:  # not retried by the store: an outage or a refusal of the records, say which
            raise classify(exc, f"{self.where}: {what}") from exc

    async def _run_all(self, calls: Iterable[Awaitable[Any]]) -> None:
        """Run every call (bounded by the in-flight semaphore); raise a failure after all finished.

        An outage is raised before a refusal: the write is then retried as a whole, not searched for bad records
        while the cluster is failing."""
        results = await asyncio.gather(*calls, return_exceptions=True)
        failures = [result for result in results if isinstance(result, BaseException)]
        if failures:
            raise next((f for f in failures if isinstance(f, StoreUnavailable)), failures[0])

    def _bind(self, name: str, values: Sequence[Any]) -> Statement:
        if name not in self._prepared:
            raise StoreUnavailable(f"{self.where} is not open")
        return self._prepared[name].bind(values)

    def _bind_row(self, name: str, values: Sequence[Any]) -> Statement:
        """Bind a row to write; RecordRefused naming the value if one does not fit its column's type."""
        try:
            return self._bind(name, values)
        except ENCODING_ERRORS as exc:
            why = unencodable(self._prepared[name], values) or describe(exc)
            raise RecordRefused(f"{self.where} cannot encode a row for {name}: {why}") from exc

    async def _write_rows(self, rows: Sequence[tuple[tuple[Any, ...], Statement]], what: str) -> None:
        """Write bound statements grouped by partition key: one unlogged batch per chunk of a partition."""
        by_partition: dict[tuple[Any, ...], list[Statement]] = {}
        for key, statement in rows:
            by_partition.setdefault(key, []).append(statement)
        calls = []
        for statements in by_partition.values():
            for start in range(0, len(statements), self.batch_rows):
                chunk = statements[start : start + self.batch_rows]
                calls.append(self._run(_single_partition_batch(chunk), None, what))
        await self._run_all(calls)

    async def _ensure_indexed(self, entries: Iterable[IndexEntry]) -> None:
        """Write index entries not written in the last refresh interval; before the data they point to."""
        now = time.monotonic()
        never = now - 2 * cql.INDEX_REFRESH_SECONDS
        due = {e for e in entries if now - self._indexed.get(e, never) > cql.INDEX_REFRESH_SECONDS}
        if not due:
            return
        ttl = self._index_ttl
        binds = [self._bind_row("insert_index", (e.tbl, e.fleet, e.scope, e.bucket, e.member, ttl)) for e in due]
        await self._run_all(self._run(bound, None, "write partition index") for bound in binds)
        for entry in due:
            self._indexed[entry] = now
            self._indexed.move_to_end(entry)
        while len(self._indexed) > INDEX_CACHE_SIZE:
            self._indexed.popitem(last=False)

    async def write_readings(self, batches: Sequence[ReadingBatch]) -> None:
        now = int(time.time() * 1000)
        bucket, table = self.layout.bucket_ms, self.layout.tables.readings
        rows: list[tuple[tuple[Any, ...], Statement]] = []
        entries: set[IndexEntry] = set()
        newest: dict[tuple[str, str], tuple[int, int, dict[str, float]]] = {}
        for batch in batches:
            fleet, device = batch.fleet, batch.device
            entries.add(IndexEntry(table, fleet, "", cql.EPOCH_BUCKET, device))  # the fleet's device directory
            for r in batch.readings:
                b = cql.bucket_of(r.ts, bucket)
                entries.add(IndexEntry(table, fleet, device, b))
                values = (fleet, device, b, r.ts, r.seq, r.metrics, now)
                rows.append(((fleet, device, b), self._bind_row("insert_reading", values)))
                if (fleet, device) not in newest or (r.ts, r.seq) > newest[(fleet, device)][:2]:
                    newest[(fleet, device)] = (r.ts, r.seq, r.metrics)
        await self._ensure_indexed(entries)
        latest = [
            self._run(
                self._bind_row("upsert_latest", (f, d, ts, seq, metrics, now, _cell_time(ts, seq))), None, "latest"
            )
            for (f, d), (ts, seq, metrics) in newest.items()
        ]
        await self._run_all([self._write_rows(rows, "write readings"), *latest])

    async def write_aggregates(self, aggregates: Sequence[WindowAggregate]) -> None:
        bucket, table = self.layout.bucket_ms, self.layout.tables.aggregates
        rows: list[tuple[tuple[Any, ...], Statement]] = []
        entries: set[IndexEntry] = set()
        for a in aggregates:
            b = cql.bucket_of(a.window_start_ms, bucket)
            entries.add(IndexEntry(table, a.fleet, a.pipeline, b))
            entries.add(IndexEntry(table, a.fleet, _bucket_scope(a.pipeline, b), b, a.group))
            entries.add(IndexEntry(table, a.fleet, _group_scope(a.pipeline, a.group), b))
            values = (
                a.fleet,
                a.pipeline,
                a.group,
                b,
                a.window_start_ms,
                a.step,
                a.metric,
                a.window_end_ms,
                a.count,
                a.min,
                a.max,
                a.mean,
                a.sum,
                a.last,
                a.percentiles,
            )
            rows.append(((a.fleet, a.pipeline, a.group, b), self._bind_row("insert_aggregate", values)))
        await self._ensure_indexed(entries)
        await self._write_rows(rows, "write aggregates")

    async def write_alerts(self, events: Sequence[AlertEvent]) -> None:
        bucket, table = self.layout.bucket_ms, self.layout.tables.alerts
        rows: list[tuple[tuple[Any, ...], Statement]] = []
        entries: set[IndexEntry] = set()
        for e in events:
            b = cql.bucket_of(e.ts_ms, bucket)
            entries.add(IndexEntry(table, e.fleet, e.pipeline, b))
            values = (e.fleet, e.pipeline, b, e.ts_ms, e.device, e.rule, e.state, e.severity, e.values, e.message)
            rows.append(((e.fleet, e.pipeline, b), self._bind_row("insert_alert", values)))
        await self._ensure_indexed(entries)
        await self._write_rows(rows, "write alerts")

    async def write_commands(self, records: Sequence[CommandRecord]) -> None:
        bucket, table = self.layout.bucket_ms, self.layout.tables.commands
        rows: list[tuple[tuple[Any, ...], Statement]] = []
        entries: set[IndexEntry] = set()
        for r in records:
            c = r.command
            b = cql.bucket_of(c.created_ms, bucket)
            entries.add(IndexEntry(table, c.fleet, c.device, b))
            params = _params_encoder.encode(c.params).decode()
            history = _history_encoder.encode(r.history).decode()
            values = (c.fleet, c.device, b, c.created_ms, c.id, c.name, params, c.ttl_ms, c.source, r.state, history,
                      command_cell_time(r))  # fmt: skip
            rows.append(((c.fleet, c.device, b), self._bind_row("insert_command", values)))
        await self._ensure_indexed(entries)
        await self._write_rows(rows, "write commands")

    # Reads

    async def _index(self, tbl: str, fleet: str, scope: str, since_ms: int, until_ms: int) -> list[tuple[int, str]]:
        """(bucket, member) index entries of a scope that may hold rows in [since_ms, until_ms), ascending."""
        lo, hi = cql.buckets_between(since_ms, until_ms, self.layout.bucket_ms)
        statement = self._bind("select_index", (tbl, fleet, scope, lo, hi))
        statement.fetch_size = INDEX_FETCH
        entries: list[tuple[int, str]] = []
        paging_state: bytes | None = None
        while True:
            result = await self._page_of(statement, paging_state, "read partition index")
            entries.extend((_ms(row["bucket"]), row["member"]) for row in result.current_rows)
            paging_state = result.paging_state
            if paging_state is None:
                return entries

    async def _page_of(self, statement: Statement, paging_state: bytes | None, what: str) -> Any:
        session = self._session_or_fail()

        async def once() -> Any:
            async with self._in_flight:
                return await execute(session, statement, profile=READS, paging_state=paging_state)

        try:
            return await with_retries(once, what, self.backoff)
        except Unavailable as exc:
            raise StoreUnavailable(f"{self.where}: {exc}") from exc

    def _fetcher(self, name: str, extra: tuple[Any, ...], convert: Callable[[dict[str, Any]], T]) -> Fetch[T]:
        """Fetch rows of one partition with statement `name`, bound to the partition's key and `extra`."""

        async def fetch(partition: Partition, size: int, state: bytes | None) -> tuple[list[T], bytes | None]:
            statement = self._bind(name, (*partition.params, *extra))
            statement.fetch_size = size
            result = await self._page_of(statement, state, f"read {name}")
            return [convert(row) for row in result.current_rows], result.paging_state

        return fetch

    async def readings(self, query: ReadingQuery) -> Page[StoredReading]:
        table = self.layout.tables.readings
        index = await self._index(table, query.fleet, query.device, query.since_ms, query.until_ms)
        partitions = [Partition((b,), (query.fleet, query.device, b)) for b, _ in reversed(index)]
        fetch = self._fetcher("select_readings", (query.since_ms, query.until_ms), _reading)
        return await read_page(from_list(partitions), fetch, query.limit, query.page_token, 1, descending=True)

    async def aggregate_page(self, query: AggregateQuery) -> Page[WindowAggregate]:
        fetch = self._fetcher("select_aggregates", (query.since_ms, query.until_ms), _aggregate)
        if query.group is not None:
            scope = _group_scope(query.pipeline, query.group)
            index = await self._index(self.layout.tables.aggregates, query.fleet, scope, query.since_ms, query.until_ms)
            partitions = from_list(
                Partition((b, query.group), (query.fleet, query.pipeline, query.group, b)) for b, _ in index
            )
        else:
            partitions = self._aggregate_partitions(query)
        step = query.step
        return await read_page(partitions, fetch, query.limit, query.page_token, 2, descending=False,
                               keep=lambda a: step is None or a.step == step)  # fmt: skip

    async def _aggregate_partitions(self, query: AggregateQuery) -> AsyncIterator[Partition]:
        """Every group's partition, bucket by bucket; the groups of a bucket are listed only when reached."""
        table = self.layout.tables.aggregates
        first = parse_token(query.page_token, 2)[0][0] if query.page_token else None
        for b, _ in await self._index(table, query.fleet, query.pipeline, query.since_ms, query.until_ms):
            if first is not None and b < first:
                continue  # read by earlier pages
            for _, group in await self._index(table, query.fleet, _bucket_scope(query.pipeline, b), b, b + 1):
                yield Partition((b, group), (query.fleet, query.pipeline, group, b))

    async def alert_page(self, query: AlertQuery) -> Page[AlertEvent]:
        index = await self._index(
            self.layout.tables.alerts, query.fleet, query.pipeline, query.since_ms, query.until_ms
        )
        partitions = [Partition((b,), (query.fleet, query.pipeline, b)) for b, _ in index]
        fetch = self._fetcher("select_alerts", (query.since_ms, query.until_ms), _alert)
        device = query.device
        return await read_page(
            from_list(partitions),
            fetch,
            query.limit,
            query.page_token,
            1,
            descending=False,
            keep=lambda e: device is None or e.device == device,
        )

    async def command_page(self, query: CommandQuery) -> Page[CommandRecord]:
        index = await self._index(
            self.layout.tables.commands, query.fleet, query.device, query.since_ms, query.until_ms
        )
        partitions = [Partition((b,), (query.fleet, query.device, b)) for b, _ in reversed(index)]
        fetch = self._fetcher("select_commands", (query.since_ms, query.until_ms), _command)
        return await read_page(from_list(partitions), fetch, query.limit, query.page_token, 1, descending=True)

    async def latest(self, fleet: str, device: str) -> StoredReading | None:
        result = await self._page_of(self._bind("select_latest", (fleet, device)), None, "read latest")
        rows = result.current_rows
        return _reading(rows[0]) if rows else None

    async def latest_page(self, query: DeviceQuery) -> Page[StoredReading]:
        """Devices from the fleet's device directory (one index partition, in member order), then each one's
        row of the latest table, read concurrently: one partition per device, never a scan."""
        after = ""
        if query.page_token is not None:
            (after,) = decode_token(query.page_token, 1)
            if not isinstance(after, str):
                raise ValueError(f"page token {query.page_token!r} is not one this store issued; omit it to start over")
        directory = (self.layout.tables.readings, query.fleet, "", cql.EPOCH_BUCKET, after, query.limit + 1)
        result = await self._page_of(self._bind("select_members", directory), None, "read device directory")
        devices = [row["member"] for row in result.current_rows]
        found = await asyncio.gather(*(self.latest(query.fleet, device) for device in devices[: query.limit]))
        items = [reading for reading in found if reading is not None]  # a device whose latest row expired
        token = encode_token([devices[query.limit - 1]]) if len(devices) > query.limit else None
        return Page(items, token)

    async def count_readings(self, fleet: str) -> int:
        """Counts partition by partition from the index: slow on big fleets, meant for summaries and tests."""
        table = self.layout.tables.readings
        devices = [member for _, member in await self._index(table, fleet, "", cql.EPOCH_BUCKET, 1)]

        async def count_device(device: str) -> int:
            buckets = await self._index(table, fleet, device, 0, FOREVER_MS)
            counts = [
                self._page_of(self._bind("count_partition", (fleet, device, b)), None, "count readings")
                for b, _ in buckets
            ]
            return sum(int(result.current_rows[0]["count"]) for result in await asyncio.gather(*counts))

        return sum(await asyncio.gather(*(count_device(d) for d in devices)))

    async def expire(self, now_ms: int) -> int:
        """Nothing to do: every row carries the table's default TTL and Cassandra drops it itself."""
        return 0


def _cell_time(ts_ms: int, seq: int) -> int:
    """The latest row's cell timestamp: event time in µs with seq as tie-break, so the newest reading wins
    whatever order writes arrive in, without a read-before-write or a lightweight transaction."""
    return ts_ms * 1000 + seq % 1000


def _single_partition_batch(statements: list[Statement]) -> Statement:
    if len(statements) == 1:
        return statements[0]
    batch = BatchStatement(batch_type=BatchType.UNLOGGED)
    for statement in statements:
        batch.add(statement)
    batch.is_idempotent = True
    return batch


def _group_scope(pipeline: str, group: str) -> str:
    """Index scope listing the buckets that hold one group's windows."""
    return f"{pipeline}/{group}"


def _bucket_scope(pipeline: str, bucket: int) -> str:
    """Index scope listing the groups with windows in one bucket: a partition per bucket stays small."""
    return f"{pipeline}#{bucket}"


def _reading(row: dict[str, Any]) -> StoredReading:
    return StoredReading(
        row["fleet"], row["device"], row["seq"], _ms(row["ts"]), dict(row["metrics"] or {}), _ms(row["stored_at"])
    )


def _aggregate(row: dict[str, Any]) -> WindowAggregate:
    return WindowAggregate(
        fleet=row["fleet"],
        pipeline=row["pipeline"],
        step=row["step"],
        group=row["grp"],
        metric=row["metric"],
        window_start_ms=_ms(row["window_start"]),
        window_end_ms=_ms(row["window_end"]),
        count=row["sample_count"],
        min=row["min_value"],
        max=row["max_value"],
        mean=row["mean_value"],
        sum=row["sum_value"],
        last=row["last_value"],
        percentiles=dict(row["percentiles"] or {}),
    )


def _alert(row: dict[str, Any]) -> AlertEvent:
    return AlertEvent(
        fleet=row["fleet"],
        pipeline=row["pipeline"],
        rule=row["rule"],
        device=row["device"],
        state=row["state"],
        severity=row["severity"],
        ts_ms=_ms(row["ts"]),
        values=dict(row["alert_values"] or {}),
        message=row["message"] or "",
    )


def _command(row: dict[str, Any]) -> CommandRecord:
    command = Command(
        id=row["id"],
        fleet=row["fleet"],
        device=row["device"],
        name=row["name"],
        params=_params_decoder.decode(row["params"] or "{}"),
        created_ms=_ms(row["created"]),
        ttl_ms=row["ttl_ms"],
        source=row["source"],
    )
    history = _history_decoder.decode(row["history"]) if row.get("history") else []
    return CommandRecord(command=command, state=row.get("state") or QUEUED, history=history)


def command_cell_time(record: CommandRecord) -> int:
    """The write time of a command log row, in microseconds: later states of a command get later ones whatever the
    writers' clocks say, since its history only grows; near its creation time, so TTLs stay meaningful."""
    return record.command.created_ms * 1000 + len(record.history)
