"""`fleetflow query --api URL`: the readings, aggregates, alerts, commands and devices `fleetflow query` shows, read
through a fleet's application API (docs/api.md) instead of the data dir's store: the same newest `--limit` rows,
following the API's cursors page by page, so the output is the same as from the store the API serves."""

import argparse
from typing import Any

from fleetflow.cli import application_api, paging
from fleetflow.cli.application_api import ApplicationApi
from fleetflow.cli.errors import UsageError
from fleetflow.writer.stores import Page

# The most each list of the API answers per page (docs/api.md, `limit`).
MAX_PAGE, MAX_READINGS_PAGE = 10_000, 100_000
# The API takes times up to the end of the year 9999; `fleetflow query` without --until means "no end".
OPEN_END_MS = 253402300799999


async def api_items(args: argparse.Namespace, what: str, since: int, until: int,
                    page: int | None = None) -> tuple[str, list[Any]]:  # fmt: skip
    """Where the items come from (for the "none found" line) and the newest `--limit` items of kind `what`;
    `page`: items per request (default: the API's most)."""
    url, key = application_api.api_url(args.api), application_api.api_key(args.key)
    until = min(until, OPEN_END_MS)
    async with application_api.connect(url, key) as api:
        if what == "commands" and args.device is None:
            return f"the fleet's command state through the API at {url}", await fleet_commands(
                api, args, since, until, page or MAX_PAGE
            )
        if what in ("readings", "commands"):
            pipeline, items = await device_log(api, args, what, since, until, page)
        elif what == "devices":
            pipeline, items = await devices(api, args, since, until, page or MAX_PAGE)
        else:
            pipeline = args.pipeline or await default_pipeline(api, args.fleet)
            items = await pipeline_events(api, args, what, pipeline, since, until, page or MAX_PAGE)
    return f"pipeline {pipeline}'s store through the API at {url}", items


async def device_log(api: ApplicationApi, args: argparse.Namespace, what: str, since: int, until: int,
                     page: int | None) -> tuple[str, list[Any]]:  # fmt: skip
    """A device's readings or logged commands, newest first as the API answers them, and whose store it read."""
    answered_by: list[str] = []
    fleet, device, pipeline, limit = args.fleet, args.device, args.pipeline, args.limit

    async def fetch(token: str | None) -> Page[Any]:
        found: tuple[str, Page[Any]]
        if what == "readings":
            size = min(limit, page or MAX_READINGS_PAGE)
            found = await api.readings(fleet, device, pipeline, since, until, size, token)
        else:
            size = min(limit, page or MAX_PAGE)
            found = await api.device_commands(fleet, device, pipeline, since, until, size, token)
        answered_by.append(found[0])
        return found[1]

    items = await paging.first(fetch, limit)
    return answered_by[0], items


async def pipeline_events(api: ApplicationApi, args: argparse.Namespace, what: str, pipeline: str, since: int,
                          until: int, page: int) -> list[Any]:  # fmt: skip
    """The newest `--limit` window aggregates (by window start) or alert transitions (by time) of the pipeline,
    of one device when one is given; the API answers them oldest first, so every page is read."""
    fleet, device = args.fleet, args.device
    if what == "aggregates":
        return await paging.newest(lambda token: api.aggregates(fleet, pipeline, device, since, until, page, token),
                                   lambda a: a.window_start_ms, args.limit)  # fmt: skip
    return await paging.newest(lambda token: api.alerts(fleet, pipeline, device, since, until, page, token),
                               lambda a: a.ts_ms, args.limit)  # fmt: skip


async def fleet_commands(api: ApplicationApi, args: argparse.Namespace, since: int, until: int,
                         page: int) -> list[Any]:  # fmt: skip
    """The newest `--limit` commands of the fleet created in the range, from its command state on NATS."""
    return await paging.newest_in_range(lambda token: api.commands(args.fleet, page, token),
                                        lambda r: r.command.created_ms, since, until, args.limit)  # fmt: skip


async def devices(api: ApplicationApi, args: argparse.Namespace, since: int, until: int,
                  page: int) -> tuple[str, list[Any]]:  # fmt: skip
    """The device given, or the `--limit` devices last heard from in the range, latest first; and whose store."""
    if args.device is not None:
        return await api.device(args.fleet, args.device, args.pipeline)
    answered_by: list[str] = []

    async def fetch(token: str | None) -> Page[Any]:
        name, found = await api.devices(args.fleet, args.pipeline, page, token)
        answered_by.append(name)
        return found

    items = await paging.newest_in_range(fetch, lambda d: d.stored_ms, since, until, args.limit)
    return answered_by[0], items


async def default_pipeline(api: ApplicationApi, fleet: str) -> str:
    """The API's default: the fleet's first pipeline by name."""
    pipelines = await api.fleet_pipelines(fleet)
    if not pipelines:
        raise UsageError(f"fleet {fleet!r} has no pipeline at the API, so nothing is stored")
    return min(pipelines)
