"""The processor against a real nats-server: outputs on their subjects with stable ids, and crash recovery."""

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import nats
import nats.js.errors
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from opentelemetry.metrics import get_meter

from fleetflow.api import DeviceFleet, Pipeline
from fleetflow.processor.compiler import compile_pipeline
from fleetflow.processor.runner import Runner
from fleetflow.runtime import codec, jetstream, pull, subjects
from fleetflow.runtime.codec import AlertEvent, Command, Reading, ReadingBatch, WindowAggregate
from tests.support.natsserver import NatsServer

# Recent, so that commands are within their TTL (below) however long the rest of the suite runs between this
# module's import, when BASE is taken, and its tests.
BASE = (int(time.time() * 1000) // 60_000 - 2) * 60_000
RETRY_MS = BASE + 1
STEPS: list[dict[str, Any]] = [
    {"name": "once", "dedupe": {}},
    {"name": "sane", "filter": {"condition": "metrics.temp > -40.0"}},
    {"name": "fahrenheit", "derive": {"metrics": {"temp_f": "metrics.temp * 9.0 / 5.0 + 32.0"}}},
    {"name": "health", "window": {"size": "10s", "metrics": ["temp"], "percentiles": [50]}},
    {"name": "too-hot", "alert": {"condition": "metrics.temp > 8.0", "clear": "metrics.temp < 6.0", "for": "4s"}},
    {
        "name": "cool",
        "command": {
            "condition": "metrics.temp > 8.0",
            "command": "set_cooling",
            "target": "'cooler-' + device",
            "cooldown": "15s",
            "ttl": "6h",
        },
    },
]


def resources(fleet_name: str, replicas: int = 1) -> tuple[DeviceFleet, Pipeline]:
    fleet = DeviceFleet.model_validate({"metadata": {"name": fleet_name}, "spec": {"streams": {"partitions": 4}}})
    pipeline = Pipeline.model_validate(
        {
            "metadata": {"name": "chain"},
            "spec": {"fleetRef": {"name": fleet_name}, "steps": STEPS, "processor": {"replicas": replicas}},
        }
    )
    return fleet, pipeline


def temperature(second: int) -> float:
    """Over 8 between 20 s and 40 s, below 6 otherwise; -50 (filtered out) at 34 s."""
    if second == 34:
        return -50.0
    return 9.0 + (second % 3) / 10 if 20 <= second < 40 else 4.0 + (second % 5) / 10


def inputs(fleet: str, devices: list[str]) -> list[ReadingBatch]:
    """Two-second readings of each device over a minute, two per batch, with one retried batch."""
    batches = []
    for second in range(0, 60, 4):
        for device in devices:
            readings = [Reading(s, BASE + s * 1000, {"temp": temperature(s)}) for s in (second, second + 2)]
            batches.append(ReadingBatch(fleet=fleet, device=device, readings=readings, received_ms=BASE))
    # a device retry with a different batching: seq 10 (sent with 8) again, together with 12 (sent with 14)
    first = devices[0]
    resent = [r for b in batches if b.device == first for r in b.readings if r.seq in (10, 12)]
    batches.insert(4 * len(devices), ReadingBatch(fleet=fleet, device=first, readings=resent, received_ms=RETRY_MS))
    return batches


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[Client]:
    client = await nats.connect(nats_server.url)
    yield client
    await client.close()


async def provision(js: JetStreamContext, fleet: DeviceFleet, pipeline: Pipeline) -> None:
    await jetstream.provision_fleet(js, fleet)
    await jetstream.provision_pipeline(js, fleet, pipeline)


async def publish(js: JetStreamContext, batches: list[ReadingBatch]) -> int:
    """Publish as the gateway does; the retried batch has its own id, so only the dedupe step can catch it."""
    last = 0
    for b in batches:
        retry = "-retry" if b.received_ms == RETRY_MS else ""
        msg_id = subjects.batch_id(b.fleet, b.device, b.readings) + retry
        ack = await js.publish(subjects.telemetry_subject(b.fleet, b.device), codec.encode(b),
                               headers={"Nats-Msg-Id": msg_id})  # fmt: skip
        last = ack.seq
    return last


def runner(js: JetStreamContext, fleet: DeviceFleet, pipeline: Pipeline, replica: int = 0) -> Runner:
    return Runner(js, fleet, pipeline, compile_pipeline(pipeline, fleet), replica, get_meter("test"),
                  fetch_batch=7, checkpoint_interval=3600)  # fmt: skip


async def wait_applied(runners: list[Runner], seq: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while max(r.engine.state.applied_seq for r in runners) < seq:
        assert time.monotonic() < deadline, f"inputs up to {seq} not applied in {timeout}s"
        await asyncio.sleep(0.02)


async def stored(js: JetStreamContext, stream: str, subject: str) -> list[tuple[str, str, bytes]]:
    """Every message of `stream` on `subject` as (subject, Nats-Msg-Id, data), in stream order."""
    sub = await js.pull_subscribe(subject, stream=stream)
    found: list[tuple[str, str, bytes]] = []
    while (await sub.consumer_info()).num_pending:
        for msg in await sub.fetch(100, timeout=2):
            found.append((msg.subject, (msg.headers or {}).get("Nats-Msg-Id", ""), msg.data))
    await sub.unsubscribe()
    return found


async def run_until(js: JetStreamContext, runners: list[Runner], seq: int) -> None:
    stop = asyncio.Event()
    for r in runners:
        await r.start()
    tasks = [asyncio.create_task(r.run(stop)) for r in runners]
    await wait_applied(runners, seq)
    stop.set()
    await asyncio.gather(*tasks)


def by_record(messages: list[tuple[str, str, bytes]]) -> dict[str, list[tuple[str, str, bytes]]]:
    grouped: dict[str, list[tuple[str, str, bytes]]] = {}
    for message in messages:
        grouped.setdefault(message[0].split(".")[4], []).append(message)
    return grouped


async def test_outputs_go_to_their_subjects_with_derived_ids(nc: Client) -> None:
    js = nc.jetstream()
    fleet, pipeline = resources("reefer")
    await provision(js, fleet, pipeline)
    last = await publish(js, inputs("reefer", ["box-1", "box-2"]))
    await run_until(js, [runner(js, fleet, pipeline)], last)

    out = by_record(await stored(js, subjects.pipeline_stream("reefer", "chain"), "ff.reefer.pl.chain.>"))
    readings = [msgspec.json.decode(m[2], type=ReadingBatch) for m in out["readings"]]
    seqs = sorted((b.device, r.seq) for b in readings for r in b.readings)
    assert len(seqs) == len(set(seqs)) == 2 * 29  # 30 readings each, minus the filtered one; retry deduped
    assert all("temp_f" in r.metrics for b in readings for r in b.readings)
    assert all(m[1].startswith("chain/readings/reefer/") for m in out["readings"])

    aggregates = [msgspec.json.decode(m[2], type=WindowAggregate) for m in out["aggregates"]]
    box1 = [a for a in aggregates if a.group == "device=box-1"]
    # the last window [50 s, 60 s) stays open: nothing newer came and the idle timeout is a minute
    assert [(a.window_start_ms - BASE, a.count) for a in box1] == [(0, 5), (10000, 5), (20000, 5), (30000, 4),
                                                                   (40000, 5)]  # fmt: skip
    assert {m[0] for m in out["aggregates"]} == {"ff.reefer.pl.chain.aggregates.box-1",
                                                 "ff.reefer.pl.chain.aggregates.box-2"}  # fmt: skip
    assert out["aggregates"][0][1] == f"chain/aggregates/health/{box1[0].group}/temp/{BASE}"

    alerts = [msgspec.json.decode(m[2], type=AlertEvent) for m in out["alerts"]]
    assert sorted((a.device, a.state, (a.ts_ms - BASE) // 1000) for a in alerts) == [
        ("box-1", "firing", 24), ("box-1", "resolved", 40), ("box-2", "firing", 24), ("box-2", "resolved", 40),
    ]  # fmt: skip
    on_alert_subject = await stored(js, subjects.alerts_stream("reefer"), "ff.reefer.alert.>")
    assert sorted(m[1] for m in on_alert_subject) == sorted(m[1] for m in out["alerts"])

    commands = await stored(js, subjects.commands_stream("reefer"), "ff.reefer.cmd.>")
    decoded = [msgspec.json.decode(m[2], type=Command) for m in commands]
    assert sorted((c.device, (c.created_ms - BASE) // 1000) for c in decoded) == [
        ("cooler-box-1", 20), ("cooler-box-1", 36), ("cooler-box-2", 20), ("cooler-box-2", 36),
    ]  # fmt: skip
    assert all(
        m[1] == c.id and m[0] == subjects.command_subject("reefer", c.device)
        for m, c in zip(commands, decoded, strict=True)
    )


async def test_a_crash_mid_window_replays_to_the_same_outputs(nc: Client) -> None:
    js = nc.jetstream()
    batches = {name: inputs(name, ["box-1", "box-2", "box-3"]) for name in ("steady", "crashy")}

    steady_fleet, steady = resources("steady")
    await provision(js, steady_fleet, steady)
    await run_until(js, [runner(js, steady_fleet, steady)], await publish(js, batches["steady"]))

    fleet, pipeline = resources("crashy")
    await provision(js, fleet, pipeline)
    first = runner(js, fleet, pipeline)
    await first.start()
    stop = asyncio.Event()
    task = asyncio.create_task(first.run(stop))
    await wait_applied([first], await publish(js, batches["crashy"][:20]))
    await first.checkpoint()
    await wait_applied([first], await publish(js, batches["crashy"][20:31]))  # applied, acked, not checkpointed
    task.cancel()  # the crash: no final checkpoint, nothing drained
    with pytest.raises(asyncio.CancelledError):
        await task

    last = await publish(js, batches["crashy"][31:])
    second = runner(js, fleet, pipeline)
    replayed = await second.start()
    assert replayed >= 11
    stop = asyncio.Event()
    task = asyncio.create_task(second.run(stop))
    await wait_applied([second], last)
    stop.set()
    await task

    def normal(messages: list[tuple[str, str, bytes]], name: str) -> list[tuple[str, str, bytes]]:
        return sorted(
            (s.replace(name, "X"), i.replace(name, "X"), d.replace(name.encode(), b"X")) for s, i, d in messages
        )

    for stream, subject in [
        (subjects.pipeline_stream, "ff.{}.pl.chain.>"),
        (lambda f, _: subjects.alerts_stream(f), "ff.{}.alert.>"),
        (lambda f, _: subjects.commands_stream(f), "ff.{}.cmd.>"),
    ]:
        want = normal(await stored(js, stream("steady", "chain"), subject.format("steady")), "steady")
        got = normal(await stored(js, stream("crashy", "chain"), subject.format("crashy")), "crashy")
        assert got == want, subject


async def test_two_replicas_split_devices_and_match_one(nc: Client) -> None:
    js = nc.jetstream()
    devices = [f"box-{i}" for i in range(8)]
    one_fleet, one = resources("single")
    await provision(js, one_fleet, one)
    await run_until(js, [runner(js, one_fleet, one)], await publish(js, inputs("single", devices)))

    two_fleet, two = resources("double", replicas=2)
    await provision(js, two_fleet, two)
    replicas = [runner(js, two_fleet, two, 0), runner(js, two_fleet, two, 1)]
    last = await publish(js, inputs("double", devices))
    stop = asyncio.Event()
    for r in replicas:
        await r.start()
    tasks = [asyncio.create_task(r.run(stop)) for r in replicas]
    deadline = time.monotonic() + 10
    while sum(len(seen.seqs) for r in replicas for seen in r.engine.state.dedupe.get("once", {}).values()) < 240:
        assert time.monotonic() < deadline, "not every reading of the 8 devices was seen in 10 s"
        await asyncio.sleep(0.02)
    stop.set()
    await asyncio.gather(*tasks)
    assert max(r.engine.state.applied_seq for r in replicas) <= last
    handled = [set(r.engine.state.alerts["too-hot"]) for r in replicas]
    assert handled[0] and handled[1] and not handled[0] & handled[1]
    assert handled[0] | handled[1] == set(devices)

    def normal(messages: list[tuple[str, str, bytes]], name: str) -> list[tuple[str, str, bytes]]:
        return sorted(
            (s.replace(name, "X"), i.replace(name, "X"), d.replace(name.encode(), b"X")) for s, i, d in messages
        )

    want = normal(await stored(js, subjects.pipeline_stream("single", "chain"), "ff.single.pl.chain.>"), "single")
    got = normal(await stored(js, subjects.pipeline_stream("double", "chain"), "ff.double.pl.chain.>"), "double")
    assert got == want


async def test_outputs_carry_the_trace_of_their_input(nc: Client) -> None:
    js = nc.jetstream()
    fleet, pipeline = resources("traced")
    await provision(js, fleet, pipeline)
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    batch = ReadingBatch(fleet="traced", device="box-1", readings=[Reading(1, BASE, {"temp": 9.0})], received_ms=BASE)
    headers = {"Nats-Msg-Id": "traced/box-1/1-1", "traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"}
    ack = await js.publish(subjects.telemetry_subject("traced", "box-1"), codec.encode(batch), headers=headers)
    await run_until(js, [runner(js, fleet, pipeline)], ack.seq)

    sub = await js.pull_subscribe("ff.traced.pl.chain.readings.>", stream=subjects.pipeline_stream("traced", "chain"))
    [output] = await sub.fetch(1, timeout=2)
    assert output.headers is not None
    assert output.headers["traceparent"].split("-")[1] == trace_id
    assert output.headers["Fleetflow-Record"] == "readings"


async def test_deliveries_a_failed_fetch_lost_are_applied_before_later_inputs(
    nc: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """nats-py drops what a fetch had received when the fetch then fails (a 503 while nats-server shuts down).
    The server redelivers those inputs only after ack_wait, behind later ones: they must not be skipped then as
    already applied, so every input still has its output."""
    js = nc.jetstream()
    fleet = DeviceFleet.model_validate({"metadata": {"name": "lossy"}, "spec": {"streams": {"partitions": 1}}})
    pipeline = Pipeline.model_validate({"metadata": {"name": "chain"},
                                        "spec": {"fleetRef": {"name": "lossy"}, "delivery": {"ackWait": "1s"}}})  # fmt: skip
    await provision(js, fleet, pipeline)
    batches = [ReadingBatch(fleet="lossy", device="d-1", readings=[Reading(s, BASE + s, {"t": 1.0})], received_ms=BASE)
               for s in range(6)]  # fmt: skip
    await publish(js, batches[:3])
    real_fetch = pull.fetch
    failed = False

    async def fetch_failing_once(sub: JetStreamContext.PullSubscription, *args: Any, **kwargs: Any) -> list[Msg]:
        nonlocal failed
        if failed:
            return await real_fetch(sub, *args, **kwargs)
        failed = True
        await real_fetch(sub, *args, **kwargs)  # the server delivers inputs 1-3 ...
        await publish(js, batches[3:])  # ... later inputs arrive ...
        raise nats.js.errors.ServiceUnavailableError  # ... and the fetch fails, dropping what it had received

    monkeypatch.setattr(pull, "fetch", fetch_failing_once)  # the fetch the runner uses
    runners = [runner(js, fleet, pipeline)]
    stop = asyncio.Event()
    await runners[0].start()
    task = asyncio.create_task(runners[0].run(stop))
    await wait_applied(runners, 6)
    stop.set()
    await task
    out = await stored(js, subjects.pipeline_stream("lossy", "chain"), "ff.lossy.pl.chain.readings.>")
    assert [msgspec.json.decode(m[2], type=ReadingBatch).readings[0].seq for m in out] == list(range(6))
    assert failed
