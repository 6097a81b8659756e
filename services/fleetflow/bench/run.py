"""Running one benchmark: the local platform, the device load, the measurements, the transport baseline."""

import asyncio
import os
import sqlite3
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleetflow.api import DeviceFleet, Pipeline
from fleetflow.bench.baseline import BaselineResult, transport_baseline
from fleetflow.bench.load import BodyMaker, LoadResult, batch_body, plain_body, run_load
from fleetflow.bench.procstats import ProcessSample, percentile, sample
from fleetflow.bench.readings import generated_devices
from fleetflow.local.platform import LocalPlatform
from fleetflow.local.progress import scrape, stored_readings
from fleetflow.local.resources import ResourceSet, load_resources
from fleetflow.runtime import codec, credentials

FLEET = "bench"
STORED_METRIC = "fleetflow_writer_readings_stored_total"
REMOVED_METRIC = "fleetflow_processor_readings_removed_total"
# What an acknowledged reading survives, per profile: JetStream fsyncs its files every 2 minutes by default
# (a power cut can lose what the last 2 minutes acknowledged; a crash of nats-server cannot) or before every
# acknowledgement; the writer's SQLite commits with synchronous=FULL in both.
DURABILITY = {
    "default": "JetStream sync every 2 min (nats-server default), SQLite synchronous=FULL",
    "strict": "JetStream sync_interval always (fsync before every ack), SQLite synchronous=FULL",
}


@dataclass(frozen=True)
class BenchOptions:
    devices: int = 200
    batch: int = 100
    protocol: str = "http"
    duration: float = 60.0
    warmup: float = 5.0
    rate: float | None = None  # readings/s over all devices; None is as fast as the platform answers
    processors: int = 1
    baseline_seconds: float = 5.0
    data_dir: Path | None = None
    cassandra: str | None = None  # host:port of an external Cassandra
    pipeline_paths: tuple[Path, ...] = ()  # files or dirs of a user's or example's fleet and pipeline; () no steps
    pipeline_name: str | None = None  # which pipeline of pipeline_paths, when they hold several
    durability: str = "default"  # a key of DURABILITY


class BenchSetupError(ValueError):
    """The bench cannot run what it was given; the message says what and what it accepts."""


def user_pipeline(paths: Sequence[Path], name: str | None = None) -> tuple[DeviceFleet, Pipeline]:
    """The pipeline in `paths` (files or directories), the one there or the one called `name`, and its fleet;
    BenchSetupError if that does not single one out, or its fleet is not there."""
    given = " ".join(str(path) for path in paths)
    resources = load_resources(list(paths))
    found = ", ".join(sorted(resources.pipelines)) or "none"
    if name is not None:
        if name not in resources.pipelines:
            raise BenchSetupError(f"--pipeline-name {name!r}: no such pipeline in {given}; found {found}")
        pipeline = resources.pipelines[name]
    elif len(resources.pipelines) == 1:
        [pipeline] = resources.pipelines.values()
    else:
        raise BenchSetupError(
            f"--pipeline {given}: found pipelines {found}; give files or a directory with exactly one, "
            "or pick one with --pipeline-name"
        )
    if pipeline.fleet not in resources.fleets:
        raise BenchSetupError(
            f"--pipeline {given}: pipeline {pipeline.name} belongs to fleet {pipeline.fleet!r}, which is not "
            "among them; give its DeviceFleet too"
        )
    return resources.fleets[pipeline.fleet], pipeline


def bench_resources(options: BenchOptions) -> ResourceSet:
    fleet_spec: dict[str, Any] = {}
    pipeline_spec: dict[str, Any] = {}
    if options.pipeline_paths:  # renamed to the bench's fleet; its devices, labels and steps as they are
        user_fleet, user = user_pipeline(options.pipeline_paths, options.pipeline_name)
        fleet_spec, pipeline_spec = user_fleet.to_k8s()["spec"], user.to_k8s()["spec"]
        fleet_spec.pop("sites", None)  # the bench runs the centre alone: no edge site, none of their pipelines
    fleet = DeviceFleet.model_validate(
        {
            "metadata": {"name": FLEET},
            "spec": {
                **fleet_spec,
                "gateway": {
                    **fleet_spec.get("gateway", {}),
                    "maxBatchReadings": max(1000, options.batch),
                    "maxBodyBytes": 16 * 1024 * 1024,
                },
                "streams": {**fleet_spec.get("streams", {}), "maxAge": "1h", "maxBytes": "6Gi", "partitions": 4},
            },
        }
    )
    sink: dict[str, Any] = {"kind": "sqlite", "ttl": "1d"}
    if options.cassandra:
        host, _, port = options.cassandra.partition(":")
        sink = {
            "kind": "cassandra",
            "ttl": "1d",
            "cassandra": {
                "contactPoints": [host],
                "port": int(port or 9042),
                "localDc": "datacenter1",
                "keyspace": "fleetflow_bench",
                "replication": {"datacenter1": 1},
                "consistency": "LOCAL_ONE",
            },
        }
    pipeline = Pipeline.model_validate(
        {
            "metadata": {"name": FLEET},
            "spec": {
                **pipeline_spec,
                "fleetRef": {"name": FLEET},
                "sink": sink,
                "processor": {"replicas": options.processors},
                "writer": {"batchMessages": 512},
            },
        }
    )
    return ResourceSet({FLEET: fleet}, {FLEET: pipeline})


@dataclass
class Window:
    """Counters and CPU at the start and the end of the measured window."""

    stored: float
    cpu: dict[str, ProcessSample]
    wall_ms: int


@dataclass
class BenchResult:
    options: BenchOptions
    load: LoadResult
    start: Window
    end: Window
    lag_at_end: int
    stored_total: int
    store_latencies_ms: dict[str, float]
    peak_rss: dict[str, int]
    baseline: BaselineResult
    cores: int
    removed: int  # readings the pipeline's steps removed (filtered out, duplicates): never stored
    load_average: tuple[float, float, float]


async def _window(platform: LocalPlatform) -> Window:
    writer = platform.service(f"writer-{FLEET}")
    stored = (await scrape(f"http://127.0.0.1:{writer.status['ops_port']}/metrics") or {}).get(STORED_METRIC, 0.0)
    return Window(stored, _cpu(platform), int(time.time() * 1000))


def _cpu(platform: LocalPlatform) -> dict[str, ProcessSample]:
    pids = {s.name: s.process.pid for s in platform.services if s.process and s.process.poll() is None}
    if platform.nats.process:
        pids["nats-server"] = platform.nats.process.pid
    pids["load generator"] = os.getpid()
    return {name: sample(pid) for name, pid in pids.items()}


def _store_latencies(platform: LocalPlatform, start_ms: int, end_ms: int) -> dict[str, float]:
    """Device timestamp to stored row, over the readings sent in the measured window (SQLite only)."""
    pipeline = platform.resources.pipelines[FLEET]
    if pipeline.spec.sink.kind != "sqlite":
        return {}
    with sqlite3.connect(f"file:{platform.store_path(pipeline)}?mode=ro", uri=True) as db:
        sql = f"SELECT stored_ms - ts FROM {pipeline.spec.sink.tables.readings} WHERE fleet = ? AND ts BETWEEN ? AND ?"
        values = sorted(float(row[0]) for row in db.execute(sql, (FLEET, start_ms, end_ms)))
    return {name: percentile(values, q) for name, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))}


async def run_bench(options: BenchOptions) -> BenchResult:
    with tempfile.TemporaryDirectory(prefix="fleetflow-bench-") as scratch:
        platform = LocalPlatform(bench_resources(options), options.data_dir or Path(scratch))
        if options.durability == "strict":
            platform.nats.sync_interval = "always"
        try:
            await platform.start()
            return await _measure(platform, options)
        finally:
            await platform.stop()


async def _measure(platform: LocalPlatform, options: BenchOptions) -> BenchResult:
    secret = credentials.ensure_local_secret(platform.data_dir, FLEET)
    devices, bodies = _devices(platform, options)
    tokens = {device: credentials.device_token(secret, FLEET, device) for device in devices}
    load_task = asyncio.create_task(
        run_load(
            platform.endpoints()["fleets"][FLEET],
            options.protocol,
            FLEET,
            tokens,
            options.batch,
            options.rate,
            options.warmup,
            options.duration,
            bodies,
        )
    )
    await asyncio.sleep(options.warmup)
    start = await _window(platform)
    load = await load_task
    end = await _window(platform)
    lag = sum(state.lag for state in await platform.consumer_states())
    await platform.wait_drained(120)
    peak = {name: s.peak_rss_bytes for name, s in _cpu(platform).items()}
    baseline = await transport_baseline(
        platform.nats.url, platform.nats.login(), _sample_message(options.batch), options.baseline_seconds
    )
    stored_total = await stored_readings(
        platform.resources.pipelines[FLEET], platform.store_path(platform.resources.pipelines[FLEET])
    )
    latencies = _store_latencies(platform, start.wall_ms, end.wall_ms)
    removed = await _removed(platform)
    return BenchResult(options, load, start, end, lag, stored_total, latencies, peak, baseline, os.cpu_count() or 1,
                       removed, os.getloadavg())  # fmt: skip


def _devices(platform: LocalPlatform, options: BenchOptions) -> tuple[list[str], BodyMaker]:
    """The devices' ids and readings: for a user pipeline, ids and metrics its rules and expressions expect."""
    if not options.pipeline_paths:
        return [f"d{i:05d}" for i in range(options.devices)], plain_body
    fleet = platform.resources.fleets[FLEET]
    generated = {d.device: d for d in generated_devices(fleet, options.devices, int(time.time() * 1000))}

    def body(device: str, seq: int, size: int, now_ms: int) -> bytes:
        return generated[device].body(seq, now_ms, size, interval_ms=0)  # ts is the send time, for latency

    return list(generated), body


async def _removed(platform: LocalPlatform) -> int:
    total = 0.0
    for service in platform.services:
        if service.name.startswith("processor-"):
            found = await scrape(f"http://127.0.0.1:{service.status['ops_port']}/metrics") or {}
            total += found.get(REMOVED_METRIC, 0.0)
    return int(total)


def _sample_message(batch: int) -> bytes:
    """The bytes of one telemetry message as the gateway publishes it, for the transport baseline."""
    request = codec.decode_request(batch_body(1, batch, int(time.time() * 1000)))
    readings = [codec.Reading(r.seq, int(r.ts), r.metrics) for r in request.readings]
    return codec.encode(codec.ReadingBatch(fleet=FLEET, device="d00000", readings=readings, received_ms=0))
