"""MQTT through NATS's own MQTT listener with a real paho-mqtt client, devices admitted by the gateway's auth
callout: telemetry stored once and in order (merged into fewer telemetry messages), also across redeliveries,
bad bodies dead-lettered with the reason, commands delivered, ids enforced."""

import asyncio
import dataclasses
import json
import socket
import time
from collections.abc import Awaitable, Callable

import nats
import nats.js.errors
import pytest
from nats.js.api import DiscardPolicy

from fleetflow.device.mqtt_client import MqttDevice, MqttRefused
from fleetflow.runtime import subjects
from fleetflow.runtime.commands import CommandStore, new_command, send_command
from tests.integration.connectivity.conftest import FLEET, MqttPlatform, Store


def readings(first: int, count: int) -> list[dict]:
    now = int(time.time() * 1000)
    return [{"seq": s, "ts": now + s, "metrics": {"pressure": 1.0 + s}} for s in range(first, first + count)]


def device(platform: MqttPlatform, device_id: str, version: str = "3.1.1", token_of: str | None = None,
           username: str | None = None) -> MqttDevice:  # fmt: skip
    token = platform.gateway.token(token_of or device_id)
    return MqttDevice("127.0.0.1", platform.mqtt_port, FLEET, device_id, token, version=version, username=username)


async def wait_until(condition: Callable[[], Awaitable[bool]], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def wait_stored(platform: MqttPlatform, store: Store, device_id: str, count: int) -> list[int]:
    """The device's stored seqs once `count` rows are in and every stage has settled everything it got."""

    async def done() -> bool:
        return len(store.seqs(device_id)) >= count and await drained(platform)

    await wait_until(done, f"{count} readings of {device_id} stored")
    return store.seqs(device_id)


async def drained(platform: MqttPlatform) -> bool:
    """Nothing pending or unacknowledged in the MQTT intake, the processor or the writer."""
    js = platform.gateway.nc.jetstream()
    consumers = [(f"ff-{FLEET}-mqtt", "gateway-mqtt"), (subjects.telemetry_stream(FLEET), "processor-keep-0"),
                 (subjects.pipeline_stream(FLEET, "keep"), "writer-keep")]  # fmt: skip
    for stream, name in consumers:
        info = await js.consumer_info(stream, name)
        if info.num_pending or info.num_ack_pending:
            return False
    return True


async def send_all(dev: MqttDevice, bodies: list[list[dict]]) -> None:
    """Every body as its own QoS 1 message, without waiting in between, then every PUBACK."""
    await asyncio.wait_for(asyncio.gather(*[dev.send_nowait(body) for body in bodies]), 30)


async def dead_letters(platform: MqttPlatform) -> int:
    try:
        info = await platform.gateway.nc.jetstream().stream_info(subjects.dead_letter_stream(FLEET))
    except nats.js.errors.NotFoundError:
        return 0
    return info.state.messages


async def test_telemetry_over_mqtt_is_stored_exactly_once(mqtt_platform: MqttPlatform, mqtt_store: Store) -> None:
    dev = device(mqtt_platform, "tank-3")
    bodies = [readings(i * 5, 5) for i in range(10)]
    await dev.connect()
    try:
        await send_all(dev, bodies)
        await dev.send(bodies[4])  # a retry, as after a lost PUBACK: it is not grouped as it was first
    finally:
        await dev.close()
    assert await wait_stored(mqtt_platform, mqtt_store, "tank-3", 50) == list(range(50))
    assert sorted(set(await mqtt_platform.gateway.stored_readings("tank-3"))) == list(range(50))


async def test_many_readings_in_flight_are_stored_once_in_order_in_fewer_messages(
    mqtt_platform: MqttPlatform, mqtt_store: Store
) -> None:
    dev = MqttDevice("127.0.0.1", mqtt_platform.mqtt_port, FLEET, "tank-4", mqtt_platform.gateway.token("tank-4"),
                     max_in_flight=100)  # fmt: skip
    await dev.connect()
    try:
        await send_all(dev, [readings(seq, 1) for seq in range(1, 301)])
    finally:
        await dev.close()
    assert await wait_stored(mqtt_platform, mqtt_store, "tank-4", 300) == list(range(1, 301))
    batches = await mqtt_platform.gateway.telemetry_batches("tank-4")
    assert [seq for batch in batches for seq in batch] == list(range(1, 301))  # in order, none twice
    assert len(batches) <= 150, f"{len(batches)} telemetry messages for 300 MQTT messages"


async def test_a_bad_body_is_dead_lettered_with_the_reason(mqtt_platform: MqttPlatform, mqtt_store: Store) -> None:
    dev = device(mqtt_platform, "tank-9")
    await dev.connect()
    bad = b'{"readings": [{"seq": 4, "ts": 1, "metrics": {"pressure": 1.0}}]}'
    try:
        acks = [dev.send_nowait(readings(seq, 1)) for seq in range(1, 4)]
        acks += [dev.publish(f"{dev.topic}/telemetry", bad)]  # in the middle of the device's run
        acks += [dev.send_nowait(readings(seq, 1)) for seq in range(5, 8)]
        await asyncio.wait_for(asyncio.gather(*acks), 10)
    finally:
        await dev.close()
    assert await wait_stored(mqtt_platform, mqtt_store, "tank-9", 6) == [1, 2, 3, 5, 6, 7]
    assert await dead_letters(mqtt_platform) == 1
    js = mqtt_platform.gateway.nc.jetstream()
    sub = await js.subscribe("ff.demo.dlq.mqtt", ordered_consumer=True, stream=subjects.dead_letter_stream(FLEET))
    msg = await sub.next_msg(timeout=10)
    assert msg.data == bad
    assert msg.headers is not None and "invalid_timestamp" in msg.headers["Fleetflow-Error"]
    assert msg.headers["Fleetflow-Source-Subject"] == "fleetflow.demo.tank-9.telemetry"


@pytest.mark.parametrize("mqtt_platform", [{"rateLimit": {"readingsPerSecond": 50, "burst": 10}}], indirect=True)
async def test_a_device_over_its_rate_has_its_readings_stored_later_in_order(
    mqtt_platform: MqttPlatform, mqtt_store: Store
) -> None:
    dev = device(mqtt_platform, "tank-6")
    await dev.connect()
    try:
        await send_all(dev, [readings(seq, 1) for seq in range(1, 31)])  # 30 at once, 10 within the burst
    finally:
        await dev.close()
    assert await wait_stored(mqtt_platform, mqtt_store, "tank-6", 30) == list(range(1, 31))
    in_stream = [seq for batch in await mqtt_platform.gateway.telemetry_batches("tank-6") for seq in batch]
    assert in_stream == list(range(1, 31))  # redelivered ones were not overtaken by the device's later readings
    assert await dead_letters(mqtt_platform) == 0


async def test_readings_refused_by_jetstream_are_stored_once_in_order_when_it_takes_them_again(
    mqtt_platform: MqttPlatform, mqtt_store: Store
) -> None:
    js = mqtt_platform.gateway.nc.jetstream()
    stream = subjects.telemetry_stream(FLEET)
    config = (await js.stream_info(stream)).config
    # A full stream that discards new messages refuses every batch until it has room again: a passing condition.
    await js.update_stream(dataclasses.replace(config, max_bytes=1, discard=DiscardPolicy.NEW))
    dev = device(mqtt_platform, "tank-7")
    await dev.connect()
    try:
        await send_all(dev, [readings(seq, 1) for seq in range(1, 21)])

        async def refused() -> bool:
            return bool((await js.consumer_info(f"ff-{FLEET}-mqtt", "gateway-mqtt")).num_redelivered)

        await wait_until(refused, "the gateway to be refused and retry")
        await send_all(dev, [readings(seq, 1) for seq in range(21, 31)])  # while the first ones wait to retry
        await js.update_stream(config)
    finally:
        await dev.close()
    assert await wait_stored(mqtt_platform, mqtt_store, "tank-7", 30) == list(range(1, 31))
    in_stream = [seq for batch in await mqtt_platform.gateway.telemetry_batches("tank-7") for seq in batch]
    assert in_stream == list(range(1, 31))
    assert await dead_letters(mqtt_platform) == 0


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
    dev.client.socket().shutdown(socket.SHUT_RDWR)  # the link drops; nobody says "offline"
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
