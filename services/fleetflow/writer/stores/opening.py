"""Opening a store that may not be there yet: a Cassandra still starting, or briefly down, must not crash-loop the
service that reads or writes it (the writer, the application API); it waits, not ready, and retries."""

import asyncio
import contextlib

import structlog

from fleetflow.writer.stores.base import StoreUnavailable, TelemetryStore

log = structlog.get_logger(__name__)
RETRY_CAP_S = 30.0


async def open_until_stopped(store: TelemetryStore, stop: asyncio.Event) -> bool:
    """Open the store, retrying with capped backoff while it is unavailable; False if stopped first."""
    delay = 1.0
    while not stop.is_set():
        try:
            await store.open()
            return True
        except StoreUnavailable as exc:
            log.warning("store unavailable; retrying", error=str(exc), retry_in=delay)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        delay = min(RETRY_CAP_S, delay * 2)
    return False
