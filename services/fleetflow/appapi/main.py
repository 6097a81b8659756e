"""`fleetflow appapi`: serve one fleet's application API until SIGTERM."""

import asyncio
import contextlib
from pathlib import Path

import nats.errors
import structlog

from fleetflow.appapi.app import build_app
from fleetflow.appapi.commands import CommandLink, FleetCommands
from fleetflow.appapi.events import EventLimits, FleetEvents
from fleetflow.appapi.keys import ApiKeys
from fleetflow.appapi.resources import FleetResources
from fleetflow.runtime import httpserver, jetstream, logs, ops, service, telemetry
from fleetflow.runtime.settings import AppApiSettings
from fleetflow.writer.stores import TelemetryStore, open_store
from fleetflow.writer.stores.opening import RETRY_CAP_S, open_until_stopped

log = structlog.get_logger(__name__)
# How long the start waits for NATS before it serves the stored data anyway (commands then answer 503 until
# NATS is there): long enough for a NATS that is up, so commands work from the first request.
LINK_WAIT = 5.0


def open_stores(settings: AppApiSettings) -> dict[str, TelemetryStore]:
    """Each pipeline's store (not yet opened), as its writer opens it."""
    return {
        p.name: open_store(p, settings.sqlite_paths.get(p.name), settings.cassandra_credentials_dir)
        for p in settings.pipelines
    }


async def link_commands(settings: AppApiSettings, link: CommandLink) -> None:
    """Connect to the fleet's NATS (waiting for it as long as it takes) and open the command state bucket."""
    link.nc = await jetstream.connect(settings.nats_url, f"fleetflow-appapi-{settings.fleet.name}",
                                      login=settings.nats_login())  # fmt: skip
    delay = 1.0
    while True:
        try:
            await link.attach(link.nc)
            break
        except (nats.errors.Error, TimeoutError) as exc:  # JetStream not ready yet, a timeout: an outage
            log.warning("cannot open the command state bucket; retrying", error=str(exc), retry_in=delay)
        await asyncio.sleep(delay)
        delay = min(RETRY_CAP_S, delay * 2)
    log.info("commands linked", nats=settings.nats_url)


async def unlink_commands(task: asyncio.Task[None], link: CommandLink) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    if link.nc is not None:
        with contextlib.suppress(nats.errors.Error, OSError, TimeoutError):  # NATS may be gone already
            await link.nc.close()


async def serve(settings: AppApiSettings, stop: asyncio.Event) -> None:
    fleet = settings.fleet
    meter = telemetry.configure("appapi", fleet=fleet.name)
    stores = open_stores(settings)
    opened: list[TelemetryStore] = []

    def ready() -> tuple[bool, str]:
        if len(opened) < len(stores):
            return False, "opening the pipelines' stores"
        return True, "serving"

    ops_runner, ops_port = await ops.start_site(ops.ops_app(ready), settings.ops_host, settings.ops_port)
    link = CommandLink(fleet.name)
    linking = asyncio.create_task(link_commands(settings, link))
    try:
        for store in stores.values():
            if not await open_until_stopped(store, stop):
                return
            opened.append(store)
        keys = ApiKeys(settings.keys_file, fleet.name)
        pipelines = {p.name: p for p in settings.pipelines}
        resources = FleetResources(fleet, pipelines, stores, keys, settings.offline_after_seconds)
        limits = EventLimits(settings.max_event_streams, settings.event_queue, settings.event_patience_seconds,
                             settings.event_keepalive_seconds)  # fmt: skip
        events = FleetEvents(fleet, settings.pipelines, link, limits)
        app = build_app(resources, FleetCommands(fleet, link), events, keys, meter)
        runner, port = await httpserver.start_device_site(app, settings.listen_host, settings.listen_port)
        await asyncio.wait({linking}, timeout=LINK_WAIT)
        if not linking.done():
            log.warning("NATS does not answer yet; serving the stored data, commands once NATS is there",
                        nats=settings.nats_url)  # fmt: skip
        service.freeze_startup_heap()
        service.write_status(settings.status_file, {"ops_port": ops_port, "http_port": port})
        log.info("application API ready", port=port, ops_port=ops_port, pipelines=sorted(pipelines))
        await stop.wait()
        events.stop()  # open event streams would otherwise hold the shutdown until aiohttp's timeout
        await runner.cleanup()
    finally:
        await unlink_commands(linking, link)
        for store in opened:
            await store.close()
        await ops_runner.cleanup()
    log.info("application API stopped")


def main(config: Path | None) -> int:
    settings = AppApiSettings.load(config)
    logs.configure(settings.log_level, settings.log_format, service="appapi", fleet=settings.fleet.name)
    return service.run(lambda stop: serve(settings, stop))
