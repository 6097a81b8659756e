"""Store implementations behind one interface, chosen by the Pipeline's sink."""

from pathlib import Path

from fleetflow.api import Pipeline
from fleetflow.writer.stores.base import Page, ReadingQuery, StoredReading, StoreUnavailable, TelemetryStore


def open_store(pipeline: Pipeline, sqlite_path: Path | None) -> TelemetryStore:
    """The store the pipeline's sink names (not yet opened)."""
    sink = pipeline.spec.sink
    if sink.kind == "sqlite":
        from fleetflow.writer.stores.sqlite import SqliteStore

        path = Path(sink.sqlite.path) if sink.sqlite and sink.sqlite.path else sqlite_path
        if path is None:
            raise ValueError("the sqlite sink needs a database path: set sink.sqlite.path or the data dir")
        return SqliteStore(path, sink.tables, sink.ttl_seconds)
    raise ValueError(f"sink.kind {sink.kind!r} is not available in this build; accepted: 'sqlite'")


__all__ = ["Page", "ReadingQuery", "StoreUnavailable", "StoredReading", "TelemetryStore", "open_store"]
