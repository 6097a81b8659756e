"""The centre's forwarder of site commands against a real nats-server with no site linked (docs/edge.md, Commands):
a push the site acknowledges, a command of the centre's own device left alone, and a command whose TTL passes before
any site stored it. The whole way across a real leaf connection is tests/e2e/test_edge_commands.py."""

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import pytest
from nats.aio.client import Client
from nats.js.api import StreamConfig

from fleetflow.api import DeviceFleet
from fleetflow.gateway.command_sites import DeviceSites, SiteCommandForwarder
from fleetflow.runtime import edgelink, jetstream
from fleetflow.runtime.commands import CommandRecord, CommandStore, follow_commands, new_command, send_command
from tests.support.natsserver import NatsServer

FLEET, SITE = "yard", "north"
Found = TypeVar("Found")
YARD = DeviceFleet.model_validate({"metadata": {"name": FLEET}, "spec": {"sites": [{"name": SITE}]}})


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[Client]:
    connection = await jetstream.connect(nats_server.url, "test")
    await jetstream.provision_fleet(connection.jetstream(), YARD)
    try:
        yield connection
    finally:
        await connection.close()


class ByName(DeviceSites):
    """crane-1 is at the site. (nats-server refuses a client's message that carries a `Nats-Stream-Source` header, so
    only a real source can put a device at a site: tests/e2e/test_edge_commands.py.)"""

    async def _latest_origin(self, device: str) -> str | None:
        return SITE if device == "crane-1" else await super()._latest_origin(device)


async def rounds_until(forwarder: SiteCommandForwarder, check: Callable[[], Awaitable[Found | None]]) -> Found:
    deadline = time.monotonic() + 10
    while not (found := await check()):
        assert time.monotonic() < deadline, "not within 10 s"
        await forwarder.round()
        await asyncio.sleep(0.1)
    return found


async def test_a_site_device_command_is_pushed_until_the_site_acknowledges_and_others_stay(nc: Client) -> None:
    js = nc.jetstream()
    # Stands in for the site's command stream: the same subject, in reach without a leaf connection.
    intake = f"{edgelink.site_commands_prefix(edgelink.site_domain(FLEET, SITE))}.*"
    await js.add_stream(StreamConfig(name="north-intake", subjects=[intake]))
    store = await CommandStore.open(js, FLEET)
    forwarder = SiteCommandForwarder(nc, store, YARD, ByName(js, YARD))
    at_site = await send_command(js, store, new_command(FLEET, "crane-1", "cool", ttl_ms=60_000))
    in_centre = await send_command(js, store, new_command(FLEET, "crane-2", "cool", ttl_ms=60_000))
    stop = asyncio.Event()

    async def no_rounds() -> None:  # the test moves the forwarder itself (rounds_until)
        return None

    following = asyncio.create_task(follow_commands(js, FLEET, forwarder._on_command, no_rounds, stop, 0.1))
    try:
        stored = await rounds_until(forwarder, lambda: _stored(store, at_site))
    finally:
        stop.set()
        await following
    assert [(t.state, t.detail) for t in stored.history] == [
        ("queued", ""), ("forwarded", f"to site {SITE}"), ("forwarded", f"stored at site {SITE}")]  # fmt: skip
    pushed = await js.get_last_msg("north-intake", f"{intake[:-1]}crane-1")
    assert (pushed.headers or {})["Nats-Msg-Id"] == at_site.command.id
    centre = await store.get("crane-2", in_centre.command.id)
    assert centre is not None and centre.state == "queued", "the centre's device's command stays in the centre"


async def test_a_command_whose_ttl_passes_while_its_site_is_unreachable_expires_in_the_centre(nc: Client) -> None:
    js = nc.jetstream()
    store = await CommandStore.open(js, FLEET)
    forwarder = SiteCommandForwarder(nc, store, YARD, ByName(js, YARD))
    sent = await send_command(js, store, new_command(FLEET, "crane-1", "cool", ttl_ms=1000))
    forwarder._open[("crane-1", sent.command.id)] = sent.command
    await forwarder.round()
    claimed = await store.get("crane-1", sent.command.id)
    assert claimed is not None and (claimed.state, claimed.history[-1].detail) == ("forwarded", f"to site {SITE}")
    expired = await rounds_until(forwarder, lambda: _in(store, sent, "expired"))
    assert expired.history[-1].detail == f"ttl passed before site {SITE} stored it"
    assert expired.history[-1].at_ms == sent.expires_ms
    assert forwarder._open == {}, "nothing left to do for it"


async def _stored(store: CommandStore, sent: CommandRecord) -> CommandRecord | None:
    record = await store.get(sent.command.device, sent.command.id)
    return record if record is not None and len(record.history) == 3 else None


async def _in(store: CommandStore, sent: CommandRecord, state: str) -> CommandRecord | None:
    record = await store.get(sent.command.device, sent.command.id)
    return record if record is not None and record.state == state else None
