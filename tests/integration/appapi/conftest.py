"""A real application API (its `serve()`, in this event loop) over a real SQLite store filled with known data,
answering over real HTTP; keys of every scope in a real key file."""

import asyncio
import contextlib
import json
import sqlite3
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from fleetflow.api import DeviceFleet, Pipeline
from fleetflow.appapi import keys
from fleetflow.appapi.main import serve
from fleetflow.runtime import jetstream
from fleetflow.runtime.codec import AlertEvent, Reading, ReadingBatch, WindowAggregate
from fleetflow.runtime.settings import AppApiSettings
from fleetflow.writer.stores.sqlite import SqliteStore
from tests.support.natsserver import NatsServer

FLEET, PIPELINE, STEP = "demo", "p1", "per-minute"
MINUTE = 60_000
NOW = int(time.time() * 1000)
DEVICES = [f"d-{i:03d}" for i in range(25)]
BUSY = "d-001"  # 250 readings, one every 10 s, the newest 5 s ago
STALE = "d-024"  # last heard from 10 minutes ago: offline
READINGS = [(seq, NOW - 5000 - (249 - seq) * 10_000) for seq in range(250)]  # (seq, ts), oldest first


def fleet() -> DeviceFleet:
    labels = [{"match": "^d-0[01]", "labels": {"site": "north"}}, {"match": "^d-", "labels": {"kind": "probe"}}]
    return DeviceFleet.model_validate({"metadata": {"name": FLEET}, "spec": {"devices": {"labels": labels}}})


def pipeline(name: str = PIPELINE) -> Pipeline:
    steps = [{"name": STEP, "window": {"size": "1m", "metrics": ["temp"]}},
             {"name": "hot", "alert": {"condition": "metrics.temp > 30.0", "severity": "warning"}}]  # fmt: skip
    return Pipeline.model_validate({"metadata": {"name": name}, "spec": {"fleetRef": {"name": FLEET}, "steps": steps}})


def aggregate(device: str, start: int) -> WindowAggregate:
    return WindowAggregate(fleet=FLEET, pipeline=PIPELINE, step=STEP, group=f"device={device}", metric="temp",
                           window_start_ms=start, window_end_ms=start + MINUTE, count=6, min=1.0, max=3.0, mean=2.0,
                           sum=12.0, last=3.0, percentiles={"p95": 2.9})  # fmt: skip


def alert(device: str, ts: int, state: str) -> AlertEvent:
    return AlertEvent(fleet=FLEET, pipeline=PIPELINE, rule="hot", device=device, state=state, severity="warning",
                      ts_ms=ts, values={"temp": 31.0}, message="too hot")  # fmt: skip


async def fill(path: Path) -> None:
    p = pipeline()
    store = SqliteStore(path, p.spec.sink.tables, 30 * 86400)
    await store.open()
    try:
        batches = [ReadingBatch(fleet=FLEET, device=d, received_ms=NOW,
                                readings=[Reading(seq=1, ts=NOW - 1000, metrics={"temp": 20.0 + i, "rh": 40.0})])
                   for i, d in enumerate(DEVICES) if d != BUSY]  # fmt: skip
        busy = [Reading(seq=s, ts=ts, metrics={"temp": float(s), "rh": 50.0}) for s, ts in READINGS]
        batches.append(ReadingBatch(fleet=FLEET, device=BUSY, readings=busy, received_ms=NOW))
        await store.write_readings(batches)
        start = NOW // MINUTE * MINUTE - 30 * MINUTE
        await store.write_aggregates([aggregate(d, start + i * MINUTE) for d in ("d-000", BUSY) for i in range(12)])
        await store.write_alerts([alert("d-000", NOW - 50 * MINUTE, "firing"), alert("d-000", NOW - 40 * MINUTE,
                                  "resolved"), alert(BUSY, NOW - 20 * MINUTE, "firing")])  # fmt: skip
    finally:
        await store.close()
    with sqlite3.connect(path) as db:  # as if STALE's latest reading had arrived 10 minutes ago
        db.execute("UPDATE device_latest SET stored_ms = ? WHERE device = ?", (NOW - 10 * MINUTE, STALE))


async def provision(nats_url: str) -> None:
    """The fleet's and the pipeline's streams, as `fleetflow up` and the operator provision them."""
    nc = await jetstream.connect(nats_url, "test-provision")
    try:
        await jetstream.provision_fleet(nc.jetstream(), fleet())
        await jetstream.provision_pipeline(nc.jetstream(), fleet(), pipeline())
    finally:
        await nc.close()


@dataclass
class RunningApi:
    url: str
    keys_file: Path
    keys: dict[str, str]  # scope -> key text
    ops_port: int
    stop: asyncio.Event
    task: "asyncio.Task[None]"

    async def get(self, path: str, key: str | None = "read", **query: Any) -> tuple[int, Any]:
        """`key`: a scope (its key is sent), None (no key), or anything else sent as the Authorization header."""
        headers = {} if key is None else {"Authorization": f"Bearer {self.keys[key]}" if key in self.keys else key}
        async with aiohttp.ClientSession() as session, session.get(self.url + path, params=query,
                                                                   headers=headers) as response:  # fmt: skip
            assert response.content_type == "application/json", await response.text()
            return response.status, await response.json()

    async def post(self, path: str, body: Any, key: str | None = "command") -> tuple[int, Any]:
        """POST `body` as JSON (bytes: as they are), with the key of scope `key` (None: no key)."""
        headers = {} if key is None else {"Authorization": f"Bearer {self.keys[key]}"}
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        async with aiohttp.ClientSession() as session, session.post(self.url + path, data=data,
                                                                    headers=headers) as response:  # fmt: skip
            assert response.content_type == "application/json", await response.text()
            return response.status, await response.json()


@contextlib.asynccontextmanager
async def running_api(tmp_path: Path, nats_server: NatsServer, **overrides: Any) -> AsyncIterator[RunningApi]:
    """The API over the filled store, with `overrides` of its settings; `stop` on the result stops it early."""
    store_path, keys_file, status_file = tmp_path / "store.sqlite3", tmp_path / "keys.json", tmp_path / "status.json"
    await fill(store_path)
    await provision(nats_server.url)
    texts = {scope: keys.create_key(keys_file, FLEET, scope, f"test {scope}")[1] for scope in keys.SCOPES}
    settings = AppApiSettings(
        nats_url=nats_server.url, fleet=fleet(), pipelines=[pipeline()], listen_port=0, ops_port=0,
        keys_file=keys_file, sqlite_paths={PIPELINE: store_path}, status_file=status_file, offline_after_seconds=300,
        **overrides,
    )  # fmt: skip
    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings, stop))
    deadline = time.monotonic() + 10
    while not status_file.exists():
        assert not task.done(), task.exception()
        assert time.monotonic() < deadline, "the API did not come up within 10 s"
        await asyncio.sleep(0.02)
    status = json.loads(status_file.read_text())
    running = RunningApi(f"http://127.0.0.1:{status['http_port']}", keys_file, texts, status["ops_port"], stop, task)
    yield running
    stop.set()
    await asyncio.wait_for(task, 10)


@pytest.fixture
async def api(tmp_path: Path, nats_server: NatsServer) -> AsyncIterator[RunningApi]:
    async with running_api(tmp_path, nats_server) as running:
        yield running
