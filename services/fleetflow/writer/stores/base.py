"""The store interface the writer and `fleetflow query` use; every store implements it."""

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from fleetflow.runtime.codec import AlertEvent, ReadingBatch, WindowAggregate
from fleetflow.runtime.commands import CommandRecord

T = TypeVar("T")
FOREVER_MS = 2**62


class StoreUnavailable(Exception):
    """The store cannot take writes right now (down, overloaded, timing out); retrying later may succeed."""


class RecordRefused(Exception):
    """The store refused a statement or a value of the records written (a number out of range, text it cannot
    encode, a key it rejects): writing the same records again cannot succeed, whatever the store's health.
    The message names the offending value where the store lets us find it."""


@dataclass(frozen=True)
class StoredReading:
    fleet: str
    device: str
    seq: int
    ts: int
    metrics: dict[str, float]
    stored_ms: int


@dataclass(frozen=True)
class ReadingQuery:
    """A device's readings with since_ms <= ts < until_ms, newest first, `limit` per page."""

    fleet: str
    device: str
    since_ms: int = 0
    until_ms: int = FOREVER_MS
    limit: int = 100
    page_token: str | None = None


@dataclass(frozen=True)
class AggregateQuery:
    """A pipeline's closed windows with since_ms <= window_start_ms < until_ms, oldest first within a group.

    Without `group`, windows of every group are returned; their order across groups is store-specific.
    With `step`, only the windows of that window step."""

    fleet: str
    pipeline: str
    group: str | None = None
    since_ms: int = 0
    until_ms: int = FOREVER_MS
    limit: int = 500
    page_token: str | None = None
    step: str | None = None


@dataclass(frozen=True)
class AlertQuery:
    """A pipeline's alert transitions with since_ms <= ts_ms < until_ms, oldest first; one device's if given."""

    fleet: str
    pipeline: str
    device: str | None = None
    since_ms: int = 0
    until_ms: int = FOREVER_MS
    limit: int = 500
    page_token: str | None = None


@dataclass(frozen=True)
class CommandQuery:
    """Commands sent to a device with since_ms <= created_ms < until_ms, newest first, each in its latest state."""

    fleet: str
    device: str
    since_ms: int = 0
    until_ms: int = FOREVER_MS
    limit: int = 100
    page_token: str | None = None


@dataclass(frozen=True)
class DeviceQuery:
    """The fleet's devices with their newest reading (the last-value cache), in device id order."""

    fleet: str
    limit: int = 500
    page_token: str | None = None


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a query's results; pass `next_page_token` back for the next page (None: no more)."""

    items: list[T] = field(default_factory=list)
    next_page_token: str | None = None


class TelemetryStore(abc.ABC):
    """Writes are idempotent upserts keyed by (fleet, device, ts, seq): a redelivered batch rewrites its rows."""

    system: str  # the OpenTelemetry db.system.name: "sqlite", "cassandra"

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and migrate the schema to the current version."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def write_readings(self, batches: Sequence[ReadingBatch]) -> None:
        """Store every reading of `batches`; return only once they are durable.

        Every write method raises StoreUnavailable for an outage (retry the same records later) and
        RecordRefused when some record can never be stored (the writer then finds which)."""

    @abc.abstractmethod
    async def write_aggregates(self, aggregates: Sequence[WindowAggregate]) -> None:
        """Upsert closed windows keyed by (fleet, pipeline, step, group, metric, window_start_ms)."""

    @abc.abstractmethod
    async def write_alerts(self, events: Sequence[AlertEvent]) -> None:
        """Upsert alert transitions keyed by (fleet, pipeline, rule, device, ts_ms, state)."""

    @abc.abstractmethod
    async def write_commands(self, records: Sequence[CommandRecord]) -> None:
        """Upsert commands with their state history into the command log, keyed by (fleet, device, created_ms, id).

        A record with fewer transitions than the stored one (an older state, redelivered late) changes nothing:
        the history only ever grows, so the longest one is the newest."""

    @abc.abstractmethod
    async def readings(self, query: ReadingQuery) -> Page[StoredReading]:
        """One page of a device's readings, newest first."""

    @abc.abstractmethod
    async def aggregate_page(self, query: AggregateQuery) -> Page[WindowAggregate]:
        """One page of a pipeline's stored windows."""

    @abc.abstractmethod
    async def alert_page(self, query: AlertQuery) -> Page[AlertEvent]:
        """One page of a pipeline's stored alert transitions."""

    @abc.abstractmethod
    async def command_page(self, query: CommandQuery) -> Page[CommandRecord]:
        """One page of the commands sent to a device, each with its state history."""

    async def aggregates(self, fleet: str, pipeline: str, group: str | None = None) -> list[WindowAggregate]:
        """Every stored window of a pipeline (all pages); only those of `group` when given."""
        items: list[WindowAggregate] = []
        query = AggregateQuery(fleet, pipeline, group)
        while True:
            page = await self.aggregate_page(query)
            items.extend(page.items)
            if page.next_page_token is None:
                return items
            query = AggregateQuery(fleet, pipeline, group, page_token=page.next_page_token)

    async def alerts(self, fleet: str, pipeline: str, device: str | None = None) -> list[AlertEvent]:
        """Every stored alert transition of a pipeline (all pages), oldest first; only `device`'s when given."""
        items: list[AlertEvent] = []
        query = AlertQuery(fleet, pipeline, device)
        while True:
            page = await self.alert_page(query)
            items.extend(page.items)
            if page.next_page_token is None:
                return items
            query = AlertQuery(fleet, pipeline, device, page_token=page.next_page_token)

    @abc.abstractmethod
    async def latest(self, fleet: str, device: str) -> StoredReading | None:
        """The device's newest reading."""

    @abc.abstractmethod
    async def latest_page(self, query: DeviceQuery) -> Page[StoredReading]:
        """One page of the fleet's devices, each as its newest reading, in device id order; read from the
        latest table alone, so it costs the same however many readings are stored."""

    @abc.abstractmethod
    async def count_readings(self, fleet: str) -> int:
        """How many readings of the fleet are stored (for summaries and tests; may be slow on big stores)."""

    @abc.abstractmethod
    async def expire(self, now_ms: int) -> int:
        """Remove rows older than the sink's TTL where the store does not do it itself; rows removed.

        SQLite expires by event time (ts older than now - ttl); Cassandra's native TTL counts from the write."""
