"""Small builders for processor tests: a fleet, a pipeline from step dicts, readings."""

from typing import Any

from fleetflow.api import DeviceFleet, Pipeline
from fleetflow.processor.compiler import CompiledPipeline, compile_pipeline
from fleetflow.processor.engine import Engine
from fleetflow.runtime.codec import Reading, ReadingBatch

T0 = 1_700_000_000_000  # a round event time, far from the epoch
NOW = T0 + 3_600_000


def fleet(labels: list[dict[str, Any]] | None = None) -> DeviceFleet:
    return DeviceFleet.model_validate({"metadata": {"name": "cold"}, "spec": {"devices": {"labels": labels or []}}})


def pipeline(steps: list[dict[str, Any]], replicas: int = 1) -> Pipeline:
    return Pipeline.model_validate(
        {
            "metadata": {"name": "chain"},
            "spec": {"fleetRef": {"name": "cold"}, "steps": steps, "processor": {"replicas": replicas}},
        }
    )


def compiled(steps: list[dict[str, Any]], labels: list[dict[str, Any]] | None = None) -> CompiledPipeline:
    return compile_pipeline(pipeline(steps), fleet(labels))


def engine(steps: list[dict[str, Any]], labels: list[dict[str, Any]] | None = None) -> Engine:
    return Engine(compiled(steps, labels), now_ms=NOW)


def batch(device: str, *readings: tuple[int, int, dict[str, float]]) -> ReadingBatch:
    """readings as (seq, ts offset from T0 in ms, metrics)."""
    return ReadingBatch(
        fleet="cold",
        device=device,
        readings=[Reading(seq, T0 + offset, metrics) for seq, offset, metrics in readings],
        received_ms=NOW,
    )
