"""Store implementations behind one interface, chosen by the Pipeline's sink."""

from pathlib import Path

from fleetflow.api import Pipeline
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


def open_store(
    pipeline: Pipeline, sqlite_path: Path | None, cassandra_credentials_dir: Path | None = None
) -> TelemetryStore:
    """The store the pipeline's sink names (not yet opened); ValueError naming a bad sink setting."""
    sink = pipeline.spec.sink
    if sink.kind == "sqlite":
        from fleetflow.writer.stores.sqlite import SqliteStore

        path = Path(sink.sqlite.path) if sink.sqlite and sink.sqlite.path else sqlite_path
        if path is None:
            raise ValueError("the sqlite sink needs a database path: set sink.sqlite.path or the data dir")
        return SqliteStore(path, sink.tables, sink.ttl_seconds)
    if sink.kind == "cassandra":
        # Imported here so that SQLite-only installs never load the driver's C extensions.
        from fleetflow.writer.stores.cassandra import CassandraStore
        from fleetflow.writer.stores.cassandra_cluster import Backoff

        # Give up on a statement well within the ack wait, so JetStream does not redeliver meanwhile.
        budget = pipeline.spec.delivery.ack_wait_seconds / 2
        return CassandraStore(sink, cassandra_credentials_dir, backoff=Backoff(budget=budget))
    raise ValueError(f"sink.kind {sink.kind!r} is not supported; accepted: 'sqlite', 'cassandra'")


__all__ = [
    "AggregateQuery",
    "AlertQuery",
    "CommandQuery",
    "DeviceQuery",
    "Page",
    "ReadingQuery",
    "RecordRefused",
    "StoreUnavailable",
    "StoredReading",
    "TelemetryStore",
    "open_store",
]
