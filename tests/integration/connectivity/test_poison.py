"""No device can hurt another: a poison batch on any protocol is refused (or dead-lettered) with its reason at
once, while every other device's readings keep flowing and are stored exactly once.

The platform: nats-server with a small max_payload (80 KB, as a managed NATS's limit would be for a small
maxBodyBytes), its MQTT listener, a gateway with an outage buffer serving HTTP, gRPC and MQTT, and a stepless
pipeline storing into SQLite."""

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import nats.errors
import pytest

from fleetflow.device.grpc_client import GrpcDevice
from fleetflow.device.mqtt_client import MqttDevice
from tests.integration.connectivity.conftest import (
    FLEET,
    MqttPlatform,
    Store,
    fleet_resource,
    running_mqtt_platform,
)
from tests.integration.connectivity.test_mqtt import dead_letters, drained, wait_until

MAX_BODY = 65536
# 3,500 metrics of 1e15: a 42 KB JSON body (a 63 KB protobuf message), within maxBodyBytes, which grows to
# 91 KB once encoded for NATS (1e15 is written 1000000000000000.0): more than the server carries.
GROWING = {f"m{i}": 1e15 for i in range(3500)}


@pytest.fixture
async def mqtt_platform(tmp_path: Path) -> AsyncIterator[MqttPlatform]:
    fleet = fleet_resource({"maxBodyBytes": MAX_BODY})
    async with running_mqtt_platform(tmp_path, fleet, "max_payload: 81920\n", grpc_port=0,
                                     buffer_dir=tmp_path / "buffer") as platform:  # fmt: skip
        yield platform


def reading(seq: int, metrics: dict[str, float] | None = None) -> dict[str, Any]:
    return {"seq": seq, "ts": int(time.time() * 1000), "metrics": metrics or {"t": 1.0}}


def body_of(readings: list[dict[str, Any]]) -> bytes:
    """The body as a device would write it: compact, and 1e15 as 1e15 (Python's json writes 1000000000000000.0)."""
    return json.dumps({"readings": readings}, separators=(",", ":")).replace("1000000000000000.0", "1e15").encode()


POISON = {
    "grows past max_payload": ([reading(1, GROWING)], 413, "batch_too_large"),
    "seq of 2^63": ([reading(2**63)], 400, "invalid_reading"),
    "seq of 2^64": ([reading(2**64 - 1)], 400, "invalid_reading"),
}
# gRPC's seq is an int64, so 2^63 cannot even be written; a negative seq can.
GRPC_POISON = {"grows past max_payload": POISON["grows past max_payload"],
               "negative seq": ([reading(-1)], 400, "invalid_reading")}  # fmt: skip


async def post(session: aiohttp.ClientSession, platform: MqttPlatform, device: str,
               readings: list[dict[str, Any]]) -> tuple[int, dict[str, Any]]:  # fmt: skip
    headers = {"Authorization": f"Bearer {platform.gateway.token(device)}", "Content-Type": "application/json"}
    url = f"{platform.gateway.url}/v1/fleets/{FLEET}/devices/{device}/telemetry"
    async with session.post(url, data=body_of(readings), headers=headers) as response:
        return response.status, await response.json()


async def honest_traffic(platform: MqttPlatform, devices: int, batches: int) -> None:
    """`devices` HTTP devices, each sending `batches` batches of 5 readings, all of which must be accepted."""
    async with aiohttp.ClientSession() as session:

        async def one(device: str) -> None:
            for batch in range(batches):
                status, body = await post(session, platform, device, [reading(batch * 5 + i) for i in range(5)])
                assert status == 202, body

        await asyncio.gather(*(one(f"honest-{n}") for n in range(devices)))


async def assert_all_stored(platform: MqttPlatform, store: Store, devices: int, batches: int) -> None:
    async def stored() -> bool:
        return all(len(store.seqs(f"honest-{n}")) >= batches * 5 for n in range(devices)) and await drained(platform)

    await wait_until(stored, "every honest reading stored")
    for n in range(devices):
        assert store.seqs(f"honest-{n}") == list(range(batches * 5))  # each exactly once


def buffered_files(platform: MqttPlatform) -> list[Path]:
    buffer_dir = platform.gateway.settings.buffer_dir
    assert buffer_dir is not None
    return sorted(buffer_dir.glob("*"))


@pytest.mark.parametrize("case", POISON, ids=list(POISON))
async def test_http_poison_is_refused_at_once_and_others_keep_flowing(
    mqtt_platform: MqttPlatform, mqtt_store: Store, case: str
) -> None:
    readings, status, reason = POISON[case]
    honest = asyncio.create_task(honest_traffic(mqtt_platform, devices=20, batches=5))
    async with aiohttp.ClientSession() as session:
        got = await post(session, mqtt_platform, "poison-1", readings)
    assert (got[0], got[1]["error"]) == (status, reason), got
    await honest
    await assert_all_stored(mqtt_platform, mqtt_store, devices=20, batches=5)
    assert buffered_files(mqtt_platform) == []  # never entered the outage buffer
    assert mqtt_store.seqs("poison-1") == []


@pytest.mark.parametrize("case", GRPC_POISON, ids=list(GRPC_POISON))
async def test_grpc_poison_is_refused_and_the_stream_goes_on(
    mqtt_platform: MqttPlatform, mqtt_store: Store, case: str
) -> None:
    readings, _, reason = GRPC_POISON[case]
    target = f"127.0.0.1:{mqtt_platform.gateway.status['grpc_port']}"
    honest = asyncio.create_task(honest_traffic(mqtt_platform, devices=10, batches=3))
    async with GrpcDevice(target, FLEET, "poison-2", mqtt_platform.gateway.token("poison-2")) as dev:
        ack = await dev.send(readings)
        assert (ack["status"], ack["error"]) == (413 if reason == "batch_too_large" else 400, reason), ack
        assert (await dev.send([reading(7)]))["status"] == 202  # the same stream goes on
    await honest
    await assert_all_stored(mqtt_platform, mqtt_store, devices=10, batches=3)
    assert mqtt_store.seqs("poison-2") == [7]
    assert buffered_files(mqtt_platform) == []


async def test_grpc_message_over_max_body_is_refused_with_the_limit(mqtt_platform: MqttPlatform) -> None:
    target = f"127.0.0.1:{mqtt_platform.gateway.status['grpc_port']}"
    big = {f"m{i}": 1.5 for i in range(5000)}  # about 85 KB as protobuf
    async with GrpcDevice(target, FLEET, "big-1", mqtt_platform.gateway.token("big-1")) as dev:
        ack = await dev.send([reading(1, big)])
        assert (ack["status"], ack["error"]) == (413, "body_too_large"), ack
        assert f"at most {MAX_BODY} bytes" in ack["detail"]


async def test_mqtt_poison_is_dead_lettered_with_its_reason_and_the_device_goes_on(
    mqtt_platform: MqttPlatform, mqtt_store: Store
) -> None:
    honest = asyncio.create_task(honest_traffic(mqtt_platform, devices=10, batches=3))
    dev = MqttDevice("127.0.0.1", mqtt_platform.mqtt_port, FLEET, "poison-3", mqtt_platform.gateway.token("poison-3"))
    await dev.connect()
    try:
        telemetry = f"fleetflow/{FLEET}/poison-3/telemetry"
        for readings in ([reading(1)], [reading(2, GROWING)], [reading(3)], [reading(2**63)],
                         [reading(4, {f"m{i}": 1.5 for i in range(6000)})], [reading(5)]):  # fmt: skip
            await asyncio.wait_for(dev.publish(telemetry, body_of(readings)), 10)
    finally:
        await dev.close()
    await honest
    await assert_all_stored(mqtt_platform, mqtt_store, devices=10, batches=3)

    async def poison_stored() -> bool:
        return mqtt_store.seqs("poison-3") == [1, 3, 5] and await drained(mqtt_platform)

    await wait_until(poison_stored, "the good readings of the poisoning device stored")
    reasons = await dead_letter_reasons(mqtt_platform)
    assert len(reasons) == 3 == await dead_letters(mqtt_platform)
    assert any(r.startswith("batch_too_large") for r in reasons), reasons
    assert any(r.startswith("invalid_reading") and "2^63 - 1" in r for r in reasons), reasons
    assert any(r.startswith("body_too_large") for r in reasons), reasons
    assert buffered_files(mqtt_platform) == []


async def dead_letter_reasons(platform: MqttPlatform) -> list[str]:
    js = platform.gateway.nc.jetstream()
    sub = await js.subscribe(f"ff.{FLEET}.dlq.>", ordered_consumer=True)
    reasons = []
    try:
        with contextlib.suppress(TimeoutError, nats.errors.TimeoutError):  # a second without one: all were read
            while True:
                msg = await sub.next_msg(timeout=1)
                reasons.append((msg.headers or {}).get("Fleetflow-Error", ""))
    finally:
        await sub.unsubscribe()
    return reasons


def test_the_growing_body_really_is_within_max_body_and_grows_past_max_payload() -> None:
    from fleetflow.runtime import codec
    from fleetflow.runtime.codec import Reading, ReadingBatch

    body = body_of([reading(1, GROWING)])
    encoded = codec.encode(ReadingBatch(fleet=FLEET, device="poison-1", readings=[Reading(1, 1, GROWING)],
                                        received_ms=1))  # fmt: skip
    assert len(body) < MAX_BODY < 81920 < len(encoded)
