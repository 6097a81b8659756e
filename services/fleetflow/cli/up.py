"""`fleetflow up`: run DeviceFleet and Pipeline YAML on this machine, optionally with simulated devices."""

import asyncio
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from fleetflow.api import DeviceFleet
from fleetflow.device.simulator import SimulationReport, simulate
from fleetflow.local import natslogins, progress
from fleetflow.local.platform import LocalPlatform
from fleetflow.local.resources import ResourceSet
from fleetflow.runtime import credentials

PROGRESS_INTERVAL = 2.0


@dataclass
class UpOptions:
    data_dir: Path
    simulate: int = 0
    duration: float | None = None
    batch: int = 10
    interval: float = 1.0
    nats_port: int | None = None


@dataclass
class RunCounts:
    """Counts of one `fleetflow up` run; `stored_before` lets a second run on the same data dir add up."""

    stored_before: dict[str, int] = field(default_factory=dict)
    stored_after: dict[str, int] = field(default_factory=dict)
    accepted: float = 0.0
    rejected: float = 0.0
    removed: dict[str, float] = field(default_factory=dict)  # by pipeline: readings its steps filtered out
    simulation: SimulationReport | None = None
    drained: bool = True


def device_tokens(fleet: DeviceFleet, data_dir: Path, count: int) -> dict[str, str]:
    secret = credentials.ensure_local_secret(data_dir, fleet.name)
    return {f"sim-{i:04d}": credentials.device_token(secret, fleet.name, f"sim-{i:04d}") for i in range(count)}


async def stored_counts(platform: LocalPlatform) -> dict[str, int]:
    pipelines = platform.resources.pipelines.values()
    return {p.name: await progress.stored_readings(p, platform.store_path(p)) for p in pipelines}


async def gateway_counters(platform: LocalPlatform) -> tuple[float, float]:
    accepted = rejected = 0.0
    for service in platform.services:
        if service.kind == "gateway" and service.status:
            totals = await progress.scrape(f"http://127.0.0.1:{service.status['ops_port']}/metrics")
            accepted += totals.get("fleetflow_gateway_readings_accepted_total", 0.0)
            rejected += totals.get("fleetflow_gateway_requests_rejected_total", 0.0)
    return accepted, rejected


async def removed_by_steps(platform: LocalPlatform) -> dict[str, float]:
    """Readings each pipeline's steps filtered out or recognised as duplicates: acknowledged, never stored."""
    removed: dict[str, float] = {}
    for service in platform.services:
        if service.kind == "processor" and service.status:
            pipeline = service.config["pipeline"]["metadata"]["name"]
            totals = await progress.scrape(f"http://127.0.0.1:{service.status['ops_port']}/metrics")
            removed[pipeline] = removed.get(pipeline, 0.0) + totals.get("fleetflow_processor_readings_removed_total", 0)
    return removed


async def show_progress(platform: LocalPlatform, counts: RunCounts, stop: asyncio.Event) -> None:
    started, last_stored, last_time = time.monotonic(), sum(counts.stored_before.values()), time.monotonic()
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), PROGRESS_INTERVAL)
            return
        except TimeoutError:
            pass
        stored = sum((await stored_counts(platform)).values())
        lag = sum(state.lag for state in await platform.consumer_states())
        accepted, rejected = await gateway_counters(platform)
        now = time.monotonic()
        rate = (stored - last_stored) / (now - last_time)
        sent = counts.simulation.sent if counts.simulation else 0
        print(
            f"  {now - started:6.1f}s  sent {sent:>10,}  accepted {accepted:>10,.0f}  "
            f"stored {stored - sum(counts.stored_before.values()):>10,} ({rate:,.0f}/s)  lag {lag:,}  "
            f"rejected requests {rejected:,.0f}",
            flush=True,
        )
        last_stored, last_time = stored, now


async def wait_for_stop(stop: asyncio.Event, duration: float | None) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await asyncio.wait_for(stop.wait(), duration)
    except TimeoutError:
        stop.set()


async def run_up(resources: ResourceSet, options: UpOptions) -> int:
    platform = LocalPlatform(resources, options.data_dir, options.nats_port)
    counts = RunCounts()
    stop, traffic_stop = asyncio.Event(), asyncio.Event()
    try:
        endpoints = await platform.start()
        counts.stored_before = await stored_counts(platform)
        print_started(platform, endpoints)
        simulation = start_simulation(platform, options, counts, traffic_stop)
        watcher = asyncio.create_task(show_progress(platform, counts, stop))
        await wait_for_stop(stop, options.duration)
        traffic_stop.set()
        if simulation:
            await simulation
        await watcher
        print("stopping: gateways first, then draining the pipelines ...", flush=True)
        counts.accepted, counts.rejected = await gateway_counters(platform)
        counts.drained = await platform.drain()
        counts.removed = await removed_by_steps(platform)
    finally:
        traffic_stop.set()
        drained = await platform.stop()
        counts.drained = counts.drained and drained
    counts.stored_after = await stored_counts(platform)
    return print_summary(platform, counts)


def start_simulation(
    platform: LocalPlatform, options: UpOptions, counts: RunCounts, stop: asyncio.Event
) -> "asyncio.Task[SimulationReport] | None":
    if not options.simulate:
        return None
    fleet = next(iter(platform.resources.fleets.values()))
    tokens = device_tokens(fleet, platform.data_dir, options.simulate)
    print(
        f"simulating {options.simulate} devices of fleet {fleet.name}: {options.batch} readings per request "
        f"every {options.interval:g}s",
        flush=True,
    )

    def attach(report: SimulationReport) -> None:
        counts.simulation = report

    return asyncio.create_task(
        simulate(
            platform.gateway_url(fleet), fleet.name, tokens, stop, options.batch, options.interval, on_start=attach
        )
    )


def print_started(platform: LocalPlatform, endpoints: dict[str, object]) -> None:
    print(f"fleetflow is up (data in {platform.data_dir}, endpoints in {platform.endpoints_file})")
    for name, fleet in platform.resources.fleets.items():
        print(f"  fleet {name}: POST {platform.gateway_url(fleet)}/v1/fleets/{name}/devices/<device>/telemetry")
    admin = natslogins.ADMIN
    print(f"  nats: {platform.nats.url} (user {admin}, password in {platform.nats.password_file(admin)})")
    print("  press Ctrl-C to stop", flush=True)


def print_summary(platform: LocalPlatform, counts: RunCounts) -> int:
    print("summary:")
    print(f"  accepted by the gateways: {counts.accepted:,.0f} readings; rejected requests: {counts.rejected:,.0f}")
    sim = counts.simulation
    if sim:
        print(
            f"  simulated devices: {sim.acknowledged:,} readings acknowledged, {sim.retried:,} re-sent as "
            f"retries ({sim.duplicates:,} recognised as duplicates), {sim.rejected:,} refused"
        )
    ok = counts.drained
    for name, after in counts.stored_after.items():
        this_run = after - counts.stored_before.get(name, 0)
        removed = round(counts.removed.get(name, 0))
        print(
            f"  pipeline {name}: stored {this_run:,} readings in this run, {after:,} in total"
            + (f"; its steps removed {removed:,} (filtered out or duplicates)" if removed else "")
        )
        expected = (sim.acknowledged if sim else round(counts.accepted)) - removed
        if this_run != expected:
            print(
                f"  MISMATCH: pipeline {name} stored {this_run:,} but {expected:,} were acknowledged", file=sys.stderr
            )
            ok = False
    if not counts.drained:
        print(
            f"  the pipelines did not drain before the timeout; see the logs in {platform.data_dir / 'logs'}",
            file=sys.stderr,
        )
    print(f"  stored == acknowledged: {'yes' if ok else 'NO'}", flush=True)
    return 0 if ok else 1
