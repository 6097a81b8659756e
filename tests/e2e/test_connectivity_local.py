"""Device connectivity on the local platform (`fleetflow up`'s LocalPlatform, in this process): HTTP, gRPC, MQTT,
WebSocket and CoAP devices on the endpoints in endpoints.json, commands to offline devices, and a NATS outage under
load."""

import asyncio
import contextlib
import sys
import time
from asyncio.subprocess import PIPE
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import nats
import nats.errors
import pytest

from fleetflow.api import Pipeline
from fleetflow.device.coap_client import CoapDevice
from fleetflow.device.commands import HttpCommands
from fleetflow.device.forwarding import Outcome
from fleetflow.device.grpc_client import GrpcDevice
from fleetflow.device.http import HttpDevice
from fleetflow.device.mqtt_client import MqttDevice
from fleetflow.device.protocols import make_link
from fleetflow.device.ws_client import WsDevice
from fleetflow.gateway.command_api import application_token
from fleetflow.local.platform import LocalPlatform
from fleetflow.local.resources import load_resources
from fleetflow.runtime import codec, credentials, subjects
from fleetflow.writer.stores import ReadingQuery
from fleetflow.writer.stores.sqlite import SqliteStore

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "examples" / "quickstart"
pytestmark = pytest.mark.e2e


START_MS = int(time.time() * 1000)


def readings(first: int, count: int) -> list[dict[str, Any]]:
    """The same readings each time for the same seqs (a retry repeats (ts, seq), which identifies a reading)."""
    return [{"seq": s, "ts": START_MS + s, "metrics": {"v": float(s)}} for s in range(first, first + count)]


async def stored_seqs(data_dir: Path, device: str) -> list[int]:
    pipeline = Pipeline.model_validate({"metadata": {"name": "quickstart"}, "spec": {"fleetRef": {"name": "demo"}}})
    store = SqliteStore(data_dir / "store.sqlite3", pipeline.spec.sink.tables, 86400 * 365 * 100)
    await store.open()
    try:
        page = await store.readings(ReadingQuery("demo", device, limit=100_000))
        return sorted(r.seq for r in page.items)
    finally:
        await store.close()


async def send_command(session: aiohttp.ClientSession, http: str, secret: bytes, device: str, name: str,
                       ttl: float = 60) -> dict[str, Any]:  # fmt: skip
    headers = {"Authorization": f"Bearer {application_token(secret, 'demo')}"}
    body = {"name": name, "ttlSeconds": ttl}
    async with session.post(f"{http}/v1/fleets/demo/devices/{device}/commands", json=body, headers=headers) as r:
        assert r.status == 202, await r.text()
        return dict(await r.json())


async def command_state(session: aiohttp.ClientSession, http: str, secret: bytes, command_id: str) -> str:
    headers = {"Authorization": f"Bearer {application_token(secret, 'demo')}"}
    async with session.get(f"{http}/v1/fleets/demo/commands/{command_id}", headers=headers) as r:
        return str((await r.json())["state"])


async def cli(*argv: str) -> str:
    """`fleetflow <argv>` as a user runs it; its stdout (fails the test on a non-zero exit)."""
    process = await asyncio.create_subprocess_exec(sys.executable, "-m", "fleetflow.cli", *argv,
                                                   stdout=PIPE, stderr=PIPE)  # fmt: skip
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    return out.decode()


async def test_every_protocol_stores_each_reading_once_and_gets_commands_queued_offline(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    platform = LocalPlatform(load_resources([QUICKSTART]), data_dir)
    endpoints = await platform.start()
    fleet = endpoints["fleets"]["demo"]
    secret = credentials.read_secret(Path(fleet["secretFile"]))
    http, grpc_target = fleet["http"], fleet["grpc"]
    mqtt_host, mqtt_port = fleet["mqtt"].removeprefix("mqtt://").split(":")
    token = lambda device: credentials.device_token(secret, "demo", device)  # noqa: E731
    try:
        async with aiohttp.ClientSession() as session:
            sent = {d: await send_command(session, http, secret, d, "calibrate") for d in ("h-1", "g-1", "m-1")}
            late = await send_command(session, http, secret, "m-2", "too-late", ttl=1)

            device = HttpDevice(session, http, "demo", "h-1", token("h-1"))
            for i in range(5):
                assert (await device.send(readings(i * 10, 10))).acknowledged
            assert (await device.send(readings(10, 10))).body["duplicate"] is True
            commands = HttpCommands(session, http, "demo", "h-1", token("h-1"))
            assert [c["id"] for c in await commands.poll(wait=5)] == [sent["h-1"]["id"]]
            await commands.report(sent["h-1"]["id"], "succeeded")

            async with GrpcDevice(grpc_target, "demo", "g-1", token("g-1")) as grpc_device:
                assert (await asyncio.wait_for(grpc_device.commands.get(), 10))["id"] == sent["g-1"]["id"]
                for i in range(5):
                    assert (await grpc_device.send(readings(i * 10, 10)))["accepted"] == 10
                assert (await grpc_device.send(readings(0, 10)))["duplicate"] is True
                await grpc_device.report(sent["g-1"]["id"], "succeeded")

            await asyncio.sleep(1.2)  # m-2's command expires while m-2 is away
            mqtt_device = MqttDevice(mqtt_host, int(mqtt_port), "demo", "m-1", token("m-1"))
            await mqtt_device.connect()
            try:
                assert (await asyncio.wait_for(mqtt_device.commands.get(), 10))["id"] == sent["m-1"]["id"]
                batches = [readings(i * 10, 10) for i in range(5)]
                for batch in batches:
                    await mqtt_device.send(batch)
                await mqtt_device.send(batches[-1])  # resent as after a lost PUBACK: the same readings
                await mqtt_device.report(sent["m-1"]["id"], "succeeded")
            finally:
                await mqtt_device.close()
            late_device = MqttDevice(mqtt_host, int(mqtt_port), "demo", "m-2", token("m-2"))
            await late_device.connect()
            await asyncio.sleep(0.5)
            assert late_device.commands.empty()
            await late_device.close()

            deadline = time.monotonic() + 10
            while {await command_state(session, http, secret, c["id"]) for c in sent.values()} != {"succeeded"}:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
            assert await command_state(session, http, secret, late["id"]) == "expired"
            shown = await cli("command", "show", "demo", late["id"], "--data-dir", str(data_dir))
            assert "state    expired" in shown and "ttl passed" in shown
            sent_by_cli = await cli("command", "send", "demo", "h-2", "reboot", "delay=5", "--data-dir", str(data_dir))
            assert "state    queued" in sent_by_cli and '"delay": 5' in sent_by_cli
            listed = await cli("command", "list", "demo", "--state", "succeeded", "--data-dir", str(data_dir))
            header, *rows = listed.splitlines()
            assert header.split() == ["ID", "DEVICE", "NAME", "STATE", "CREATED", "SOURCE"] and len(rows) == 3
            app_token = await cli("token", "demo", "--application", "--data-dir", str(data_dir))
            assert app_token.strip() == application_token(secret, "demo")
    finally:
        assert await platform.stop(drain_timeout=30)
    for device in ("h-1", "g-1", "m-1"):
        assert await stored_seqs(data_dir, device) == list(range(50)), device


async def test_websocket_and_coap_devices_on_the_endpoints_json_urls(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    platform = LocalPlatform(load_resources([QUICKSTART]), data_dir)
    endpoints = await platform.start()
    fleet = endpoints["fleets"]["demo"]
    assert fleet["ws"].startswith("ws://127.0.0.1:") and fleet["coap"].startswith("coap://127.0.0.1:")
    secret = credentials.read_secret(Path(fleet["secretFile"]))
    token = lambda device: credentials.device_token(secret, "demo", device)  # noqa: E731
    try:
        async with aiohttp.ClientSession() as session:
            sent = {d: await send_command(session, fleet["http"], secret, d, "calibrate") for d in ("w-1", "c-1")}
            async with WsDevice(session, fleet["ws"], "demo", "w-1", token("w-1")) as ws_device:
                assert (await asyncio.wait_for(ws_device.commands.get(), 10))["id"] == sent["w-1"]["id"]
                for i in range(5):
                    assert (await ws_device.send(readings(i * 10, 10)))["accepted"] == 10
                assert (await ws_device.send(readings(0, 10)))["duplicate"] is True
                assert (await ws_device.report(sent["w-1"]["id"], "succeeded"))["state"] == "succeeded"
            async with CoapDevice(fleet["coap"], "demo", "c-1", token("c-1"), cbor=True) as coap_device:
                assert (await coap_device.observe_commands())["status"] == 200
                assert (await asyncio.wait_for(coap_device.commands.get(), 10))["id"] == sent["c-1"]["id"]
                for i in range(50):  # one reading per message, as a constrained device sends
                    assert (await coap_device.send(readings(i, 1)))["accepted"] == 1
                assert (await coap_device.send(readings(49, 1)))["duplicate"] is True
                assert (await coap_device.report(sent["c-1"]["id"], "succeeded"))["state"] == "succeeded"
    finally:
        assert await platform.stop(drain_timeout=30)
    for device in ("w-1", "c-1"):
        assert await stored_seqs(data_dir, device) == list(range(50)), device


async def test_a_vanished_coap_observer_does_not_deafen_the_gateway_to_other_devices(tmp_path: Path) -> None:
    """A device that observes its commands and goes away (its port closed, no deregistration) makes the gateway's
    next notification come back as an ICMP port-unreachable; the gateway (on uvloop, as a service runs) keeps
    answering every other CoAP device."""
    platform = LocalPlatform(load_resources([QUICKSTART]), tmp_path / "data")
    fleet = (await platform.start())["fleets"]["demo"]
    secret = credentials.read_secret(Path(fleet["secretFile"]))
    token = lambda device: credentials.device_token(secret, "demo", device)  # noqa: E731
    try:
        async with aiohttp.ClientSession() as session:
            gone = CoapDevice(fleet["coap"], "demo", "c-gone", token("c-gone"))
            await gone.connect()
            assert (await gone.observe_commands())["status"] == 200
            await gone.close()  # the device vanishes: its socket is closed, the gateway still observes it
            sent = await send_command(session, fleet["http"], secret, "c-gone", "calibrate")
            deadline = time.monotonic() + 10
            # Handed to the observation: its notification went to the closed port.
            while await command_state(session, fleet["http"], secret, sent["id"]) != "delivered":
                assert time.monotonic() < deadline, "the command never reached the observation"
                await asyncio.sleep(0.05)
            async with CoapDevice(fleet["coap"], "demo", "c-next", token("c-next")) as other:
                answer = await other.send(readings(0, 1), timeout=10)
            assert (answer["status"], answer["accepted"]) == (202, 1)
    finally:
        assert await platform.stop(drain_timeout=30)


@pytest.mark.parametrize("protocol", ["http", "ws", "coap"])
async def test_an_outage_of_the_local_nats_server_under_load(tmp_path: Path, protocol: str) -> None:
    """NATS stops for several seconds while devices send over `protocol`; every acknowledged reading is stored
    exactly once (none lost, none extra) in the order each device sent it, and the gateway's buffer drains to
    zero."""
    data_dir = tmp_path / "data"
    platform = LocalPlatform(load_resources([QUICKSTART]), data_dir)
    endpoints = await platform.start()
    fleet = endpoints["fleets"]["demo"]
    secret = credentials.read_secret(Path(fleet["secretFile"]))
    buffer_dir = data_dir / "buffer" / "demo"
    acknowledged: dict[str, list[int]] = {f"o-{i}": [] for i in range(4)}
    stop = asyncio.Event()

    async def device_loop(session: aiohttp.ClientSession, name: str) -> None:
        token = credentials.device_token(secret, "demo", name)
        link = make_link(protocol, fleet[protocol], "demo", name, token, session)
        await link.reconnect()
        seq = 0
        try:
            while not stop.is_set():
                batch = readings(seq, 10)
                delivery = await link.deliver(batch)
                assert delivery.outcome is not Outcome.REFUSED, delivery.reason
                if delivery.outcome is Outcome.ACKNOWLEDGED:
                    acknowledged[name].extend(r["seq"] for r in batch)
                    seq += 10
                else:  # the same batch again, as a device does after a lost answer
                    await asyncio.sleep(0.2)
                    with contextlib.suppress(Exception):
                        await link.reconnect()
                await asyncio.sleep(0.02)
        finally:
            await link.close()

    try:
        async with aiohttp.ClientSession() as session:
            loops = [asyncio.create_task(device_loop(session, name)) for name in acknowledged]
            await until(lambda: sum(map(len, acknowledged.values())) >= 400, 30, "the devices' first 400 readings")
            await platform.nats.stop()
            # Counted once nats-server is gone: the gateway may have buffered (and answered) a good many batches
            # while it shut down, so what follows must be answered from the buffer alone.
            before_outage = sum(map(len, acknowledged.values()))

            def buffered_and_answered() -> bool:
                answered = sum(map(len, acknowledged.values())) > before_outage
                return answered and len(list(buffer_dir.glob("*.batch"))) >= 10

            await until(buffered_and_answered, 15, "readings acknowledged while NATS is away, from the buffer")
            await platform.nats.start()
            await until(lambda: not list(buffer_dir.glob("*.batch")), 30, "the gateway's buffer draining")
            stop.set()
            await asyncio.gather(*loops)
        in_stream = {name: await telemetry_seqs(platform, name) for name in acknowledged}
    finally:
        stop.set()
        assert await platform.stop(drain_timeout=60)
    for name, seqs in acknowledged.items():
        assert await stored_seqs(data_dir, name) == seqs, name
        assert in_stream[name] == seqs, f"{name}'s readings reached JetStream out of order or twice"


async def telemetry_seqs(platform: LocalPlatform, device: str) -> list[int]:
    """The device's reading seqs in the order its telemetry stream holds them (what the processor reads)."""
    login = platform.nats.login()
    nc = await nats.connect(platform.nats.url, user=login.user, password=login.password)
    try:
        js = nc.jetstream()
        stream = subjects.telemetry_stream("demo")
        sub = await js.subscribe(f"ff.demo.tm.*.{device}", ordered_consumer=True, stream=stream)
        seqs: list[int] = []
        with contextlib.suppress(TimeoutError, nats.errors.TimeoutError):
            while True:
                seqs.extend(r.seq for r in codec.decode_batch((await sub.next_msg(timeout=1)).data).readings)
        return seqs
    finally:
        await nc.close()


async def until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `condition` until it holds; fail naming `what` after `timeout` seconds (generous: a loaded 2-core
    machine runs the platform, the devices and this test at once)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"waited {timeout} s for {what}"
        await asyncio.sleep(0.05)
