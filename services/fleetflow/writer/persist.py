"""The writer's handler: decode a fetched batch of messages, write them in one go, report per message."""

import time
from collections.abc import Sequence

import msgspec
from nats.aio.msg import Msg
from opentelemetry.metrics import Meter

from fleetflow.runtime import codec
from fleetflow.runtime.codec import ReadingBatch
from fleetflow.runtime.consumer import Failure
from fleetflow.writer.stores import StoreUnavailable, TelemetryStore


class ReadingWriter:
    def __init__(self, store: TelemetryStore, meter: Meter):
        self.store = store
        self.rows = meter.create_counter(
            "fleetflow_writer_readings_stored",
            unit="1",
            description="Readings written (rewrites of redeliveries included)",
        )
        self.errors = meter.create_counter(
            "fleetflow_writer_write_errors", unit="1", description="Failed store writes, by reason"
        )
        self.write_duration = meter.create_histogram(
            "fleetflow_writer_write_duration_seconds", unit="s", description="One batched store write"
        )
        self.batch_size = meter.create_histogram(
            "fleetflow_writer_batch_readings", unit="1", description="Readings per store write"
        )
        self.e2e_latency = meter.create_histogram(
            "fleetflow_end_to_end_latency_seconds",
            unit="s",
            description="Device timestamp of a batch's newest reading to its commit in the store",
        )

    async def handle(self, msgs: Sequence[Msg]) -> list[Failure | None]:
        outcomes: list[Failure | None] = [None] * len(msgs)
        batches: list[ReadingBatch] = []
        for index, msg in enumerate(msgs):
            try:
                batches.append(codec.decode_batch(msg.data))
            except msgspec.DecodeError as exc:
                outcomes[index] = Failure(f"not a reading batch: {exc}", poison=True)
        if batches:
            failure = await self._write(batches)
            if failure is not None:
                outcomes = [outcome or failure for outcome in outcomes]
        return outcomes

    async def _write(self, batches: list[ReadingBatch]) -> Failure | None:
        started = time.perf_counter()
        try:
            await self.store.write_readings(batches)
        except StoreUnavailable as exc:
            self.errors.add(1, {"reason": "unavailable"})
            return Failure(f"store unavailable: {exc}")
        self.write_duration.record(time.perf_counter() - started)
        count = sum(len(b.readings) for b in batches)
        self.rows.add(count)
        self.batch_size.record(count)
        now_ms = time.time() * 1000
        for batch in batches:
            self.e2e_latency.record(max(0.0, (now_ms - batch.readings[-1].ts) / 1000))
        return None
