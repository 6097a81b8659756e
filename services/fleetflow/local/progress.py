"""Reading what the local platform has done: gateway counters from /metrics, rows from the stores."""

from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from fleetflow.api import Pipeline
from fleetflow.writer.stores import open_store


async def scrape(url: str) -> dict[str, float]:
    """Sum every sample of every metric at `url` by name (labels summed away); {} if unreachable."""
    try:
        async with aiohttp.ClientSession() as session, session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as r:
            text = await r.text()
    except (aiohttp.ClientError, TimeoutError):
        return {}
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals


async def stored_readings(pipeline: Pipeline, sqlite_path: Path) -> int:
    store = open_store(pipeline, sqlite_path)
    await store.open()
    try:
        return await store.count_readings(pipeline.fleet)
    finally:
        await store.close()
