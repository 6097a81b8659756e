"""MQTT through NATS's own MQTT listener with a real paho-mqtt client, devices admitted by the gateway's auth
callout: telemetry stored once, bad bodies dead-lettered with the reason, commands delivered, ids enforced."""

import asyncio
import json
import time

import nats
import pytest

from fleetflow.device.mqtt_client import MqttDevice, MqttRefused
from fleetflow.gateway.commands import CommandStore, new_command, send_command
from fleetflow.runtime import subjects
from tests.integration.connectivity.conftest import FLEET, MqttPlatform


def readings(first: int, count: int) -> list[dict]:
    now = int(time.time() * 1000)
    return [{"seq": s, "ts": now + s, "metrics": {"pressure": 1.0 + s}} for s in range(first, first + count)]


def device(platform: MqttPlatform, device_id: str, version: str = "3.1.1", token_of: str | None = None,
           username: str | None = None) -> MqttDevice:  # fmt: skip
    token = platform.gateway.token(token_of or device_id)
    return MqttDevice("127.0.0.1", platform.mqtt_port, FLEET, device_id, token, version=version, username=username)


async def wait_for_stored(platform: MqttPlatform, device_id: str, count: int, timeout: float = 10) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        stored = await platform.gateway.stored_readings(device_id)
        if len(stored) >= count or time.monotonic() > deadline:
            return stored
        await asyncio.sleep(0.1)


async def test_telemetry_over_mqtt_is_stored_exactly_once(mqtt_platform: MqttPlatform) -> None:
    version = "3.1.1"
    dev = device(mqtt_platform, f"tank-{version[0]}", version)
    await dev.connect()
    try:
        for i in range(10):
            await dev.send(readings(i * 5, 5))
        await dev.send(readings(20, 5))  # a retry, as after a lost PUBACK
    finally:
        await dev.close()
    stored = await wait_for_stored(mqtt_platform, f"tank-{version[0]}", 50)
    await asyncio.sleep(0.3)  # anything extra would have arrived by now
    assert (
        sorted(await mqtt_platform.gateway.stored_readings(f"tank-{version[0]}")) == list(range(50)) == sorted(stored)
    )


async def test_a_bad_body_is_dead_lettered_with_the_reason(mqtt_platform: MqttPlatform) -> None:
    dev = device(mqtt_platform, "tank-9")
    await dev.connect()
    try:
        await dev._publish(f"{dev.topic}/telemetry", b'{"readings": [{"seq": 1, "ts": 1, "metrics": {}}]}', 5)
        await dev.send(readings(1, 2))
    finally:
        await dev.close()
    js = mqtt_platform.gateway.nc.jetstream()
    sub = await js.subscribe("ff.demo.dlq.mqtt", ordered_consumer=True, stream=subjects.dead_letter_stream(FLEET))
    msg = await sub.next_msg(timeout=10)
    assert msg.headers is not None and "invalid_timestamp" in msg.headers["Fleetflow-Error"]
    assert msg.headers["Fleetflow-Source-Subject"] == "fleetflow.demo.tank-9.telemetry"
    assert sorted(await wait_for_stored(mqtt_platform, "tank-9", 2)) == [1, 2]


async def test_a_device_cannot_connect_publish_or_subscribe_as_another(mqtt_platform: MqttPlatform) -> None:
    with pytest.raises(MqttRefused, match="refused"):
        await device(mqtt_platform, "tank-1", token_of="tank-2").connect()  # another device's token
    with pytest.raises(MqttRefused, match="refused"):
        await device(mqtt_platform, "tank-1", username="demo/tank-2").connect()  # client id of someone else
    with pytest.raises(MqttRefused, match="refused"):
        await device(mqtt_platform, "tank-1", username="").connect()  # anonymous
    thief = device(mqtt_platform, "tank-2")
    await thief.connect()
    try:
        with pytest.raises(MqttRefused, match="refused"):
            await thief.subscribe("fleetflow/demo/tank-1/commands")
        with pytest.raises(MqttRefused, match="refused"):
            await thief.subscribe("fleetflow/#")
        # nats-server drops a publish outside the device's permissions (MQTT 3.1.1 has no negative PUBACK).
        await thief._publish("fleetflow/demo/tank-1/telemetry", json.dumps({"readings": readings(1, 1)}).encode(), 5)
    except (TimeoutError, ConnectionError):
        pass  # the broker may also close the connection of a device that violates its permissions
    finally:
        await thief.close()
    await asyncio.sleep(0.5)
    assert await mqtt_platform.gateway.stored_readings("tank-1") == []
    with pytest.raises(nats.errors.Error):  # services' port is not for devices either: credentials are MQTT-only
        await nats.connect(f"nats://demo%2Ftank-2:{mqtt_platform.gateway.token('tank-2')}@127.0.0.1:"
                           f"{mqtt_platform.nats.port}", allow_reconnect=False, connect_timeout=3)  # fmt: skip


async def test_commands_queued_while_offline_arrive_on_connect_and_results_come_back(
    mqtt_platform: MqttPlatform,
) -> None:
    gw = mqtt_platform.gateway
    js = gw.nc.jetstream()
    store = await CommandStore.open(js, FLEET)
    queued = [(await send_command(js, store, new_command(FLEET, "valve-5", f"step{i}"))).command.id for i in range(3)]
    dev = device(mqtt_platform, "valve-5")
    await dev.connect()
    try:
        got = [await asyncio.wait_for(dev.commands.get(), 10) for _ in queued]
        assert [c["id"] for c in got] == queued
        live = (await send_command(js, store, new_command(FLEET, "valve-5", "now"))).command.id
        assert (await asyncio.wait_for(dev.commands.get(), 10))["id"] == live
        await dev.report(live, "failed", "stuck")
    finally:
        await dev.close()
    deadline = time.monotonic() + 10
    while (record := await store.get("valve-5", live)) is None or record.state != "failed":
        assert time.monotonic() < deadline, f"state is {record and record.state}"
        await asyncio.sleep(0.1)
    assert [t.state for t in record.history] == ["queued", "delivered", "failed"]
    assert record.history[1].detail == "via mqtt" and record.history[2].detail == "stuck"


async def test_mqtt_5_is_refused_clearly_by_the_nats_listener(mqtt_platform: MqttPlatform) -> None:
    """nats-server's MQTT listener speaks MQTT 3.1.1; a version 5 CONNECT gets a clear refusal, not a hang."""
    with pytest.raises(MqttRefused, match="Unsupported protocol version"):
        await device(mqtt_platform, "tank-5", version="5").connect()


async def test_a_command_for_a_device_that_vanished_without_its_will_stays_queued(
    mqtt_platform: MqttPlatform,
) -> None:
    gw = mqtt_platform.gateway
    js = gw.nc.jetstream()
    store = await CommandStore.open(js, FLEET)
    dev = device(mqtt_platform, "valve-6")
    dev.client.will_clear()  # no will: the gateway still believes the device is online afterwards
    await dev.connect()
    dev.client.loop_stop()
    dev.client.socket().close()  # the link drops; nobody says "offline"
    await asyncio.sleep(0.5)
    command = (await send_command(js, store, new_command(FLEET, "valve-6", "open"))).command
    deadline = time.monotonic() + 10
    while (record := await store.get("valve-6", command.id)) is None or len(record.history) < 3:
        assert time.monotonic() < deadline, f"history is {record and record.history}"
        await asyncio.sleep(0.05)
    assert [t.state for t in record.history] == ["queued", "delivered", "queued"]
    again = device(mqtt_platform, "valve-6")
    await again.connect()
    try:
        assert (await asyncio.wait_for(again.commands.get(), 10))["id"] == command.id
    finally:
        await again.close()
