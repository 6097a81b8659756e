"""`fleetflow up`: run DeviceFleet and Pipeline YAML on this machine, optionally with simulated devices."""

import asyncio
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleetflow.api import DeviceFleet
from fleetflow.device.simulator import SimulationReport, simulate, simulated_device_ids
from fleetflow.local import natslogins, progress
from fleetflow.local.datadir import DataDirInUse
from fleetflow.local.natsserver import PortBusy
from fleetflow.local.platform import LEFTOVER_TIMEOUT_S, DeviceTls, LocalPlatform
from fleetflow.local.processes import ChildFailed
from fleetflow.local.resources import ResourceSet
from fleetflow.runtime import credentials

PROGRESS_INTERVAL = 2.0
ACCEPTED = "fleetflow_gateway_readings_accepted_total"
REJECTED = "fleetflow_gateway_requests_rejected_total"
REMOVED = "fleetflow_processor_readings_removed_total"


@dataclass
class UpOptions:
    data_dir: Path
    simulate: int = 0
    duration: float | None = None
    batch: int = 10
    interval: float = 1.0
    nats_port: int | None = None
    leafnode_listen: tuple[str, int | None] | None = None  # where edge sites dial in (docs/edge.md)
    leafnode_tls: tuple[Path, Path] | None = None  # certificate and key: edge sites dial in over TLS
    gateway_tls: tuple[Path, Path] | None = None  # certificate and key: devices' HTTP, WebSocket and gRPC over TLS
    device_ca: Path | None = None  # devices may present certificates this CA signed (docs/devices.md)


@dataclass
class RunCounts:
    """Counts of one `fleetflow up` run; `stored_before` lets a second run on the same data dir add up.
    A stored count is None where the store could not be read."""

    stored_before: dict[str, int | None] = field(default_factory=dict)
    stored_after: dict[str, int | None] = field(default_factory=dict)
    counters: progress.CounterTally = field(default_factory=progress.CounterTally)
    store_problems: dict[str, str] = field(default_factory=dict)  # by pipeline: why its store cannot be read
    activity: dict[str, progress.PipelineActivity] = field(default_factory=dict)  # by pipeline: outputs, errors
    simulation: SimulationReport | None = None
    drained: bool = True

    @property
    def accepted(self) -> float:
        return self.counters.total(ACCEPTED)

    @property
    def rejected(self) -> float:
        return self.counters.total(REJECTED)


def device_tokens(fleet: DeviceFleet, data_dir: Path, count: int) -> dict[str, str]:
    secret = credentials.ensure_local_secret(data_dir, fleet.name)
    return {d: credentials.device_token(secret, fleet.name, d) for d in simulated_device_ids(fleet, count)}


async def stored_counts(platform: LocalPlatform, counts: RunCounts) -> dict[str, int | None]:
    """Readings in each pipeline's store; None, with the reason in `counts.store_problems`, where unreadable.
    A store coming or going is reported in a line of its own: the writer waits and retries meanwhile."""
    stored: dict[str, int | None] = {}
    for p in platform.resources.pipelines.values():
        try:
            stored[p.name] = await progress.stored_readings(p, platform.store_path(p))
        except progress.UNAVAILABLE as exc:
            stored[p.name] = None
            problem = str(exc) or type(exc).__name__
            if counts.store_problems.get(p.name) != problem:
                print(f"  pipeline {p.name}: its {p.spec.sink.kind} store is unavailable ({problem}); the writer "
                      "retries, and JetStream keeps the data meanwhile", flush=True)  # fmt: skip
            counts.store_problems[p.name] = problem
        else:
            if counts.store_problems.pop(p.name, None) is not None:
                print(f"  pipeline {p.name}: its store is available again", flush=True)
    return stored


async def scrape_counters(platform: LocalPlatform, counts: RunCounts) -> bool:
    """Record the gateways' and processors' counters; False if some service could not be scraped."""
    complete = True
    for service in platform.services:
        if service.kind in ("gateway", "processor") and service.status:
            totals = await progress.scrape(f"http://127.0.0.1:{service.status['ops_port']}/metrics")
            if totals is None:
                complete = False
            else:
                counts.counters.record(service.name, service.status["pid"], totals)
    return complete


def removed_by_steps(platform: LocalPlatform, counts: RunCounts) -> dict[str, float]:
    """Readings each pipeline's steps filtered out or recognised as duplicates: acknowledged, never stored."""
    removed: dict[str, float] = {}
    for service in platform.services:
        if service.kind == "processor":
            pipeline = service.config["pipeline"]["metadata"]["name"]
            removed[pipeline] = removed.get(pipeline, 0.0) + counts.counters.total(REMOVED, {service.name})
    return removed


async def consumer_lag(platform: LocalPlatform) -> int | None:
    states = await progress.unless_unavailable(platform.consumer_states())
    return None if states is None else sum(state.lag for state in states)


def _shown(value: float | None, suffix: str = "") -> str:
    return "unavailable" if value is None else f"{value:,.0f}{suffix}"


async def show_progress(platform: LocalPlatform, counts: RunCounts, stop: asyncio.Event) -> None:
    """A line every PROGRESS_INTERVAL until `stop`; a reading that fails (NATS restarting, say) shows as
    unavailable and the next line tries again."""
    before = _sum(counts.stored_before)
    started, last_stored, last_time = time.monotonic(), before, time.monotonic()
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), PROGRESS_INTERVAL)
            return
        except TimeoutError:
            pass
        stored = _sum(await stored_counts(platform, counts))
        lag = await consumer_lag(platform)
        scraped = await scrape_counters(platform, counts)
        now = time.monotonic()
        rate = None if stored is None or last_stored is None else (stored - last_stored) / (now - last_time)
        sent = counts.simulation.sent if counts.simulation else 0
        this_run = None if stored is None else stored - (before or 0)
        print(
            f"  {now - started:6.1f}s  sent {sent:>10,}  accepted {counts.accepted:>10,.0f}"
            f"{'' if scraped else ' (a service did not answer)'}  stored {_shown(this_run):>10}"
            f"{'' if rate is None else f' ({rate:,.0f}/s)'}  lag {_shown(lag)}  "
            f"rejected requests {counts.rejected:,.0f}",
            flush=True,
        )
        last_stored, last_time = stored, now
        print_site_links(platform)


def forwarded_by_sites(platform: LocalPlatform) -> bool:
    """Whether this platform is a hub that edge sites forward readings to."""
    return platform.leafnode_url is not None and any(
        site.forward.readings for fleet in platform.resources.fleets.values() for site in fleet.spec.sites
    )


def print_site_links(platform: LocalPlatform) -> None:
    """The hub's edge sites: which are connected, and the bytes each link carried (metered links, docs/edge.md)."""
    if platform.site_links is None:
        return
    sites = len(platform.leafnodes_endpoint()["credentials"])
    links = ", ".join(f"{link.name} ({link.address}) {link.in_bytes:,} bytes in, {link.out_bytes:,} out"
                      for link in platform.site_links.links)  # fmt: skip
    print(f"  edge sites connected {len(platform.site_links.links)}/{sites}{': ' + links if links else ''}", flush=True)


def _sum(counts: dict[str, int | None]) -> int | None:
    values = list(counts.values())
    return None if any(v is None for v in values) else sum(v for v in values if v is not None)


def handle_stop_signals(stop: asyncio.Event) -> None:
    """Ctrl-C (SIGINT) stops exactly like SIGTERM: intake first, then the pipelines drain. The children run in
    their own sessions, so the terminal's SIGINT reaches only `up`, which stops them in order."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)


async def wait_for_stop(stop: asyncio.Event, duration: float | None) -> None:
    try:
        await asyncio.wait_for(stop.wait(), duration)
    except TimeoutError:
        stop.set()


async def run_up(resources: ResourceSet, options: UpOptions) -> int:
    stop = asyncio.Event()
    handle_stop_signals(stop)
    platform = LocalPlatform(
        resources, options.data_dir, options.nats_port, options.leafnode_listen, options.leafnode_tls,
        DeviceTls(options.gateway_tls, options.device_ca) if options.gateway_tls else None,
    )  # fmt: skip
    counts = RunCounts()
    try:
        endpoints = await platform.start(before_intake=count_stored_before(platform, counts))
    except (DataDirInUse, PortBusy, ChildFailed, TimeoutError) as exc:
        await platform.stop(drain_timeout=5)  # whatever did start; nothing was accepted yet
        print(f"fleetflow up: {exc}", file=sys.stderr, flush=True)
        return 2 if isinstance(exc, DataDirInUse | PortBusy) else 1
    return await run_started(platform, endpoints, options, stop, counts)


def count_stored_before(platform: LocalPlatform, counts: RunCounts) -> Callable[[], Awaitable[None]]:
    """What LocalPlatform.start calls before its gateways accept: the stores' counts this run adds to."""

    async def count() -> None:
        counts.stored_before = await stored_counts(platform, counts)

    return count


async def run_started(platform: LocalPlatform, endpoints: dict[str, Any], options: UpOptions,
                      stop: asyncio.Event, counts: RunCounts) -> int:  # fmt: skip
    traffic_stop = asyncio.Event()
    try:
        print_started(platform, endpoints)
        simulation = start_simulation(platform, options, counts, traffic_stop)
        watcher = asyncio.create_task(show_progress(platform, counts, stop))
        await wait_for_stop(stop, options.duration)
        traffic_stop.set()
        if simulation:
            await simulation
        await watcher
        print("stopping: gateways first, then draining the pipelines ...", flush=True)
        await scrape_counters(platform, counts)
        counts.drained = await platform.drain()
        await scrape_counters(platform, counts)  # the processors' last counts, now that they are idle
        counts.activity = await progress.pipeline_activity(platform.services)
    finally:
        traffic_stop.set()
        drained = await platform.stop()
        counts.drained = counts.drained and drained
    counts.stored_after = await stored_counts(platform, counts)
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
        print(f"  fleet {name} application API: {platform.api_url(fleet)}/v1/fleets/{name} (keys: fleetflow "
              f"api-key create {name} --scope read --data-dir {platform.data_dir})")  # fmt: skip
    admin = natslogins.ADMIN
    print(f"  nats: {platform.nats.url} (user {admin}, password in {platform.nats.password_file(admin)})")
    if platform.leafnode_url:
        for domain, password_file in platform.leafnodes_endpoint()["credentials"].items():
            if not Path(password_file).exists():  # revoked: fleetflow edge revoke
                print(f"  edge site {domain}: revoked (delete {Path(password_file).with_suffix('.revoked')} to "
                      "readmit it)")  # fmt: skip
                continue
            hub_ca = " --hub-ca CA" if platform.leafnode_tls else ""
            print(f"  edge site {domain}: fleetflow edge up PATH --hub {platform.leafnode_url}{hub_ca} --credentials "
                  f"{password_file}")  # fmt: skip
        print(f"  edge sites' state: {platform.sites_url}/sites, metrics: {platform.sites_url}/metrics")
    print("  press Ctrl-C to stop", flush=True)


def print_summary(platform: LocalPlatform, counts: RunCounts) -> int:
    print("summary:")
    gateways_restarted = [s.name for s in platform.services if s.kind == "gateway" and s.restarts]
    at_least = "at least " if gateways_restarted else ""
    print(f"  accepted by the gateways: {at_least}{counts.accepted:,.0f} readings; "
          f"rejected requests: {at_least}{counts.rejected:,.0f}")  # fmt: skip
    if gateways_restarted:
        print(f"  ({', '.join(gateways_restarted)} restarted: what a gateway counted after the last look before it "
              "crashed is not in these counts)")  # fmt: skip
    sim = counts.simulation
    if sim:
        print(
            f"  simulated devices: {sim.acknowledged:,} readings acknowledged, {sim.retried:,} re-sent as "
            f"retries ({sim.duplicates:,} recognised as duplicates), {sim.rejected:,} refused"
        )
    # The simulated devices know exactly what was acknowledged; the gateways' counts may fall short after a crash.
    exact = (
        (sim is not None or not gateways_restarted) and not forwarded_by_sites(platform) and not platform.carried_over
    )
    if platform.carried_over:
        print(f"  (an earlier run's readings were still being stored {LEFTOVER_TIMEOUT_S:.0f} s after the start: "
              "the stored counts include them)")  # fmt: skip
    if forwarded_by_sites(platform):
        print("  (edge sites forward readings here too: stored counts include theirs, which no gateway here saw)")
    ok = counts.drained
    removed_counts = removed_by_steps(platform, counts)
    for name, after in counts.stored_after.items():
        before = counts.stored_before.get(name)
        if after is None or before is None:
            problem = counts.store_problems.get(name, "")
            print(f"  pipeline {name}: its store could not be read ({problem}), so what it stored is unknown",
                  file=sys.stderr)  # fmt: skip
            ok = False
            continue
        this_run, removed = after - before, round(removed_counts.get(name, 0))
        print(
            f"  pipeline {name}: stored {this_run:,} readings in this run, {after:,} in total"
            + (f"; its steps removed {removed:,} (filtered out or duplicates)" if removed else "")
        )
        for line in counts.activity.get(name, progress.PipelineActivity()).lines():
            print(line)
        expected = (sim.acknowledged if sim else round(counts.accepted)) - removed
        if this_run != expected if exact else this_run < expected:
            print(
                f"  MISMATCH: pipeline {name} stored {this_run:,} but {at_least if not exact else ''}{expected:,} "
                "were acknowledged",
                file=sys.stderr,
            )
            ok = False
    if not counts.drained:
        print(
            f"  the pipelines did not drain before the timeout; see the logs in {platform.data_dir / 'logs'}",
            file=sys.stderr,
        )
    relation = "==" if exact else ">= (at least)"
    print(f"  stored {relation} acknowledged: {'yes' if ok else 'NO'}", flush=True)
    return 0 if ok else 1
