"""The cold-chain pipeline on the local platform: filter, derive, window, alert and command steps, two
processor replicas, and one of them killed with SIGKILL in the middle of a window while load continues."""

import asyncio
import json
import os
import signal
import statistics
import time
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
import yaml

from fleetflow.api import DeviceFleet, Pipeline
from fleetflow.processor.checkpoint import Checkpoint, bucket_name, object_name
from fleetflow.processor.compiler import compile_pipeline
from fleetflow.processor.engine import Engine
from fleetflow.runtime import credentials, subjects
from fleetflow.runtime.codec import AlertEvent, Command, Reading, ReadingBatch, WindowAggregate
from fleetflow.writer.stores import ReadingQuery
from fleetflow.writer.stores.sqlite import SqliteStore
from tests.e2e.localplatform import RunningPlatform, fleetflow_up

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "cold-chain"
FLEET, PIPELINE = "coldchain", "cold-chain"
DEVICES = ["box-a1", "box-a2", "box-a3", "box-b1", "box-b2", "box-b3"]
SECONDS, PER_REQUEST = 90, 5
BASE = (int(time.time() * 1000) // 10_000) * 10_000 - 120_000  # in the past, well within the commands' TTL (6 h)
pytestmark = pytest.mark.e2e


def resources(tmp_path: Path, replicas: int) -> tuple[Path, Path, DeviceFleet, Pipeline]:
    """The example, with windows, `for` and cooldown scaled from minutes to seconds."""
    fleet = yaml.safe_load((EXAMPLE / "fleet.yaml").read_text())
    pipeline = yaml.safe_load((EXAMPLE / "pipeline.yaml").read_text())
    steps = {step["name"]: step for step in pipeline["spec"]["steps"]}
    steps["box-health"]["window"].update(size="10s", idleTimeout="3s")
    steps["over-temperature"]["alert"]["for"] = "10s"
    # A TTL of hours: event times are taken when the module is imported, and a command step sends nothing for a
    # reading older than its TTL, so with 10 minutes the first commands went missing when the suite ran long.
    steps["boost-cooling"]["command"].update(cooldown="20s", ttl="6h")
    pipeline["spec"]["processor"]["replicas"] = replicas
    fleet_file, pipeline_file = tmp_path / "fleet.yaml", tmp_path / "pipeline.yaml"
    fleet_file.write_text(yaml.safe_dump(fleet))
    pipeline_file.write_text(yaml.safe_dump(pipeline))
    return fleet_file, pipeline_file, DeviceFleet.model_validate(fleet), Pipeline.model_validate(pipeline)


def reading(device: str, second: int) -> Reading:
    """Over 8 °C from 30 s to 60 s, a disconnected probe (-127 °C) at 45 s, a slowly varying battery."""
    index = DEVICES.index(device)
    if second == 45:
        temp = -127.0
    elif 30 <= second < 60:
        temp = 9.0 + (second % 3) / 10
    else:
        temp = 4.0 + (second % 4) / 10
    metrics = {"temp_c": temp, "battery_v": 12.0 + ((second * 7 + index) % 10) / 100, "battery_a": 1.0 + index / 10}
    return Reading(second, BASE + second * 1000, metrics)


def requests() -> list[list[tuple[str, list[Reading]]]]:
    """Rounds of requests, one per device per round; in round 5 box-a1 also resends seq 13-17 re-batched."""
    rounds = []
    for first in range(0, SECONDS, PER_REQUEST):
        rounds.append([(d, [reading(d, s) for s in range(first, first + PER_REQUEST)]) for d in DEVICES])
    rounds[5].append(("box-a1", [reading("box-a1", s) for s in range(13, 18)]))
    return rounds


async def send(platform: RunningPlatform, on_round: dict[int, Any]) -> None:
    secret = credentials.read_secret(Path(platform.endpoints["fleets"][FLEET]["secretFile"]))
    url = platform.gateway(FLEET)

    async def post(session: aiohttp.ClientSession, device: str, readings: list[Reading]) -> None:
        body = {"readings": [{"seq": r.seq, "ts": r.ts, "metrics": r.metrics} for r in readings]}
        headers = {"Authorization": f"Bearer {credentials.device_token(secret, FLEET, device)}"}
        async with session.post(f"{url}/v1/fleets/{FLEET}/devices/{device}/telemetry", json=body,
                                headers=headers) as response:  # fmt: skip
            assert response.status == 202, await response.text()

    async with aiohttp.ClientSession() as session:
        for number, requests_of_round in enumerate(requests()):
            if number in on_round:
                await on_round[number]()
            await asyncio.gather(*(post(session, device, readings) for device, readings in requests_of_round))
            await asyncio.sleep(0.05)  # load spread over a few seconds, so the kill lands mid-stream


def uninterrupted(fleet: DeviceFleet, pipeline: Pipeline) -> dict[str, list[Any]]:
    """The same input through one in-process engine that never stops: what the platform must have stored."""
    engine = Engine(compile_pipeline(pipeline, fleet), now_ms=int(time.time() * 1000))
    results: dict[str, list[Any]] = {"aggregates": [], "alerts": [], "commands": []}
    for requests_of_round in requests():
        for device, readings in requests_of_round:
            batch = ReadingBatch(fleet=FLEET, device=device, readings=readings, received_ms=0)
            out = engine.process(batch, int(time.time() * 1000))
            results["aggregates"] += out.aggregates
            results["alerts"] += out.alerts
            results["commands"] += out.commands
    results["aggregates"] += engine.advance(2**62).aggregates
    return results


def independent_temperature_windows() -> dict[tuple[str, int], tuple[int, float, float, float, float, float]]:
    """(device, window start) -> count, min, max, sum, last, p95 of temp_c, from the raw readings sent."""
    found = {}
    for device in DEVICES:
        for start in range(0, SECONDS, 10):
            values = [reading(device, s).metrics["temp_c"] for s in range(start, start + 10)]
            values = [v for v in values if -40 < v < 60]
            p95 = values[0] if len(values) == 1 else statistics.quantiles(values, n=100, method="inclusive")[94]
            found[(device, BASE + start * 1000)] = (len(values), min(values), max(values), sum(values), values[-1], p95)
    return found


async def stored(store_path: Path, pipeline: Pipeline) -> tuple[list[WindowAggregate], list[AlertEvent]]:
    store = SqliteStore(store_path, pipeline.spec.sink.tables, 86400 * 365)
    await store.open()
    try:
        return await store.aggregates(FLEET, PIPELINE), await store.alerts(FLEET, PIPELINE)
    finally:
        await store.close()


async def stored_readings(store_path: Path, pipeline: Pipeline) -> list[tuple[str, int]]:
    store = SqliteStore(store_path, pipeline.spec.sink.tables, 86400 * 365)
    await store.open()
    try:
        pages = [await store.readings(ReadingQuery(FLEET, device, limit=10_000)) for device in DEVICES]
        return [(r.device, r.seq) for page in pages for r in page.items]
    finally:
        await store.close()


async def wait_stored(store_path: Path, pipeline: Pipeline, aggregates: int, alerts: int, timeout: float = 45):
    deadline = time.monotonic() + timeout
    while True:
        found = await stored(store_path, pipeline)
        if len(found[0]) >= aggregates and len(found[1]) >= alerts:
            return found
        assert time.monotonic() < deadline, f"stored {len(found[0])}/{aggregates} aggregates, {len(found[1])}/{alerts}"
        await asyncio.sleep(0.25)


async def commands_sent(platform: RunningPlatform) -> list[tuple[str, bytes]]:
    nc = await platform.connect_nats()
    try:
        js = nc.jetstream()
        sub = await js.pull_subscribe(f"ff.{FLEET}.cmd.>", stream=subjects.commands_stream(FLEET))
        found = []
        while (await sub.consumer_info()).num_pending:
            found += [((m.headers or {})["Nats-Msg-Id"], m.data) for m in await sub.fetch(100, timeout=2)]
        return found
    finally:
        await nc.close()


async def devices_per_replica(platform: RunningPlatform, replicas: int, timeout: float = 15) -> list[set[str]]:
    """The devices each replica's latest checkpoint has seen (waiting until every device is in one)."""
    nc = await platform.connect_nats()
    try:
        store = await nc.jetstream().object_store(bucket_name(FLEET, PIPELINE))
        deadline = time.monotonic() + timeout
        while True:
            seen = []
            for replica in range(replicas):
                data = (await store.get(object_name(replica, replicas))).data
                checkpoint = msgspec.msgpack.decode(data, type=Checkpoint)
                seen.append(set(checkpoint.state.dedupe.get("once", {})))
            if set().union(*seen) == set(DEVICES) or time.monotonic() > deadline:
                return seen
            await asyncio.sleep(0.25)
    finally:
        await nc.close()


def kill_processor(data_dir: Path, replica: int) -> int:
    status = data_dir / "run" / f"processor-{PIPELINE}-{replica}.status.json"
    pid = int(json.loads(status.read_text())["pid"])
    os.kill(pid, signal.SIGKILL)
    return pid


async def restarted(data_dir: Path, replica: int, old_pid: int, timeout: float = 20) -> None:
    status = data_dir / "run" / f"processor-{PIPELINE}-{replica}.status.json"
    deadline = time.monotonic() + timeout
    while not (status.exists() and json.loads(status.read_text() or "{}").get("pid") not in (None, old_pid)):
        assert time.monotonic() < deadline, f"processor replica {replica} was not restarted within {timeout}s"
        await asyncio.sleep(0.1)


def key(a: WindowAggregate) -> tuple[Any, ...]:
    return (a.step, a.group, a.metric, a.window_start_ms)


def test_cold_chain_with_two_replicas_survives_a_processor_kill(tmp_path: Path) -> None:
    fleet_file, pipeline_file, fleet, pipeline = resources(tmp_path, replicas=2)
    expected = uninterrupted(fleet, pipeline)
    assert len(expected["alerts"]) == 2 * len(DEVICES) and len(expected["commands"]) == 2 * len(DEVICES)
    data_dir = tmp_path / "data"
    killed: list[int] = []

    async def kill_mid_window() -> None:
        killed.append(kill_processor(data_dir, replica=0))

    with fleetflow_up(data_dir, fleet_file, pipeline_file) as platform:
        store_path = Path(platform.endpoints["stores"][PIPELINE]["path"])

        async def scenario() -> tuple[Any, ...]:
            await send(platform, on_round={9: kill_mid_window})  # round 9: event time 45-50 s, mid-window
            await restarted(data_dir, 0, killed[0])
            found = await wait_stored(store_path, pipeline, len(expected["aggregates"]), len(expected["alerts"]))
            return found, await commands_sent(platform), await devices_per_replica(platform, 2)

        (aggregates, alerts), commands, per_replica = asyncio.run(scenario())
        output = platform.stop()
    readings = asyncio.run(stored_readings(store_path, pipeline))
    # `fleetflow up` compares stored with accepted readings; the filter and dedupe steps drop some on purpose
    assert "accepted by the gateways: 545 readings" in output, output
    assert len(readings) == len(set(readings)) == len(DEVICES) * (SECONDS - 1)  # minus the -127 °C reading

    # every device's readings were handled by exactly one replica
    assert per_replica[0] and per_replica[1] and not per_replica[0] & per_replica[1]
    assert per_replica[0] | per_replica[1] == set(DEVICES)

    # the stored aggregates and alerts are those of an uninterrupted run, each row once
    assert len({key(a) for a in aggregates}) == len(aggregates)
    assert sorted(aggregates, key=key) == sorted(expected["aggregates"], key=key)
    assert sorted(alerts, key=lambda e: (e.device, e.ts_ms)) == sorted(
        expected["alerts"], key=lambda e: (e.device, e.ts_ms)
    )
    assert sorted((e.device, e.state, (e.ts_ms - BASE) // 1000) for e in alerts) == sorted(
        [(d, "firing", 40) for d in DEVICES] + [(d, "resolved", 60) for d in DEVICES]
    )

    # the stored temperature windows equal those computed independently from the raw readings
    independent = independent_temperature_windows()
    temperature = {(a.group.removeprefix("device="), a.window_start_ms): a for a in aggregates if a.metric == "temp_c"}
    assert set(temperature) == set(independent)
    for where, (count, low, high, total, last, p95) in independent.items():
        a = temperature[where]
        assert (a.count, a.min, a.max, a.last) == (count, low, high, last), where
        assert a.sum == pytest.approx(total) and a.mean == pytest.approx(total / count)
        assert a.percentiles["p95"] == pytest.approx(p95), where

    # one command per box per 20 s cooldown while it is too warm, to its depot's cooler, each sent once
    decoded = [msgspec.json.decode(data, type=Command) for _, data in commands]
    assert len({msg_id for msg_id, _ in commands}) == len(commands) == 2 * len(DEVICES)
    assert sorted((c.source, c.id.split("/")[2], c.device, (c.created_ms - BASE) // 1000) for c in decoded) == sorted(
        (f"pipeline/{PIPELINE}/boost-cooling", d, f"cooler-{d[4]}", s) for d in DEVICES for s in (30, 50)
    )
    assert all(c.params == {"mode": "boost", "cargo_temp_c": 9.0 + ((c.created_ms - BASE) // 1000 % 3) / 10}
               for c in decoded)  # fmt: skip


def test_one_replica_stores_what_two_replicas_store(tmp_path: Path) -> None:
    """The reference the two-replica run above is held to (the in-process engine) is what one replica stores."""
    fleet_file, pipeline_file, fleet, pipeline = resources(tmp_path, replicas=1)
    expected = uninterrupted(fleet, pipeline)
    with fleetflow_up(tmp_path / "data", fleet_file, pipeline_file) as platform:
        store_path = Path(platform.endpoints["stores"][PIPELINE]["path"])

        async def scenario() -> tuple[Any, ...]:
            await send(platform, on_round={})
            found = await wait_stored(store_path, pipeline, len(expected["aggregates"]), len(expected["alerts"]))
            return found, await commands_sent(platform)

        (aggregates, alerts), commands = asyncio.run(scenario())
        platform.stop()
    assert sorted(aggregates, key=key) == sorted(expected["aggregates"], key=key)
    assert sorted(alerts, key=lambda e: (e.device, e.ts_ms)) == sorted(
        expected["alerts"], key=lambda e: (e.device, e.ts_ms)
    )
    assert sorted(msg_id for msg_id, _ in commands) == sorted(c.id for c in expected["commands"])
