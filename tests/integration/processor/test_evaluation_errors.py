"""A real processor process: expressions that fail on some readings are counted on /metrics by pipeline, step
and reason (each series present at 0 from the start), logged once rather than per reading, and the pipeline
keeps going, with each step kind's documented fate for the reading."""

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import nats
import pytest
from nats.aio.client import Client

from fleetflow.api import DeviceFleet, Pipeline
from fleetflow.local.processes import ServiceProcess
from fleetflow.local.progress import scrape_samples
from fleetflow.runtime import codec, config, jetstream, subjects
from fleetflow.runtime.codec import Reading, ReadingBatch
from tests.support.natsserver import NatsServer

FLEET = "reefer"
BASE = int(time.time() * 1000)
STEPS = [
    # Readings without temp cannot be judged: dropped (and counted).
    {"name": "sane", "filter": {"condition": "metrics.temp > -40.0"}},
    # seq % 2 is 0 for even sequence numbers: that metric stays unset, the reading goes on.
    {"name": "calc", "derive": {"metrics": {"every_other": "100 / (seq % 2)", "temp_f": "metrics.temp * 9 / 5 + 32"}}},
]


def batches() -> list[ReadingBatch]:
    """Ten readings of one device, two per batch; seq 3 and 4 have no temp."""
    readings = [Reading(seq, BASE + seq, {"temp": 5.0} if seq not in (3, 4) else {"door": 1.0}) for seq in range(10)]
    return [
        ReadingBatch(fleet=FLEET, device="box-1", readings=readings[i : i + 2], received_ms=BASE)
        for i in range(0, 10, 2)
    ]


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[Client]:
    client = await nats.connect(nats_server.url)
    yield client
    await client.close()


@pytest.fixture
async def processor(nats_server: NatsServer, nc: Client, tmp_path: Path) -> AsyncIterator[ServiceProcess]:
    fleet = DeviceFleet.model_validate({"metadata": {"name": FLEET}})
    pipeline = Pipeline.model_validate({"metadata": {"name": "chain"}, "spec": {"fleetRef": {"name": FLEET},
                                                                                "steps": STEPS}})  # fmt: skip
    js = nc.jetstream()
    await jetstream.provision_fleet(js, fleet)
    await jetstream.provision_pipeline(js, fleet, pipeline)
    service = ServiceProcess("processor-chain-0", "processor",
                             config.processor_config(fleet, pipeline, nats_url=nats_server.url, ops_port=0),
                             tmp_path / "run")  # fmt: skip
    service.spawn()
    try:
        await service.wait_ready()
        yield service
    finally:
        await service.stop()


async def errors_on_metrics(service: ServiceProcess) -> dict[tuple[str, str], float]:
    samples = await scrape_samples(f"http://127.0.0.1:{service.status['ops_port']}/metrics")
    assert samples is not None, "the processor's /metrics did not answer"
    return {
        (s.labels["step"], s.labels["reason"]): s.value
        for s in samples
        if s.name == "fleetflow_processor_evaluation_errors_total" and s.labels["pipeline"] == "chain"
    }


async def processed_readings(nc: Client, count: int, timeout: float = 10.0) -> list[Reading]:
    js = nc.jetstream()
    sub = await js.pull_subscribe(f"ff.{FLEET}.pl.chain.readings.>", stream=subjects.pipeline_stream(FLEET, "chain"))
    found: list[Reading] = []
    deadline = time.monotonic() + timeout
    while len(found) < count:
        assert time.monotonic() < deadline, f"only {len(found)} of {count} processed readings after {timeout}s"
        try:
            msgs = await sub.fetch(10, timeout=0.5)
        except (TimeoutError, nats.errors.TimeoutError):
            continue
        found += [r for m in msgs for r in msgspec.json.decode(m.data, type=ReadingBatch).readings]
    await sub.unsubscribe()
    return found


async def test_runtime_errors_are_counted_by_step_and_reason_and_the_pipeline_keeps_going(
    nc: Client, processor: ServiceProcess
) -> None:
    before = await errors_on_metrics(processor)
    assert before[("sane", "missing_field")] == 0  # exported at 0 before any error, so rate() sees the first
    assert before[("calc", "division_by_zero")] == 0
    assert ("calc", "not_a_number") in before and ("sane", "not_boolean") in before

    js = nc.jetstream()
    for batch in batches():
        await js.publish(subjects.telemetry_subject(FLEET, batch.device), codec.encode(batch))

    kept = await processed_readings(nc, 8)
    assert sorted(r.seq for r in kept) == [0, 1, 2, 5, 6, 7, 8, 9]  # the filter dropped 3 and 4, nothing else
    assert {r.seq: "every_other" in r.metrics for r in kept} == {s: s % 2 == 1 for s in (0, 1, 2, 5, 6, 7, 8, 9)}
    assert all(r.metrics["temp_f"] == 41.0 for r in kept)  # `* 9 / 5 + 32` as doubles, on every reading

    deadline = time.monotonic() + 10
    while (found := await errors_on_metrics(processor))[("calc", "division_by_zero")] < 4:
        assert time.monotonic() < deadline, f"errors on /metrics: {found}"
        await asyncio.sleep(0.1)
    assert {k: v for k, v in found.items() if v} == {("sane", "missing_field"): 2, ("calc", "division_by_zero"): 4}

    logged = [json.loads(line) for line in processor.log_file.read_text().splitlines() if line.startswith("{")]
    first = [e for e in logged if e["event"] == "expression evaluation failed"]
    assert sorted((e["step"], e["reason"]) for e in first) == [("calc", "division_by_zero"), ("sane", "missing_field")]
    assert "device box-1 seq 3:" in next(e["example"] for e in first if e["step"] == "sane")
