"""`fleetflow query`: what a pipeline stored (readings, window aggregates, alert transitions, each device's latest
reading) and the commands sent to a fleet's devices, newest first, as a table or as JSON lines.

Readings, aggregates, alerts and a device's commands come from the pipeline's store as the last `fleetflow up`
on the data dir ran it (pipelines.json), so they can be read after the platform stopped; the writer logs every
command's state changes there. The commands of a whole fleet come from the running platform's command state on
NATS, the same records `fleetflow command list` shows (the store's command log is kept per device).

With `--api URL` the same things come through the fleet's application API instead (query_api.py)."""

import argparse
import asyncio
import heapq
import json
import re
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec

from fleetflow.api import Pipeline
from fleetflow.cli import arguments, datadir, device_commands, paging, tables
from fleetflow.cli.errors import UsageError
from fleetflow.cli.platform_nats import admin_connection
from fleetflow.gateway import command_admin
from fleetflow.runtime.codec import AlertEvent, WindowAggregate
from fleetflow.writer.stores import (
    AggregateQuery,
    AlertQuery,
    CommandQuery,
    DeviceQuery,
    Page,
    ReadingQuery,
    StoredReading,
    TelemetryStore,
)
from fleetflow.writer.stores import open_store as open_sink_store

KINDS = ("readings", "aggregates", "alerts", "commands", "devices")
PAGE = 500
_RELATIVE = re.compile(r"^([0-9]+)(s|m|h|d)$")


def parse_time(text: str, flag: str) -> int:
    """Epoch ms from RFC 3339, epoch ms, or a duration back from now ("15m", "2h")."""
    if text.isdigit():
        return int(text)
    match = _RELATIVE.match(text)
    if match:
        seconds = int(match.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
        return int((time.time() - seconds) * 1000)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"{flag} {text!r}: use RFC 3339 (2026-11-23T10:00:00Z), epoch ms, or 15m/2h/7d") from None
    if parsed.tzinfo is None:
        raise UsageError(f"{flag} {text!r} has no UTC offset; add Z or +hh:mm")
    return int(parsed.timestamp() * 1000)


def time_range(args: argparse.Namespace) -> tuple[int, int]:
    since = parse_time(args.since, "--since") if args.since else 0
    until = parse_time(args.until, "--until") if args.until else 2**62
    if since >= until:
        raise UsageError(f"--since {args.since!r} is not before --until {args.until!r}")
    return since, until


def kind(args: argparse.Namespace) -> str:
    chosen = next((k for k in KINDS[1:] if getattr(args, k)), "readings")
    if chosen == "readings" and args.device is None:
        raise UsageError(
            "readings are stored per device: give FLEET DEVICE, or --aggregates, --alerts, --commands or --devices"
        )
    return chosen


def pipeline_store(data_dir: Path, fleet: str, name: str | None) -> tuple[Pipeline, TelemetryStore]:
    """The store of `fleet`'s pipeline (`name`, else the first), as the last `fleetflow up` on `data_dir` ran it."""
    known = {k: v for k, v in datadir.pipelines(data_dir).items() if v["fleet"] == fleet}
    if not known:
        datadir.require_fleet(data_dir, fleet)
        raise UsageError(f"fleet {fleet!r} has no pipeline that ran with data dir {data_dir}: nothing was stored")
    if name is not None and name not in known:
        raise UsageError(f"--pipeline {name!r}: not a pipeline of fleet {fleet!r} here; known: {', '.join(known)}")
    chosen = name or next(iter(known))
    entry = known[chosen]
    pipeline = Pipeline.model_validate(
        {"metadata": {"name": chosen}, "spec": {"fleetRef": {"name": fleet}, "sink": entry["sink"]}}
    )
    return pipeline, open_sink_store(pipeline, Path(entry["sqlitePath"]))


async def stored_items(args: argparse.Namespace, what: str, since: int, until: int) -> tuple[str, list[Any]]:
    """The pipeline's name and the newest `--limit` stored items of kind `what`."""
    pipeline, store = pipeline_store(args.data_dir, args.fleet, args.pipeline)
    fleet, name, device, limit = args.fleet, pipeline.name, args.device, args.limit
    await store.open()
    try:
        if what == "readings":
            page = await store.readings(ReadingQuery(fleet, device, since, until, limit))
            return name, list(page.items)
        if what == "commands":  # newest first already, like readings
            logged = await store.command_page(CommandQuery(fleet, device, since, until, limit))
            return name, list(logged.items)
        if what == "devices":
            return name, await stored_devices(store, fleet, device, since, until, limit)
        if what == "aggregates":
            group = None if device is None else f"device={device}"

            def windows(token: str | None) -> Awaitable[Page[WindowAggregate]]:
                return store.aggregate_page(AggregateQuery(fleet, name, group, since, until, PAGE, token))

            return name, await paging.newest(windows, lambda a: a.window_start_ms, limit)

        def transitions(token: str | None) -> Awaitable[Page[AlertEvent]]:
            return store.alert_page(AlertQuery(fleet, name, device, since, until, PAGE, token))

        return name, await paging.newest(transitions, lambda a: a.ts_ms, limit)
    finally:
        await store.close()


async def stored_devices(store: TelemetryStore, fleet: str, device: str | None, since: int, until: int,
                         limit: int) -> list[StoredReading]:  # fmt: skip
    """`device`'s latest reading, or the `limit` devices last heard from in the range, latest first (the store's
    last-value table, one row per device)."""
    if device is not None:
        latest = await store.latest(fleet, device)
        return [] if latest is None else [latest]

    def registry(token: str | None) -> Awaitable[Page[StoredReading]]:
        return store.latest_page(DeviceQuery(fleet, PAGE, token))

    return await paging.newest_in_range(registry, lambda d: d.stored_ms, since, until, limit)


async def command_records(args: argparse.Namespace, since: int, until: int) -> list[Any]:
    url = device_commands.fleet_nats(args.data_dir, args.fleet)
    async with admin_connection(url, args.data_dir) as nc:
        records = await command_admin.list_records(nc, args.fleet, args.device)
    chosen = [r for r in records if since <= r.command.created_ms < until]
    return heapq.nlargest(args.limit, chosen, key=lambda r: r.command.created_ms)


def reading_row(item: StoredReading) -> tuple[str, ...]:
    metrics = "  ".join(f"{k}={tables.number(v)}" for k, v in sorted(item.metrics.items()))
    return (tables.utc(item.ts), str(item.seq), metrics)


def device_row(item: StoredReading) -> tuple[str, ...]:
    return (item.device, tables.utc(item.stored_ms), *reading_row(item))


def aggregate_row(a: WindowAggregate) -> tuple[str, ...]:
    percentiles = " ".join(f"{k}={tables.number(v)}" for k, v in sorted(a.percentiles.items()))
    numbers = (a.min, a.mean, a.max, a.last)
    return (tables.utc(a.window_start_ms), a.group, a.step, a.metric, str(a.count),
            *map(tables.number, numbers), percentiles)  # fmt: skip


def alert_row(a: AlertEvent) -> tuple[str, ...]:
    return (tables.utc(a.ts_ms), a.device, a.rule, a.state, a.severity, a.message)


VIEWS: dict[str, tuple[Sequence[str], Callable[[Any], Sequence[object]]]] = {
    "readings": (("TIME", "SEQ", "METRICS"), reading_row),
    "aggregates": (("WINDOW START", "GROUP", "STEP", "METRIC", "COUNT", "MIN", "MEAN", "MAX", "LAST", "PERCENTILES"),
                   aggregate_row),
    "alerts": (("TIME", "DEVICE", "RULE", "STATE", "SEVERITY", "MESSAGE"), alert_row),
    "commands": (device_commands.HEADER, device_commands.row),
    "devices": (("DEVICE", "LAST SEEN", "LATEST READING", "SEQ", "METRICS"), device_row),
}  # fmt: skip


def as_json(what: str, item: Any) -> dict[str, Any]:
    if what == "readings":
        return {"device": item.device, "seq": item.seq, "ts": item.ts, "metrics": item.metrics}
    if what == "devices":
        return {"device": item.device, "lastSeenMs": item.stored_ms, "seq": item.seq, "ts": item.ts,
                "metrics": item.metrics}  # fmt: skip
    if what == "commands":
        return dict(item.to_json())
    return dict(msgspec.to_builtins(item))


async def fetch(args: argparse.Namespace, what: str, since: int, until: int) -> tuple[str, list[Any]]:
    """Where the items come from (for the "none found" line) and the items."""
    if args.api is not None:
        from fleetflow.cli.query_api import api_items  # only --api needs an HTTP client

        return await api_items(args, what, since, until)
    if args.key is not None:
        raise UsageError("--key is the API key of --api URL; without --api the data dir's store is read")
    if what == "commands" and args.device is None:
        return "the running platform's command state", await command_records(args, since, until)
    pipeline, items = await stored_items(args, what, since, until)
    return f"pipeline {pipeline}'s store", items


async def run(args: argparse.Namespace) -> int:
    arguments.identifiers(args.fleet, args.device)
    what = kind(args)
    since, until = time_range(args)
    deadline = time.monotonic() + args.wait
    while True:
        source, items = await fetch(args, what, since, until)
        if items or time.monotonic() >= deadline:
            break
        await asyncio.sleep(0.25)  # the pipeline has not stored it yet
    if args.json:
        for item in items:
            print(json.dumps(as_json(what, item)))
    elif items:
        header, row = VIEWS[what]
        print(tables.render(header, [row(item) for item in items]))
    if not items:
        of = f"device {args.device!r} of fleet {args.fleet!r}" if args.device else f"fleet {args.fleet!r}"
        print(f"no {what} of {of} in {source} in that time range", file=sys.stderr)
    return 0
