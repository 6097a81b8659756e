"""One fixture, two stores: every contract test runs against SQLite, and against Cassandra when
FLEETFLOW_TEST_CASSANDRA=host:port names one (FLEETFLOW_TEST_CASSANDRA_DC, default datacenter1, its DC).
Without it the Cassandra cases are reported as skipped."""

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from fleetflow.api import Pipeline
from fleetflow.api.quantities import parse_duration
from fleetflow.writer.stores import TelemetryStore, open_store

CASSANDRA = os.environ.get("FLEETFLOW_TEST_CASSANDRA", "")
CASSANDRA_DC = os.environ.get("FLEETFLOW_TEST_CASSANDRA_DC", "datacenter1")
STORE_KINDS = [
    "sqlite",
    pytest.param(
        "cassandra",
        marks=pytest.mark.skipif(
            not CASSANDRA, reason="set FLEETFLOW_TEST_CASSANDRA=host:port to run against Cassandra"
        ),
    ),
]
# One keyspace per test session: tables are created once, tests keep apart by fleet name.
SESSION_KEYSPACE = f"fftest_{uuid.uuid4().hex[:12]}"


def sink(kind: str, tmp_path: Path, ttl: str, bucket: str, prefix: str) -> dict[str, Any]:
    tables = {name: f"{prefix}{default}" for name, default in (
        ("readings", "readings"), ("aggregates", "window_aggregates"), ("alerts", "alerts"),
        ("latest", "device_latest"), ("commands", "command_log"))}  # fmt: skip
    if kind == "sqlite":
        return {"kind": "sqlite", "ttl": ttl, "tables": tables, "sqlite": {"path": str(tmp_path / "store.sqlite3")}}
    host, _, port = CASSANDRA.rpartition(":")
    return {
        "kind": "cassandra",
        "ttl": ttl,
        "tables": tables,
        "cassandra": {
            "contactPoints": [host],
            "port": int(port),
            "localDc": CASSANDRA_DC,
            "keyspace": SESSION_KEYSPACE,
            "replication": {CASSANDRA_DC: 1},
            "bucket": bucket,
        },
    }


def pipeline(
    kind: str, tmp_path: Path, ttl: str = "30d", bucket: str = "1h", prefix: str = "", **spec: Any
) -> Pipeline:
    """Pipeline p1 of fleet f1 (or spec's fleetRef) storing into a store of `kind`; `spec` adds fields."""
    spec = {"fleetRef": {"name": "f1"}, "sink": sink(kind, tmp_path, ttl, bucket, prefix), **spec}
    return Pipeline.model_validate({"metadata": {"name": "p1"}, "spec": spec})


@dataclass
class Stores:
    """Opens stores of one kind; every store it opened is closed after the test."""

    kind: str
    tmp_path: Path
    opened: list[TelemetryStore] = field(default_factory=list)

    def pipeline(self, ttl: str = "30d", bucket: str = "1h", prefix: str = "", **spec: Any) -> Pipeline:
        return pipeline(self.kind, self.tmp_path, ttl, bucket, prefix, **spec)

    async def open(self, ttl: str = "30d", bucket: str = "1h", prefix: str = "") -> TelemetryStore:
        store = open_store(self.pipeline(ttl, bucket, prefix), None)
        self.opened.append(store)
        await store.open()
        return store

    async def outlive_ttl(self, store: TelemetryStore, ttl: str, still_there: Any) -> None:
        """Let the TTL pass: SQLite expires on the writer's schedule, Cassandra by itself on the clock."""
        ttl_ms = int(parse_duration(ttl) * 1000)
        if self.kind == "sqlite":
            await store.expire(int(time.time() * 1000) + ttl_ms + 1000)
            return
        deadline = time.monotonic() + ttl_ms / 1000 + 10
        while await still_there() and time.monotonic() < deadline:
            await asyncio.sleep(0.25)


@pytest.fixture(params=STORE_KINDS)
async def stores(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Stores]:
    made = Stores(request.param, tmp_path)
    yield made
    for store in made.opened:
        await store.close()


def unique_fleet() -> str:
    """Fleet names keep tests apart inside the shared Cassandra keyspace."""
    return f"f{uuid.uuid4().hex[:10]}"
