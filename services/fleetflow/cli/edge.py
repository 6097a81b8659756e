"""`fleetflow edge up`: run an edge site of a fleet on this machine, its NATS a leaf node of the hub's."""

import argparse
import asyncio
import os
import sys
from pathlib import Path

from fleetflow.api import DeviceFleet
from fleetflow.cli.errors import UsageError
from fleetflow.cli.up import (
    PROGRESS_INTERVAL,
    RunCounts,
    UpOptions,
    count_stored_before,
    handle_stop_signals,
    run_started,
)
from fleetflow.local import private, sitelogins
from fleetflow.local.datadir import DataDirInUse
from fleetflow.local.edgesite import UNAVAILABLE, EdgePlatform
from fleetflow.local.natsserver import PortBusy
from fleetflow.local.processes import ChildFailed
from fleetflow.local.resources import ResourceSet, load_resources, site_resources
from fleetflow.runtime import edgelink


def run(args: argparse.Namespace) -> int:
    return revoke(args) if args.action == "revoke" else up(args)


def revoke(args: argparse.Namespace) -> int:
    fleet = fleet_with_sites(load_resources(args.paths), args.fleet)
    try:
        site = edgelink.find_site(fleet, args.site)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    os.umask(private.UMASK)
    marker = sitelogins.revoke_site(args.data_dir, fleet.name, site.name)
    print(f"site {site.name} of fleet {fleet.name} revoked at the hub in {args.data_dir}: its next connection is "
          f"refused (a running fleetflow up applies it within a second); delete {marker} to readmit it with a new "
          "password")  # fmt: skip
    return 0


def up(args: argparse.Namespace) -> int:
    resources = load_resources(args.paths)
    fleet = fleet_with_sites(resources, args.fleet)
    try:
        site = edgelink.find_site(fleet, args.site)
        scheme, _, _ = edgelink.check_hub_url(args.hub)
        password = sitelogins.read_site_password(args.credentials)
        hub_ca = check_hub_ca(args.hub_ca, scheme)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.simulate < 0:
        raise UsageError(f"--simulate {args.simulate}: give a number of devices, 0 or more")
    options = UpOptions(args.data_dir, args.simulate, args.duration, args.batch, args.interval, args.nats_port)
    os.umask(private.UMASK)
    platform_resources = site_resources(resources, fleet.name, site.name)
    return asyncio.run(run_site(EdgePlatform, platform_resources, options, site.name, args.hub, password, hub_ca))


def check_hub_ca(path: Path | None, scheme: str) -> Path | None:
    """The CA file for a tls:// hub; ValueError if it is given for nats:// or cannot be read."""
    if path is None:
        return None
    if scheme != "tls":
        raise ValueError(f"--hub-ca {str(path)!r}: only for a tls:// hub; use --hub tls://HOST:PORT")
    if not path.is_file():
        raise ValueError(f"--hub-ca {str(path)!r}: no such file; give the PEM file of the CA that signed the hub")
    return path.resolve()


def fleet_with_sites(resources: ResourceSet, name: str | None) -> DeviceFleet:
    """The fleet `name`, or the only fleet that declares sites; UsageError naming the candidates."""
    with_sites = [fleet.name for fleet in resources.fleets.values() if fleet.spec.sites]
    if name is not None:
        if name not in with_sites:
            raise UsageError(f"--fleet {name!r}: the fleets with sites here are {', '.join(with_sites) or 'none'}")
        return resources.fleets[name]
    if len(with_sites) != 1:
        found = ", ".join(with_sites) or "none (add spec.sites to a DeviceFleet, see docs/edge.md)"
        raise UsageError(f"choose the fleet with --fleet: the fleets with sites here are {found}")
    return resources.fleets[with_sites[0]]


async def run_site(make: type[EdgePlatform], resources: ResourceSet, options: UpOptions, site: str, hub: str,
                   password: str, hub_ca: Path | None = None) -> int:  # fmt: skip
    stop = asyncio.Event()
    handle_stop_signals(stop)
    fleet = next(iter(resources.fleets.values()))
    platform = make(
        resources, options.data_dir, edgelink.find_site(fleet, site), hub, password, options.nats_port, hub_ca
    )
    counts = RunCounts()
    try:
        endpoints = await platform.start(before_intake=count_stored_before(platform, counts))
    except (DataDirInUse, PortBusy, ChildFailed, TimeoutError) as exc:
        await platform.stop(drain_timeout=5)
        print(f"fleetflow edge up: {exc}", file=sys.stderr, flush=True)
        return 2 if isinstance(exc, DataDirInUse | PortBusy) else 1
    print(f"edge site {site} of fleet {fleet.name}: NATS domain {platform.domain}, leaf node of {hub}", flush=True)
    watcher = asyncio.create_task(show_site(platform, stop))
    try:
        return await run_started(platform, endpoints, options, stop, counts)
    finally:
        stop.set()
        await watcher


async def show_site(platform: EdgePlatform, stop: asyncio.Event) -> None:
    """A line every PROGRESS_INTERVAL with the link and the budget, until `stop`."""
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), PROGRESS_INTERVAL)
            return
        except TimeoutError:
            pass
        try:
            state = await platform.site_state()
        except UNAVAILABLE as exc:
            print(f"  site {platform.site.name}: state unavailable ({type(exc).__name__})", flush=True)
            continue
        print(f"  site {platform.site.name}: {state.line(platform.site.storage.when_full)}", flush=True)
