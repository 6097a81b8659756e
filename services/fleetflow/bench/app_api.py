"""`fleetflow bench --api`: the application API's speed over a big local store, as the issue states it.

A SQLite store is filled with `readings` readings of `devices` devices (one of them, the busy one, at one reading
per second over the last 24 hours), then the local platform starts on it and the API is asked, over HTTP as an
application would: one device's last 24 hours, the latest values of every device, and alerts published to NATS as
the processor publishes them while `subscribers` clients follow the live event stream."""

import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import nats

from fleetflow.api import DeviceFleet, Pipeline
from fleetflow.bench.procstats import percentile
from fleetflow.local.platform import LocalPlatform
from fleetflow.local.resources import ResourceSet
from fleetflow.runtime import codec, subjects
from fleetflow.runtime.codec import AlertEvent, Reading, ReadingBatch
from fleetflow.writer.stores.sqlite import SqliteStore

FLEET = "apibench"
BUSY = "dev-00000"
DAY_MS = 86_400_000
CHUNK = 200_000  # readings per store write while filling
REPEAT = 5
ALERTS = 20
TARGETS = {"readings_24h_s": 1.0, "latest_s": 0.2, "alert_s": 1.0}


@dataclass(frozen=True)
class ApiBenchOptions:
    readings: int = 10_000_000
    devices: int = 10_000
    subscribers: int = 100
    data_dir: Path | None = None


def resources() -> ResourceSet:
    fleet = DeviceFleet.model_validate({"metadata": {"name": FLEET}, "spec": {"streams": {"maxAge": "1h"}}})
    pipeline = Pipeline.model_validate({"metadata": {"name": FLEET}, "spec": {"fleetRef": {"name": FLEET},
                                        "sink": {"kind": "sqlite", "ttl": "30d"}}})  # fmt: skip
    return ResourceSet({FLEET: fleet}, {FLEET: pipeline})


def device_name(index: int) -> str:
    return f"dev-{index:05d}"


def _batches(options: ApiBenchOptions, now_ms: int) -> Any:
    """Chunks of ReadingBatch: the busy device's day at 1/s, then the rest spread evenly over the others."""
    busy = min(86_400, options.readings)
    start = now_ms - DAY_MS + 1000

    def busy_reading(seq: int) -> Reading:
        return Reading(seq=seq, ts=start + seq * 1000, metrics={"temp": 4.0 + seq % 10 / 10, "rh": 60.0})

    yield [ReadingBatch(fleet=FLEET, device=BUSY, received_ms=now_ms,
                        readings=[busy_reading(s) for s in range(i, min(i + 10_000, busy))])
           for i in range(0, busy, 10_000)]  # fmt: skip
    others = max(options.devices - 1, 1)
    each = max((options.readings - busy) // others, 1) if options.readings > busy else 0
    step = DAY_MS // max(each, 1)
    chunk: list[ReadingBatch] = []
    size = 0
    for index in range(1, options.devices):
        chunk.append(ReadingBatch(fleet=FLEET, device=device_name(index), received_ms=now_ms,
                                  readings=[Reading(seq=s, ts=now_ms - DAY_MS + s * step, metrics={"temp": 5.0})
                                            for s in range(each)]))  # fmt: skip
        size += each
        if size >= CHUNK:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


@dataclass(frozen=True)
class Filled:
    readings: int
    seconds: float
    at_ms: int  # "now" of the fill: the busy device's day ends here


async def fill(path: Path, pipeline: Pipeline, options: ApiBenchOptions) -> Filled:
    store = SqliteStore(path, pipeline.spec.sink.tables, pipeline.spec.sink.ttl_seconds)
    await store.open()
    began, written, now_ms = time.perf_counter(), 0, int(time.time() * 1000)
    try:
        for chunk in _batches(options, now_ms):
            await store.write_readings(chunk)
            written += sum(len(b.readings) for b in chunk)
    finally:
        await store.close()
    return Filled(written, time.perf_counter() - began, now_ms)


async def timed(call: Callable[[], Awaitable[int]]) -> tuple[list[float], int]:
    """Seconds of each of REPEAT calls, and what the last one counted."""
    seconds, counted = [], 0
    for _ in range(REPEAT):
        began = time.perf_counter()
        counted = await call()
        seconds.append(time.perf_counter() - began)
    return seconds, counted


async def _get(session: aiohttp.ClientSession, url: str, key: str, items: str) -> int:
    async with session.get(url, headers={"Authorization": f"Bearer {key}"}) as response:
        body = await response.json()
        if response.status != 200:
            raise RuntimeError(f"GET {url}: {response.status} {body}")
        return len(body[items])


async def subscriber(session: aiohttp.ClientSession, url: str, key: str, opened: asyncio.Event,
                     latencies: list[float], count: int) -> int:  # fmt: skip
    """Follow the alert stream until `count` alerts came; each one's delay from publish to receipt is kept."""
    got = 0
    async with session.get(url, headers={"Authorization": f"Bearer {key}"}) as response:
        if response.status != 200:
            raise RuntimeError(f"GET {url}: {response.status} {await response.text()}")
        await response.content.readline()  # the opening id
        opened.set()
        while got < count:
            line = (await response.content.readline()).decode()
            if line.startswith("data: "):
                sent = json.loads(line[6:])["values"]["sentMs"]
                latencies.append(time.time() - sent / 1000)
                got += 1
    return got


async def follow_alerts(platform: LocalPlatform, api: str, key: str, subscribers: int) -> dict[str, Any]:
    latencies: list[float] = []
    url = f"{api}/v1/fleets/{FLEET}/events?kinds=alerts"
    timeout = aiohttp.ClientTimeout(total=None, sock_read=60)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:
        opened = [asyncio.Event() for _ in range(subscribers)]
        tasks = [asyncio.create_task(subscriber(session, url, key, o, latencies, ALERTS)) for o in opened]
        await asyncio.wait_for(asyncio.gather(*(o.wait() for o in opened)), 60)
        login = platform.nats.login()
        nc = await nats.connect(platform.nats.url, user=login.user, password=login.password)
        try:
            for i in range(ALERTS):
                event = AlertEvent(fleet=FLEET, pipeline=FLEET, rule="hot", device=device_name(i), state="firing",
                                   severity="warning", ts_ms=int(time.time() * 1000),
                                   values={"sentMs": time.time() * 1000}, message="bench")  # fmt: skip
                await nc.jetstream().publish(subjects.alert_subject(FLEET, event.device), codec.encode(event))
                await asyncio.sleep(0.05)
        finally:
            await nc.close()
        received = await asyncio.wait_for(asyncio.gather(*tasks), 60)
    ordered = sorted(latencies)
    return {"subscribers": subscribers, "alerts": ALERTS, "received": sum(received),
            "p50_s": percentile(ordered, 0.5), "p99_s": percentile(ordered, 0.99), "max_s": ordered[-1]}  # fmt: skip


def create_key(data_dir: Path) -> str:
    done = subprocess.run([sys.executable, "-m", "fleetflow.cli", "api-key", "create", FLEET, "--scope", "read",
                           "--name", "bench", "--data-dir", str(data_dir)],
                          capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
    return done.stdout.strip()


async def measure(platform: LocalPlatform, options: ApiBenchOptions, filled: Filled) -> dict[str, Any]:
    key = create_key(platform.data_dir)
    api = platform.endpoints()["fleets"][FLEET]["api"]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        since = filled.at_ms - DAY_MS  # the day before the fill, which the busy device filled at 1/s
        readings_url = f"{api}/v1/fleets/{FLEET}/devices/{BUSY}/readings?from={since}&limit=100000"
        day, day_count = await timed(lambda: _get(session, readings_url, key, "readings"))
        devices_url = f"{api}/v1/fleets/{FLEET}/devices?limit=10000"
        latest, latest_count = await timed(lambda: _get(session, devices_url, key, "devices"))
    alerts = await follow_alerts(platform, api, key, options.subscribers)
    return {
        "readings_stored": filled.readings,
        "fill_s": round(filled.seconds, 1),
        "devices": options.devices,
        "readings_24h": {"count": day_count, "median_s": statistics.median(day), "max_s": max(day)},
        "latest": {"count": latest_count, "median_s": statistics.median(latest), "max_s": max(latest)},
        "alerts": alerts,
    }


async def run_api_bench(options: ApiBenchOptions) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="fleetflow-apibench-") as scratch:
        platform = LocalPlatform(resources(), options.data_dir or Path(scratch))
        pipeline = platform.resources.pipelines[FLEET]
        filled = await fill(platform.store_path(pipeline), pipeline, options)
        try:
            await platform.start()
            return await measure(platform, options, filled)
        finally:
            await platform.stop()


def healthy(report: dict[str, Any]) -> bool:
    """Every answer complete and within the issue's targets."""
    alerts = report["alerts"]
    return (
        report["readings_24h"]["count"] == min(86_400, report["readings_stored"])
        and report["latest"]["count"] == min(report["devices"], 10_000)
        and alerts["received"] == alerts["subscribers"] * alerts["alerts"]
        and report["readings_24h"]["median_s"] < TARGETS["readings_24h_s"]
        and report["latest"]["median_s"] < TARGETS["latest_s"]
        and alerts["max_s"] < TARGETS["alert_s"]
    )


def table(report: dict[str, Any]) -> str:
    day, latest, alerts = report["readings_24h"], report["latest"], report["alerts"]
    return "\n".join([
        f"fleetflow bench --api: {report['readings_stored']:,} readings of {report['devices']:,} devices in SQLite "
        f"(filled in {report['fill_s']} s)",
        f"  one device's last 24 h ({day['count']:,} readings): median {day['median_s']:.3f} s, max "
        f"{day['max_s']:.3f} s (target < 1 s)",
        f"  latest values of {latest['count']:,} devices: median {latest['median_s']:.3f} s, max "
        f"{latest['max_s']:.3f} s (target < 0.2 s)",
        f"  {alerts['alerts']} alerts to {alerts['subscribers']} live subscribers: {alerts['received']:,} received, "
        f"p50 {alerts['p50_s']:.3f} s, p99 {alerts['p99_s']:.3f} s, max {alerts['max_s']:.3f} s (target < 1 s)",
        f"  within the targets: {'yes' if healthy(report) else 'NO'}",
    ])  # fmt: skip
