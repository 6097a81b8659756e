"""Commands reach many connected devices through a few NATS consumers, and a device's sessions are bounded:
hundreds of gRPC streams and HTTP long-polls against a real gateway and nats-server."""

import asyncio
import time
from pathlib import Path

import aiohttp
import msgspec
import nats
from nats.js.api import KeyValueConfig

from fleetflow.bench.grpc_streams import StreamPool, command_received, wait_until
from fleetflow.device.commands import CommandChannelError, HttpCommands
from fleetflow.local.progress import scrape
from fleetflow.runtime import subjects
from fleetflow.runtime.codec import Command
from fleetflow.runtime.commands import CommandStore, new_command, send_command, state_bucket
from tests.integration.connectivity.conftest import FLEET, Gateway, fleet_resource, start_gateway, stop_gateway
from tests.support.natsserver import NatsServer

# The gateway's own: one ordered consumer that routes new commands, one that expires them.
GATEWAY_CONSUMERS = 2
REPLACED = "fleetflow_gateway_command_sessions_replaced_total"
OPEN = "fleetflow_gateway_command_sessions"


async def command_consumers(gw: Gateway) -> int:
    info = await gw.nc.jetstream().stream_info(subjects.commands_stream(FLEET))
    return info.state.consumer_count


async def send(gw: Gateway, device: str, name: str = "open") -> str:
    js = gw.nc.jetstream()
    record = await send_command(js, await CommandStore.open(js, FLEET), new_command(FLEET, device, name))
    return record.command.id


async def metric(gw: Gateway, name: str) -> float:
    return (await scrape(f"http://127.0.0.1:{gw.status['ops_port']}/metrics")).get(name, 0.0)


def pool(gw: Gateway, channels: int = 4) -> StreamPool:
    return StreamPool(f"127.0.0.1:{gw.status['grpc_port']}", FLEET, channels)


async def test_300_connected_grpc_devices_get_their_commands_through_two_consumers(gateway: Gateway) -> None:
    devices = {f"dev-{i:03d}": gateway.token(f"dev-{i:03d}") for i in range(300)}
    async with pool(gateway) as streams:
        connected = await streams.open_all(devices)
        assert all(s.open for s in connected)
        assert await command_consumers(gateway) <= GATEWAY_CONSUMERS

        sent = dict(zip(devices, await asyncio.gather(*(send(gateway, d) for d in devices)), strict=True))
        await wait_until(lambda: all(command_received(s, sent[s.device]) for s in connected), 20,
                         "every device's command")  # fmt: skip
        assert all(len(s.commands) == 1 for s in connected)  # each got its own, once
        assert await command_consumers(gateway) <= GATEWAY_CONSUMERS


async def test_commands_queued_while_offline_arrive_in_order_before_new_ones(gateway: Gateway) -> None:
    queued = [await send(gateway, "pump-3", f"step{i}") for i in range(5)]
    async with pool(gateway, channels=1) as streams:
        stream = await streams.open("pump-3", gateway.token("pump-3"))
        live = await send(gateway, "pump-3", "now")
        await wait_until(lambda: len(stream.commands) == 6, 10, "the backlog and the new command")
        assert [c for c, _ in stream.commands] == [*queued, live]


async def test_one_device_opening_many_streams_keeps_only_the_newest_and_others_are_unaffected(
    gateway: Gateway,
) -> None:
    replaced_before = await metric(gateway, REPLACED)
    async with pool(gateway) as streams:
        honest = await streams.open("honest-1", gateway.token("honest-1"))
        rogue = [await streams.open("rogue-1", gateway.token("rogue-1")) for _ in range(30)]
        await wait_until(lambda: all(not s.open for s in rogue[:-1]), 10, "the rogue's older streams to end")
        assert rogue[-1].open and honest.open
        code, detail = rogue[0].ended or ("", "")
        assert code == "ABORTED" and "maxStreamsPerDevice" in detail and "rogue-1" in detail
        assert await metric(gateway, REPLACED) - replaced_before == 29

        for_honest, for_rogue = await send(gateway, "honest-1"), await send(gateway, "rogue-1")
        await wait_until(lambda: command_received(honest, for_honest) and command_received(rogue[-1], for_rogue),
                         10, "both devices' commands")  # fmt: skip
        assert await command_consumers(gateway) <= GATEWAY_CONSUMERS


async def test_a_higher_limit_keeps_that_many_streams_and_a_command_reaches_one_of_them(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    gw = await start_gateway(tmp_path, nats_server.url, fleet_resource({"maxStreamsPerDevice": 3}), grpc_port=0)
    try:
        async with pool(gw) as streams:
            opened = [await streams.open("valve-1", gw.token("valve-1")) for _ in range(5)]
            await wait_until(lambda: not opened[0].open and not opened[1].open, 10, "the two oldest streams to end")
            assert all(s.open for s in opened[2:])
            command = await send(gw, "valve-1")
            await wait_until(lambda: any(command_received(s, command) for s in opened[2:]), 10, "the command")
            await asyncio.sleep(0.3)  # a second delivery would have arrived by now
            assert sum(len(s.commands) for s in opened) == 1
    finally:
        await stop_gateway(gw)


async def test_http_long_polls_do_not_take_a_consumer_each(gateway: Gateway) -> None:
    devices = [f"lamp-{i:02d}" for i in range(60)]
    async with aiohttp.ClientSession() as session:
        clients = {d: HttpCommands(session, gateway.url, FLEET, d, gateway.token(d)) for d in devices}
        polls = {d: asyncio.create_task(c.poll(wait=20)) for d, c in clients.items()}
        peak = 0
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:  # while the polls wait
            peak = max(peak, await command_consumers(gateway))
            await asyncio.sleep(0.05)
        sent = {d: await send(gateway, d) for d in devices}
        received = {d: await asyncio.wait_for(poll, 10) for d, poll in polls.items()}
        assert {d: [c["id"] for c in commands] for d, commands in received.items()} == {d: [sent[d]] for d in devices}
        assert peak <= GATEWAY_CONSUMERS


async def test_a_newer_long_poll_of_the_same_device_replaces_the_older_one(gateway: Gateway) -> None:
    async with aiohttp.ClientSession() as session:
        device = HttpCommands(session, gateway.url, FLEET, "lamp-7", gateway.token("lamp-7"))
        replaced_before, open_before = await metric(gateway, REPLACED), await metric(gateway, OPEN)
        older = asyncio.create_task(device.poll(wait=20))
        deadline = time.monotonic() + 10
        while await metric(gateway, OPEN) < open_before + 1:  # until the older poll waits in the gateway
            assert time.monotonic() < deadline and not older.done(), "the long-poll did not open a session"
            await asyncio.sleep(0.02)
        newer = asyncio.create_task(device.poll(wait=20))
        try:
            await asyncio.wait_for(older, 10)
            raise AssertionError("the older long-poll was not ended")
        except CommandChannelError as exc:
            assert exc.status == 409 and exc.body["error"] == "session_replaced"
            assert "maxStreamsPerDevice" in exc.body["detail"]
        assert await metric(gateway, REPLACED) - replaced_before == 1
        sent = await send(gateway, "lamp-7")
        assert [c["id"] for c in await asyncio.wait_for(newer, 10)] == [sent]


async def test_a_device_on_two_replicas_and_two_protocols_gets_each_command_once(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    """Both replicas hear every command on their one consumer; the compare-and-set claim lets one deliver it."""
    replicas = [await start_gateway(tmp_path / name, nats_server.url, grpc_port=0) for name in ("a", "b")]
    try:
        async with pool(replicas[0], channels=1) as streams, aiohttp.ClientSession() as session:
            grpc_stream = await streams.open("pump-8", replicas[0].token("pump-8"))
            poller = HttpCommands(session, replicas[1].url, FLEET, "pump-8", replicas[1].token("pump-8"))
            polled: list[str] = []

            async def poll_until_stopped() -> None:
                while True:
                    polled.extend(c["id"] for c in await poller.poll(wait=5))

            polling = asyncio.create_task(poll_until_stopped())
            try:
                now = int(time.time() * 1000)
                sent = []
                for i in range(20):  # as the processor sends them: to the stream only, no state recorded yet
                    command = Command(id=f"p-{i}-{now}", fleet=FLEET, device="pump-8", name="pulse", created_ms=now,
                                      ttl_ms=60_000, source="pipeline/p/r")  # fmt: skip
                    await replicas[0].nc.jetstream().publish(
                        subjects.command_subject(FLEET, "pump-8"), msgspec.json.encode(command),
                        headers={"Nats-Msg-Id": command.id},
                    )  # fmt: skip
                    sent.append(command.id)
                await wait_until(lambda: len(polled) + len(grpc_stream.commands) >= len(sent), 10, "20 deliveries")
                await asyncio.sleep(0.3)  # a second delivery of any of them would have arrived by now
            finally:
                polling.cancel()
        pushed = [c for c, _ in grpc_stream.commands]
        assert sorted(pushed + polled) == sorted(sent)  # each once, over one protocol or the other
        assert pushed == [c for c in sent if c in pushed] and polled == [c for c in sent if c in polled]  # in order
    finally:
        for gw in replicas:
            await stop_gateway(gw)


async def test_a_state_bucket_made_before_direct_get_is_switched_to_it_keeping_its_records(
    nats_server: NatsServer,
) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        old = await js.create_key_value(KeyValueConfig(bucket=state_bucket("old"), history=1))
        await old.put("pump-1.c1", b'{"kept": true}')
        await CommandStore.open(js, "old")
        info = await js.stream_info(f"KV_{state_bucket('old')}")
        assert info.config.allow_direct is True
        assert (await (await js.key_value(state_bucket("old"))).get("pump-1.c1")).value == b'{"kept": true}'
    finally:
        await nc.close()
