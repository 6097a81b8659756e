"""`fleetflow bench --engine-only`: a pipeline's step engine alone, in this process, on generated readings.

No NATS, no store: what one core spends on the steps. Both engines run on the same input, the batch engine
(the processor's) and the per-reading reference, and their outputs are compared. The batch engine runs once
more with a timer around each step, for the cost per step."""

import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from fleetflow.api import DeviceFleet, Pipeline
from fleetflow.bench.readings import device_rounds, generated_devices
from fleetflow.processor.batchengine import BatchEngine
from fleetflow.processor.compiler import compile_pipeline
from fleetflow.processor.engine import Engine, Outputs
from fleetflow.runtime.codec import ReadingBatch

START_MS = 1_800_000_000_000


@dataclass(frozen=True)
class EngineOptions:
    devices: int = 200
    batch: int = 100
    rounds: int = 20  # batches per device for the batch engine
    reference_rounds: int = 5  # the reference is slower: fewer batches, the same first ones


@dataclass
class EngineRun:
    """One engine over the input: readings in, CPU seconds, and a digest of everything it put out."""

    readings: int
    cpu_seconds: float
    digest: Counter[str]

    @property
    def per_core(self) -> float:
        return self.readings / max(self.cpu_seconds, 1e-9)


@dataclass
class EngineResult:
    pipeline: str
    steps: list[tuple[str, str]]  # (name, kind)
    options: EngineOptions
    batch_engine: EngineRun
    reference: EngineRun
    reference_prefix: EngineRun  # the batch engine over the reference's input, to compare outputs
    step_us: list[float]  # µs of the batch engine per reading that entered the pipeline, per step


def _digest(out: Outputs, into: Counter[str]) -> None:
    """What the outputs hold, by kind and step: equal digests on equal input say the engines agree."""
    into["readings"] += sum(len(b.readings) for b in out.readings)
    into["aggregates"] += len(out.aggregates)
    into["aggregate_sum"] += round(sum(a.sum for a in out.aggregates), 6)  # type: ignore[assignment]
    into["alerts"] += len(out.alerts)
    into["commands"] += len(out.commands)
    into["late"] += sum(len(r) for r in out.late.values())
    for (step, outcome), n in out.counts.items():
        into[f"{step}:{outcome}"] += n
    for (step, reason), n in out.errors.items():
        into[f"{step}:error:{reason}"] += n


def _run(engine: Engine, rounds: list[list[ReadingBatch]]) -> EngineRun:
    digest: Counter[str] = Counter()
    readings = 0
    started = time.process_time()
    for batches in rounds:
        for batch in batches:
            _digest(engine.process(batch, batch.received_ms + 50), digest)
            readings += len(batch.readings)
    return EngineRun(readings, time.process_time() - started, digest)


def _step_costs(engine: BatchEngine, rounds: list[list[ReadingBatch]]) -> list[float]:
    seconds = [0.0] * len(engine.runners)
    readings = 0
    for batches in rounds:
        for batch in batches:
            engine.process_timed(batch, batch.received_ms + 50, seconds)
            readings += len(batch.readings)
    return [s / max(readings, 1) * 1e6 for s in seconds]


def measure_engine(fleet: DeviceFleet, pipeline: Pipeline, options: EngineOptions) -> EngineResult:
    compiled = compile_pipeline(pipeline, fleet)
    devices = generated_devices(fleet, options.devices, START_MS)
    rounds = device_rounds(devices, fleet.name, options.batch, options.rounds, START_MS)
    prefix = rounds[: options.reference_rounds]
    reference = _run(Engine(compiled, now_ms=START_MS), prefix)
    reference_prefix = _run(BatchEngine(compiled, now_ms=START_MS), prefix)
    batch_engine = _run(BatchEngine(compiled, now_ms=START_MS), rounds)
    step_us = _step_costs(BatchEngine(compiled, now_ms=START_MS), rounds)
    return EngineResult(
        pipeline.name,
        [(step.name, step.kind) for step in compiled.steps],
        options,
        batch_engine,
        reference,
        reference_prefix,
        step_us,
    )


def engine_summary(result: EngineResult, load_average: tuple[float, float, float]) -> dict[str, Any]:
    return {
        "pipeline": result.pipeline,
        "input": {
            "devices": result.options.devices,
            "readings_per_batch": result.options.batch,
            "readings": result.batch_engine.readings,
            "reference_readings": result.reference.readings,
        },
        "load_average": [round(x, 2) for x in load_average],
        "batch_engine": {
            "readings_per_s_per_core": round(result.batch_engine.per_core),
            "us_per_reading": round(1e6 / result.batch_engine.per_core, 2),
        },
        "reference_engine": {
            "readings_per_s_per_core": round(result.reference.per_core),
            "us_per_reading": round(1e6 / result.reference.per_core, 2),
        },
        "speedup": round(result.batch_engine.per_core / result.reference.per_core, 1),
        "outputs_identical": result.reference.digest == result.reference_prefix.digest,
        "steps": [
            {"name": name, "kind": kind, "us_per_reading": round(us, 2)}
            for (name, kind), us in zip(result.steps, result.step_us, strict=True)
        ],
        "outputs": dict(sorted(result.batch_engine.digest.items())),
    }


def engine_table(report: dict[str, Any]) -> str:
    i, b, r = report["input"], report["batch_engine"], report["reference_engine"]
    lines = [
        f"fleetflow bench --engine-only: pipeline {report['pipeline']}, {i['devices']} devices x "
        f"{i['readings_per_batch']} readings/batch, {i['readings']:,} readings; one core, in process; "
        f"load average {' '.join(map(str, report['load_average']))}",
        "",
        "engine                     readings/s per core     µs per reading",
        f"  batch (the processor's)  {b['readings_per_s_per_core']:>18,}  {b['us_per_reading']:>17.2f}",
        f"  per-reading reference    {r['readings_per_s_per_core']:>18,}  {r['us_per_reading']:>17.2f}"
        f"   ({i['reference_readings']:,} readings)",
        f"  speed-up {report['speedup']}x; outputs on the same input identical: "
        f"{'yes' if report['outputs_identical'] else 'NO'}",
        "",
        "cost per step (batch engine, µs per reading entering the pipeline)",
    ]
    lines += [f"  {s['name']:<24} {s['kind']:<9}{s['us_per_reading']:>8.2f}" for s in report["steps"]]
    if not report["steps"]:
        lines.append("  (no steps: batches are forwarded untouched)")
    return "\n".join(lines)
