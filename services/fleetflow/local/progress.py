"""Reading what the local platform has done: counters from the services' /metrics, rows from the stores.

Everything here may fail while a child restarts (NATS down, a store unreachable, a service between two lives);
such a reading is `None`, "unavailable", and never an exception that would end `fleetflow up`'s progress."""

import sqlite3
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import aiohttp
import nats.errors
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from fleetflow.api import Pipeline
from fleetflow.local.processes import ServiceProcess
from fleetflow.writer.stores import StoreUnavailable, open_store

T = TypeVar("T")
# What an outage raises: NATS gone, a port refusing, a store that cannot be reached or is busy.
UNAVAILABLE = (nats.errors.Error, aiohttp.ClientError, OSError, TimeoutError, StoreUnavailable, sqlite3.Error)


async def unless_unavailable(reading: Awaitable[T]) -> T | None:
    try:
        return await reading
    except UNAVAILABLE:
        return None


async def scrape_samples(url: str) -> list[Sample] | None:
    """Every sample at `url`, with its labels; None if unreachable."""
    try:
        async with aiohttp.ClientSession() as session, session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as r:
            text = await r.text()
    except (aiohttp.ClientError, TimeoutError):
        return None
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


async def scrape(url: str) -> dict[str, float] | None:
    """Sum every sample of every metric at `url` by name (labels summed away); None if unreachable."""
    samples = await scrape_samples(url)
    if samples is None:
        return None
    totals: dict[str, float] = {}
    for sample in samples:
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


# What each step kind that produces records publishes, as the summary names it.
_PRODUCED = {"window": ("aggregates", "window aggregates"), "alert": ("alerts", "alert events"),
             "command": ("commands", "commands sent")}  # fmt: skip


@dataclass
class PipelineActivity:
    """What a pipeline's processors produced in this run, from their /metrics."""

    kinds: set[str] = field(default_factory=set)  # the pipeline's step kinds
    published: dict[str, float] = field(default_factory=dict)  # record kind -> messages (first publications)
    errors: dict[tuple[str, str], float] = field(default_factory=dict)  # (step, reason) -> evaluation errors

    def lines(self) -> list[str]:
        """Summary lines: what its window, alert and command steps produced, then evaluation errors per step."""
        produced = [f"{words}: {self.published.get(record, 0):,.0f}"
                    for kind, (record, words) in _PRODUCED.items() if kind in self.kinds]  # fmt: skip
        found = [f"    {'; '.join(produced)}"] if produced else []
        for (step, reason), count in sorted(self.errors.items()):
            if count:
                found.append(f"    step {step}: {count:,.0f} evaluation errors ({reason}); see the processor's log")
        return found


async def pipeline_activity(services: Iterable[ServiceProcess]) -> dict[str, PipelineActivity]:
    """Per pipeline, the processors' published records and evaluation errors, summed over replicas. Call it
    while the processors run (their counters go with them)."""
    activity: dict[str, PipelineActivity] = {}
    for service in services:
        if service.kind != "processor" or not service.status:
            continue
        pipeline = service.config["pipeline"]
        found = activity.setdefault(pipeline["metadata"]["name"], PipelineActivity())
        found.kinds.update(kind for step in pipeline["spec"].get("steps", []) for kind in _PRODUCED if kind in step)
        for sample in await scrape_samples(f"http://127.0.0.1:{service.status['ops_port']}/metrics") or []:
            if sample.name == "fleetflow_processor_records_published_total" and sample.labels["duplicate"] != "true":
                record = sample.labels["record"]
                found.published[record] = found.published.get(record, 0.0) + sample.value
            elif sample.name == "fleetflow_processor_evaluation_errors_total":
                key = (sample.labels["step"], sample.labels["reason"])
                found.errors[key] = found.errors.get(key, 0.0) + sample.value
    return activity


async def stored_readings(pipeline: Pipeline, sqlite_path: Path) -> int:
    store = open_store(pipeline, sqlite_path)
    await store.open()
    try:
        return await store.count_readings(pipeline.fleet)
    finally:
        await store.close()
