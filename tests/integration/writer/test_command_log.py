"""The writer copies every command's state changes from the fleet's command state bucket into its store's command
log: the real writer (`serve()`), a real nats-server, a real SQLite file. The log keeps a command after NATS
forgot it, and the application API serves it from there."""

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from nats.aio.client import Client

from fleetflow.api import DeviceFleet, Pipeline
from fleetflow.runtime import jetstream, subjects
from fleetflow.runtime.commands import CommandRecord, CommandStore, new_command, record_key, send_command
from fleetflow.runtime.settings import WriterSettings
from fleetflow.writer.main import serve
from fleetflow.writer.stores import CommandQuery
from fleetflow.writer.stores.sqlite import SqliteStore
from tests.support.natsserver import NatsServer

FLEET = "demo"


def fleet() -> DeviceFleet:
    return DeviceFleet.model_validate({"metadata": {"name": FLEET}, "spec": {}})


def pipeline() -> Pipeline:
    return Pipeline.model_validate({"metadata": {"name": "p1"}, "spec": {"fleetRef": {"name": FLEET}, "steps": []}})


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"{what} within {timeout} s"
        await asyncio.sleep(0.05)


@pytest.fixture
async def writer(tmp_path: Path, nats_server: NatsServer) -> AsyncIterator[SqliteStore]:
    """A running writer of pipeline p1; yields a reader of its store."""
    path, status = tmp_path / "store.sqlite3", tmp_path / "writer.status.json"
    settings = WriterSettings(nats_url=nats_server.url, fleet=fleet(), pipeline=pipeline(), sqlite_path=path,
                              ops_port=0, status_file=status, sole_consumer=True)  # fmt: skip
    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings, stop))
    reader = SqliteStore(path, pipeline().spec.sink.tables, 86400)

    async def store_ready() -> bool:
        assert not task.done(), task.exception()
        return path.exists()

    await eventually(store_ready, 10, "the writer opened its store")
    await reader.open()
    yield reader
    await reader.close()
    stop.set()
    await asyncio.wait_for(task, 20)


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[Client]:
    client = await jetstream.connect(nats_server.url, "test-commands")
    await jetstream.provision_fleet(client.jetstream(), fleet())
    yield client
    await client.close()


async def logged(store: SqliteStore, device: str) -> list[CommandRecord]:
    return (await store.command_page(CommandQuery(FLEET, device))).items


async def test_every_state_change_reaches_the_command_log_and_outlives_the_state_bucket(
    writer: SqliteStore, nc: Client
) -> None:
    js = nc.jetstream()
    states = await CommandStore.open(js, FLEET)
    sent = await send_command(js, states, new_command(FLEET, "pump-1", "set", {"rpm": 900}, source="api-key/abc"))
    assert await states.claim(sent.command, "grpc") is not None
    await states.report("pump-1", sent.command.id, "failed", "jammed")
    await send_command(js, states, new_command(FLEET, "pump-2", "stop"))

    async def all_logged() -> bool:
        pump1, pump2 = await logged(writer, "pump-1"), await logged(writer, "pump-2")
        return [r.state for r in pump1] == ["failed"] and [r.state for r in pump2] == ["queued"]

    await eventually(all_logged, 10, "both commands in the command log in their latest states")
    [record] = await logged(writer, "pump-1")
    assert [(t.state, t.detail) for t in record.history] == [("queued", ""), ("delivered", "via grpc"),
                                                             ("failed", "jammed")]  # fmt: skip
    assert (record.command.params, record.command.source) == ({"rpm": 900}, "api-key/abc")

    # NATS forgets the command (its retention passed; here: purged); the log keeps it.
    await states.kv.purge(record_key("pump-1", sent.command.id))
    assert await states.get("pump-1", sent.command.id) is None

    async def purge_seen() -> bool:
        info = await js.consumer_info(subjects.command_state_stream(FLEET), subjects.command_log_consumer("p1"))
        return info.num_pending == 0 and info.num_ack_pending == 0

    await eventually(purge_seen, 10, "the writer consumed the purge marker")
    assert [r.state for r in await logged(writer, "pump-1")] == ["failed"]
