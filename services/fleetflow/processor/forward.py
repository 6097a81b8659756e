"""Forwarding telemetry batches to the pipeline's writer stream, acknowledging input only after output."""

import asyncio
from collections.abc import Sequence

import msgspec
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from opentelemetry.metrics import Meter

from fleetflow.api import Pipeline
from fleetflow.runtime import codec, subjects
from fleetflow.runtime.consumer import Failure


def output_id(pipeline: str, record: str, msg: Msg) -> str:
    """Derived from the input's id, so a redelivered input produces a duplicate JetStream drops."""
    input_id = (msg.headers or {}).get("Nats-Msg-Id")
    if input_id is None and msg.metadata is not None:
        input_id = f"{msg.metadata.stream}:{msg.metadata.sequence.stream}"
    return f"{pipeline}/{record}/{input_id}"


class Forwarder:
    def __init__(self, js: JetStreamContext, pipeline: Pipeline, meter: Meter):
        self.js = js
        self.fleet, self.pipeline = pipeline.fleet, pipeline.name
        self.batches = meter.create_counter(
            "fleetflow_processor_batches", unit="1", description="Telemetry batches processed, by outcome"
        )
        self.readings = meter.create_counter(
            "fleetflow_processor_readings", unit="1", description="Readings forwarded to the writer"
        )

    async def handle(self, msgs: Sequence[Msg]) -> list[Failure | None]:
        return list(await asyncio.gather(*(self._one(msg) for msg in msgs)))

    async def _one(self, msg: Msg) -> Failure | None:
        try:
            batch = codec.decode_batch(msg.data)
        except msgspec.DecodeError as exc:
            self.batches.add(1, {"outcome": "invalid"})
            return Failure(f"not a telemetry batch: {exc}", poison=True)
        subject = subjects.pipeline_subject(self.fleet, self.pipeline, "readings", batch.device)
        headers = {"Nats-Msg-Id": output_id(self.pipeline, "readings", msg)}
        try:
            await self.js.publish(subject, msg.data, headers=headers, timeout=10)
        except Exception as exc:
            self.batches.add(1, {"outcome": "retry"})
            return Failure(f"publish to {subject} failed: {type(exc).__name__}: {exc}")
        self.batches.add(1, {"outcome": "forwarded"})
        self.readings.add(len(batch.readings))
        return None
