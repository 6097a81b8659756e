"""The store interface the writer and `fleetflow query` use; every store implements it."""

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field

from fleetflow.runtime.codec import AlertEvent, ReadingBatch, WindowAggregate


class StoreUnavailable(Exception):
    """The store cannot take writes right now (down, overloaded, timing out); retrying later may succeed."""


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
    until_ms: int = 2**62
    limit: int = 100
    page_token: str | None = None


@dataclass(frozen=True)
class Page:
    items: list[StoredReading] = field(default_factory=list)
    next_page_token: str | None = None


class TelemetryStore(abc.ABC):
    """Writes are idempotent upserts keyed by (fleet, device, seq): a redelivered batch rewrites its rows."""

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and migrate the schema to the current version."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def write_readings(self, batches: Sequence[ReadingBatch]) -> None:
        """Store every reading of `batches`; return only once they are durable. StoreUnavailable to retry."""

    @abc.abstractmethod
    async def write_aggregates(self, aggregates: Sequence[WindowAggregate]) -> None:
        """Upsert closed windows keyed by (fleet, pipeline, step, group, metric, window_start_ms)."""

    @abc.abstractmethod
    async def write_alerts(self, events: Sequence[AlertEvent]) -> None:
        """Upsert alert transitions keyed by (fleet, pipeline, rule, device, ts_ms, state)."""

    @abc.abstractmethod
    async def readings(self, query: ReadingQuery) -> Page: ...

    @abc.abstractmethod
    async def aggregates(self, fleet: str, pipeline: str, group: str | None = None) -> list[WindowAggregate]:
        """Stored windows of a pipeline, oldest first; only those of `group` when given."""

    @abc.abstractmethod
    async def alerts(self, fleet: str, pipeline: str, device: str | None = None) -> list[AlertEvent]:
        """Stored alert transitions of a pipeline, oldest first; only those of `device` when given."""

    @abc.abstractmethod
    async def latest(self, fleet: str, device: str) -> StoredReading | None:
        """The device's newest reading."""

    @abc.abstractmethod
    async def count_readings(self, fleet: str) -> int:
        """How many readings of the fleet are stored (for summaries and tests; may be slow on big stores)."""

    @abc.abstractmethod
    async def expire(self, now_ms: int) -> int:
        """Remove rows older than the sink's TTL where the store does not do it itself; rows removed."""
