"""Reading what the local platform has done: gateway and processor counters from /metrics, rows from the
stores."""

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from fleetflow.api import Pipeline
from fleetflow.local.processes import ServiceProcess
from fleetflow.writer.stores import open_store


async def scrape_samples(url: str) -> list[Sample]:
    """Every sample at `url`, with its labels; [] if unreachable."""
    try:
        async with aiohttp.ClientSession() as session, session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as r:
            text = await r.text()
    except (aiohttp.ClientError, TimeoutError):
        return []
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


async def scrape(url: str) -> dict[str, float]:
    """Sum every sample of every metric at `url` by name (labels summed away); {} if unreachable."""
    totals: dict[str, float] = {}
    for sample in await scrape_samples(url):
        totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals


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
        for sample in await scrape_samples(f"http://127.0.0.1:{service.status['ops_port']}/metrics"):
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
