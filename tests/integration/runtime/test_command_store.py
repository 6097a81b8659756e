"""The command store's lookups on a real nats-server: by id alone (what `fleetflow command show`, the gateway's
and the application API's GET /commands/<id> answer with) and by device or fleet (`fleetflow command list`,
GET .../commands)."""

from collections.abc import AsyncIterator
from typing import Any

import nats
import pytest
from nats.aio.client import Client

from fleetflow.runtime.commands import LIST_BATCH, CommandStore, new_command, record_key, send_command, state_bucket
from tests.support.natsserver import NatsServer

FLEET = "demo"


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[Client]:
    client = await nats.connect(nats_server.url)
    yield client
    await client.close()


async def test_every_command_just_sent_is_found_at_once_by_its_id_alone(nc: Client) -> None:
    js = nc.jetstream()
    await js.add_stream(name=f"ff-{FLEET}-commands", subjects=[f"ff.{FLEET}.cmd.>"])
    store = await CommandStore.open(js, FLEET)
    for i in range(50):  # a lookup that could miss an entry still on its way missed some of these
        sent = await send_command(js, store, new_command(FLEET, f"pump-{i % 5}", "stop", None, 60_000, source="cli"))
        found = await store.find(sent.command.id)
        assert found is not None, f"command {i} not found right after it was sent"
        assert (found.command.device, found.state, found.revision) == (f"pump-{i % 5}", "queued", sent.revision)


async def test_an_unknown_or_deleted_command_is_not_found(nc: Client) -> None:
    js = nc.jetstream()
    await js.add_stream(name=f"ff-{FLEET}-commands", subjects=[f"ff.{FLEET}.cmd.>"])
    store = await CommandStore.open(js, FLEET)
    assert await store.find("no-such-command") is None
    sent = await send_command(js, store, new_command(FLEET, "pump-1", "stop", None, 60_000, source="cli"))
    await store.kv.delete(record_key("pump-1", sent.command.id))
    assert await store.find(sent.command.id) is None


async def test_a_device_s_only_command_is_listed_right_after_it_was_sent(nc: Client) -> None:
    js = nc.jetstream()
    await js.add_stream(name=f"ff-{FLEET}-commands", subjects=[f"ff.{FLEET}.cmd.>"])
    store = await CommandStore.open(js, FLEET)
    for i in range(50):  # each device's first command: the list a watch could end before the entry arrived
        sent = await send_command(js, store, new_command(FLEET, f"valve-{i}", "open", None, 60_000, source="cli"))
        assert [r.command.id for r in await store.list(f"valve-{i}")] == [sent.command.id], f"valve-{i}"
    assert await store.list("valve-none") == []
    await store.kv.delete(record_key("valve-0", (await store.list("valve-0"))[0].command.id))
    assert await store.list("valve-0") == []


async def test_a_fleet_list_longer_than_one_fetch_is_whole_and_leaves_no_consumer_behind(nc: Client) -> None:
    js = nc.jetstream()
    await js.add_stream(name=f"ff-{FLEET}-commands", subjects=[f"ff.{FLEET}.cmd.>"])
    store = await CommandStore.open(js, FLEET)
    sent = [await send_command(js, store, new_command(FLEET, f"pump-{i % 3}", "stop", None, 60_000, source="cli"))
            for i in range(LIST_BATCH + 150)]  # fmt: skip
    await store.claim(sent[1].command, "http")
    await store.report("pump-1", sent[1].command.id, "succeeded")
    listed = await store.list()
    assert [r.command.id for r in listed] == [r.command.id for r in sent]
    assert [r.command.id for r in await store.list("pump-1", "succeeded")] == [sent[1].command.id]
    assert len(await store.list("pump-2")) == len(sent[2::3])
    assert (await js.stream_info(f"KV_{state_bucket(FLEET)}")).state.consumer_count == 0


async def test_a_record_that_expires_while_a_list_is_read_is_left_out(
    nc: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    js = nc.jetstream()
    await js.add_stream(name=f"ff-{FLEET}-commands", subjects=[f"ff.{FLEET}.cmd.>"])
    store = await CommandStore.open(js, FLEET)
    sent = [await send_command(js, store, new_command(FLEET, "pump-1", "stop", None, 60_000, source="cli"))
            for _ in range(3)]  # fmt: skip
    bucket, bind = state_bucket(FLEET), js.pull_subscribe_bind

    async def bind_after_an_expiry(*args: Any, **kwargs: Any) -> Any:  # the entries are counted: one goes
        await js.purge_stream(f"KV_{bucket}", subject=f"$KV.{bucket}.{record_key('pump-1', sent[0].command.id)}")
        return await bind(*args, **kwargs)

    monkeypatch.setattr(js, "pull_subscribe_bind", bind_after_an_expiry)
    assert [r.command.id for r in await store.list("pump-1")] == [r.command.id for r in sent[1:]]
