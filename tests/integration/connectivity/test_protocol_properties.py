"""Property, on every protocol: each generated body sent by a device over HTTP, gRPC or MQTT is either stored
exactly once (exactly the readings it holds) or refused with a 4xx (MQTT: dead-lettered) naming one of the rules
it breaks, as the plain reference in tests/support/telemetry_bodies.py says."""

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import nats.errors
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from fleetflow.device.grpc_client import GrpcDevice
from fleetflow.device.mqtt_client import MqttDevice
from tests.integration.connectivity.conftest import FLEET, MqttPlatform, Store, fleet_resource, running_mqtt_platform
from tests.integration.connectivity.test_mqtt import drained, wait_until
from tests.support.telemetry_bodies import Expected, bodies, expected, typed_readings

MAX_READINGS = 10
T = TypeVar("T")
EXAMPLES = 40


def generated(strategy: st.SearchStrategy[T], count: int) -> list[T]:
    """`count` values drawn by hypothesis (collected, then sent over real sockets by the async test)."""
    found: list[T] = []

    @settings(max_examples=count, database=None, phases=[Phase.generate], deadline=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(strategy)
    def collect(value: T) -> None:
        found.append(value)

    collect()
    return found


@pytest.fixture
async def mqtt_platform(tmp_path: Path) -> AsyncIterator[MqttPlatform]:
    fleet = fleet_resource({"maxBatchReadings": MAX_READINGS})
    async with running_mqtt_platform(tmp_path, fleet, grpc_port=0) as platform:
        yield platform


def want(body: bytes, platform: MqttPlatform) -> Expected:
    return expected(body, MAX_READINGS, platform.gateway.settings.fleet.spec.gateway.max_body_bytes)


async def test_http_and_mqtt_store_each_body_whole_or_refuse_it_naming_a_rule(
    mqtt_platform: MqttPlatform, mqtt_store: Store
) -> None:
    sent = generated(bodies(), EXAMPLES)
    async with aiohttp.ClientSession() as session:
        answers = await asyncio.gather(*(post(session, mqtt_platform, f"http-{i}", b) for i, b in enumerate(sent)))
    for i, (body, (status, answer)) in enumerate(zip(sent, answers, strict=True)):
        expectation = want(body, mqtt_platform)
        if status == 202:
            assert not expectation.refusals, (body, answer)
        else:
            assert 400 <= status < 500 and answer["error"] in expectation.refusals, (body, status, answer)
        await assert_stored(mqtt_store, f"http-{i}", expectation)

    mqtt_refusals = await send_mqtt(mqtt_platform, sent)
    await wait_until(lambda: drained(mqtt_platform), "the MQTT intake, processor and writer drained")
    for i, body in enumerate(sent):
        expectation = want(body, mqtt_platform)
        if expectation.refusals:
            assert mqtt_refusals.get(f"mqtt-{i}", "").split(":")[0] in expectation.refusals, (body, mqtt_refusals)
        else:
            assert f"mqtt-{i}" not in mqtt_refusals, (body, mqtt_refusals)
        await assert_stored(mqtt_store, f"mqtt-{i}", expectation)


async def test_grpc_stores_each_batch_whole_or_refuses_it_naming_a_rule(
    mqtt_platform: MqttPlatform, mqtt_store: Store
) -> None:
    target = f"127.0.0.1:{mqtt_platform.gateway.status['grpc_port']}"
    for i, readings in enumerate(generated(typed_readings(), EXAMPLES)):
        device = f"grpc-{i}"
        async with GrpcDevice(target, FLEET, device, mqtt_platform.gateway.token(device)) as dev:
            ack = await dev.send(readings)
        expectation = want(json.dumps({"readings": readings}).encode(), mqtt_platform)
        if ack["status"] == 202:
            assert not expectation.refusals, (readings, ack)
        else:
            assert 400 <= ack["status"] < 500 and ack["error"] in expectation.refusals, (readings, ack, expectation)
        await assert_stored(mqtt_store, device, expectation)


async def post(session: aiohttp.ClientSession, platform: MqttPlatform, device: str,
               body: bytes) -> tuple[int, dict[str, Any]]:  # fmt: skip
    headers = {"Authorization": f"Bearer {platform.gateway.token(device)}", "Content-Type": "application/json"}
    async with session.post(f"{platform.gateway.url}/v1/fleets/{FLEET}/devices/{device}/telemetry", data=body,
                            headers=headers) as response:  # fmt: skip
        return response.status, await response.json()


async def send_mqtt(platform: MqttPlatform, sent: list[bytes]) -> dict[str, str]:
    """Publish each body from its own device; the dead letters' reasons by device."""
    for i, body in enumerate(sent):
        device = f"mqtt-{i}"
        dev = MqttDevice("127.0.0.1", platform.mqtt_port, FLEET, device, platform.gateway.token(device))
        await dev.connect()
        try:
            await asyncio.wait_for(dev.publish(f"fleetflow/{FLEET}/{device}/telemetry", body), 10)
        finally:
            await dev.close()
    await wait_until(lambda: drained(platform), "every MQTT message settled")
    reasons: dict[str, str] = {}
    sub = await platform.gateway.nc.jetstream().subscribe(f"ff.{FLEET}.dlq.>", ordered_consumer=True)
    try:
        while True:
            msg = await sub.next_msg(timeout=1)
            reasons[msg.headers["Fleetflow-Source-Subject"].split(".")[2]] = msg.headers["Fleetflow-Error"]
    except (TimeoutError, nats.errors.TimeoutError):
        pass
    finally:
        await sub.unsubscribe()
    return reasons


async def assert_stored(store: Store, device: str, expectation: Expected) -> None:
    """Exactly the readings of an accepted body, once each; nothing of a refused one."""
    want_seqs = sorted(seq for seq, _ in expectation.readings)

    async def settled() -> bool:
        return len(store.seqs(device)) >= len(want_seqs)

    await wait_until(settled, f"the readings of {device} stored", timeout=20)
    assert sorted(store.seqs(device)) == want_seqs
