"""Reading what the local platform has done: counters from the services' /metrics, rows from the stores.

Everything here may fail while a child restarts (NATS down, a store unreachable, a service between two lives);
such a reading is `None`, "unavailable", and never an exception that would end `fleetflow up`'s progress."""

import sqlite3
from collections.abc import Awaitable
from pathlib import Path
from typing import TypeVar

import aiohttp
import nats.errors
from prometheus_client.parser import text_string_to_metric_families

from fleetflow.api import Pipeline
from fleetflow.writer.stores import StoreUnavailable, open_store

T = TypeVar("T")
# What an outage raises: NATS gone, a port refusing, a store that cannot be reached or is busy.
UNAVAILABLE = (nats.errors.Error, aiohttp.ClientError, OSError, TimeoutError, StoreUnavailable, sqlite3.Error)


async def unless_unavailable(reading: Awaitable[T]) -> T | None:
    try:
        return await reading
    except UNAVAILABLE:
        return None


async def scrape(url: str) -> dict[str, float] | None:
    """Sum every sample of every metric at `url` by name (labels summed away); None if unreachable."""
    try:
        async with aiohttp.ClientSession() as session, session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as r:
            text = await r.text()
    except (aiohttp.ClientError, TimeoutError):
        return None
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals


class CounterTally:
    """Counters of services that may restart: a restarted process counts from 0 again, so the last value seen
    of each process (by PID) is kept and summed. What a killed process counted after its last scrape is lost."""

    def __init__(self) -> None:
        self._last: dict[tuple[str, int, str], float] = {}

    def record(self, service: str, pid: int, totals: dict[str, float]) -> None:
        for metric, value in totals.items():
            self._last[(service, pid, metric)] = value

    def total(self, metric: str, services: set[str] | None = None) -> float:
        return sum(v for (s, _, m), v in self._last.items() if m == metric and (services is None or s in services))

    def lives(self, service: str) -> int:
        """How many processes of `service` were seen."""
        return len({pid for (s, pid, _) in self._last if s == service})


async def stored_readings(pipeline: Pipeline, sqlite_path: Path) -> int:
    store = open_store(pipeline, sqlite_path)
    await store.open()
    try:
        return await store.count_readings(pipeline.fleet)
    finally:
        await store.close()
