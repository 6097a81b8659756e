"""Running a pipeline on one replica's share of the telemetry: in order, with checkpoints and catch-up.

The processor reads its durable consumer in stream order, runs each batch through the engine, publishes the
outputs (waiting for JetStream's acks), then acknowledges the input. Every few seconds it checkpoints the
engine state with the stream sequence of the last input applied (see checkpoint.py). On start it restores
the checkpoint and replays, straight from the stream, every input after that sequence up to what the durable
consumer had already delivered; later redeliveries of those are recognised by their sequence and skipped.
So a crash anywhere replays the same inputs in the same order into the same state, and the outputs come out
with the same ids. docs/processor.md explains the choice."""

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence

import msgspec
import nats.errors
import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from opentelemetry.metrics import Meter
from opentelemetry.trace import Span, SpanKind, StatusCode, set_span_in_context, use_span

from fleetflow.api import DeviceFleet, Pipeline
from fleetflow.processor import records
from fleetflow.processor.batchengine import BatchEngine
from fleetflow.processor.checkpoint import CheckpointStore
from fleetflow.processor.compiler import CompiledPipeline
from fleetflow.processor.engine import Outputs, error_reasons, step_outcomes
from fleetflow.processor.errorlog import EvaluationErrorLog
from fleetflow.runtime import codec, jetstream, pull, subjects, telemetry
from fleetflow.runtime.acks import Ack, AckedPublisher
from fleetflow.runtime.consumer import DeadLetters, Prefetch, redelivery_delay, stream_sequence

log = structlog.get_logger(__name__)

PUBLISH_ATTEMPTS = 8
PUBLISH_CHUNK = 512  # outputs in flight at once: bounds what one wait for acks holds, and retries
PUBLISH_TIMEOUT = 10.0
ADVANCE_INTERVAL = 1.0
# A checkpoint encodes the whole state and blocks the loop while it does; with a big state (long dedupe
# horizons, long windows of many devices) that cost would grow without bound, so at most 1/20 of the time.
CHECKPOINT_TIME_SHARE = 0.05


def next_checkpoint_at(now: float, interval: float, last_seconds: float) -> float:
    """When to checkpoint next: after `interval`, or later if the last one took more than its share of time.
    A later checkpoint only means a longer replay after a crash, never other results."""
    return now + max(interval, last_seconds / CHECKPOINT_TIME_SHARE)


class FetchTally:
    """What the batches of one fetch counted, added to the metrics at once."""

    def __init__(self) -> None:
        self.outputs = Outputs()  # counts, errors and the first example of each error
        self.processed = 0
        self.removed = 0

    def add(self, batch: codec.ReadingBatch, out: Outputs) -> None:
        self.processed += 1
        self.removed += len(batch.readings) - sum(len(kept.readings) for kept in out.readings)
        if out.counts:  # none without steps; an empty update still costs a Counter.update call
            self.outputs.counts.update(out.counts)
        if out.errors:
            self.outputs.errors.update(out.errors)
            for key, example in out.error_examples.items():
                self.outputs.error_examples.setdefault(key, example)


class PublishFailed(Exception):
    """Outputs could not be published after retries; the process must restart from its checkpoint."""


def input_id(msg: Msg) -> str:
    """The input's JetStream message id (the gateway's fleet/device/seq range), else its stream position."""
    found = (msg.headers or {}).get("Nats-Msg-Id")
    if found is None and msg.metadata is not None:
        found = f"{msg.metadata.stream}:{msg.metadata.sequence.stream}"
    return str(found)


class Runner:
    def __init__(
        self,
        js: JetStreamContext,
        fleet: DeviceFleet,
        pipeline: Pipeline,
        compiled: CompiledPipeline,
        replica: int,
        meter: Meter,
        fetch_batch: int = 256,
        checkpoint_interval: float = 2.0,
        clock: Callable[[], float] = time.time,
    ):
        self.js, self.compiled, self.replica = js, compiled, replica
        self.acks = AckedPublisher(js._nc)  # the context's connection: outputs are published on it
        self.fleet, self.pipeline = fleet.name, pipeline.name
        self.stream = subjects.telemetry_stream(fleet.name)
        self.durable = subjects.processor_consumer(pipeline.name, replica)
        owned = jetstream.partitions_of(replica, pipeline.spec.processor.replicas, fleet.spec.streams.partitions)
        self.filters = [subjects.telemetry_partition_filter(fleet.name, p) for p in owned]
        self.fetch_batch, self.checkpoint_interval, self.clock = fetch_batch, checkpoint_interval, clock
        self.checkpoints = CheckpointStore(js, fleet.name, pipeline, replica, fleet.spec.streams.replicas)
        self.dead_letters = DeadLetters(js, fleet.name, f"processor-{pipeline.name}")
        self.engine = BatchEngine(compiled, now_ms=self._now_ms())
        self.tracer = telemetry.tracer("processor")
        self.error_log = EvaluationErrorLog(pipeline.name)
        self.ready = False
        self._saved_seq = -1
        self._next_checkpoint = 0.0
        self._checkpoint_seconds = 0.0
        self._next_advance = 0.0
        self._metrics(meter)

    def _metrics(self, meter: Meter) -> None:
        self.step_readings = meter.create_counter(
            "fleetflow_processor_step_readings", unit="1", description="Readings seen by each step, by outcome"
        )
        self.batches = meter.create_counter(
            "fleetflow_processor_batches", unit="1", description="Telemetry batches handled, by outcome"
        )
        self.removed = meter.create_counter(
            "fleetflow_processor_readings_removed",
            unit="1",
            description="Readings a step removed (filtered out, or duplicates): they are never stored",
        )
        self.published = meter.create_counter(
            "fleetflow_processor_records_published", unit="1", description="Output messages, by record kind"
        )
        self.evaluation_errors = meter.create_counter(
            "fleetflow_processor_evaluation_errors",
            unit="1",
            description="Expressions that failed on a reading, by pipeline, step and reason (see docs/processor.md)",
        )
        self.checkpoint_bytes = meter.create_histogram(
            "fleetflow_processor_checkpoint_bytes", unit="By", description="Size of each state checkpoint"
        )
        self.checkpoint_duration = meter.create_histogram(
            "fleetflow_processor_checkpoint_duration_seconds", unit="s", description="Writing one checkpoint"
        )
        self.checkpoint_failures = meter.create_counter(
            "fleetflow_processor_checkpoint_failures", unit="1", description="Checkpoints JetStream did not take"
        )
        self._export_zeros()

    def _export_zeros(self) -> None:
        """Every series exists from the start, at 0, so that rate() and increase() see the first event (the
        first alert fired, late reading, error); a series born at 1 looks like no change to Prometheus."""
        for step in self.compiled.steps:
            for reason in error_reasons(step):
                self.evaluation_errors.add(0, {"pipeline": self.pipeline, "step": step.name, "reason": reason})
            for outcome in step_outcomes(step):
                self.step_readings.add(0, {"step": step.name, "outcome": outcome})
        for outcome in ("processed", "invalid", "already_applied"):
            self.batches.add(0, {"outcome": outcome})
        for record in records.RECORDS:
            for duplicate in ("false", "true"):
                self.published.add(0, {"record": record, "duplicate": duplicate})
        self.removed.add(0)
        self.checkpoint_failures.add(0)

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    async def start(self) -> int:
        """Restore the checkpoint and replay what was delivered after it; returns the inputs replayed."""
        state = await self.checkpoints.load()
        if state is not None:
            self.engine = BatchEngine(self.compiled, state, now_ms=self._now_ms())
            self._saved_seq = state.applied_seq
        # The replica is its consumer's only reader: what a crashed predecessor held unacknowledged comes back
        # now, in stream order, instead of after ack_wait (which would also hold up a drain that long).
        await jetstream.resume_from_ack_floor(self.js, self.stream, self.durable)
        replayed = await self._catch_up()
        log.info("processor state restored", applied_seq=self.engine.state.applied_seq, replayed=replayed,
                 from_checkpoint=state is not None)  # fmt: skip
        self.ready = True
        return replayed

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until `stop`; the batch in hand is finished and a last checkpoint written."""
        sub = await self.js.pull_subscribe_bind(self.durable, self.stream)
        fetches = Prefetch(lambda: pull.fetch(sub, self.fetch_batch, timeout=0.5))
        try:
            deliveries_lost = False
            while not stop.is_set():
                if deliveries_lost:
                    if not await self._replay_lost_deliveries():
                        await asyncio.sleep(0.5)
                        continue
                    deliveries_lost = False
                try:
                    msgs = await fetches.next()
                except (TimeoutError, nats.errors.TimeoutError):
                    msgs = []
                except nats.errors.Error as exc:
                    log.warning("fetch failed; retrying", error=str(exc), consumer=self.durable)
                    deliveries_lost = True
                    await asyncio.sleep(0.5)
                    continue
                if msgs:
                    await self.handle(msgs, ack=True)
                await self.tick()
            if msgs := await fetches.rest():
                await self.handle(msgs, ack=True)
        finally:
            await fetches.close()
        await self.checkpoint()
        self.error_log.flush(self.clock(), final=True)
        await sub.unsubscribe()

    async def handle(self, msgs: Sequence[Msg], ack: bool) -> None:
        """Apply `msgs` in order, publish their outputs, then (if `ack`) acknowledge them."""
        outgoing: list[records.Message] = []
        now_ms = self._now_ms()
        tally = FetchTally()  # metrics are added once per fetch: an OpenTelemetry add costs microseconds
        for msg in msgs:
            seq = stream_sequence(msg)
            if seq <= self.engine.state.applied_seq:
                self.batches.add(1, {"outcome": "already_applied"})
                continue
            try:
                batch = codec.decode_batch(msg.data)
            except msgspec.DecodeError as exc:
                self.batches.add(1, {"outcome": "invalid"})
                await self.dead_letters.send(msg, f"not a telemetry batch: {exc}")
                self.engine.state.applied_seq = seq
                continue
            out, trace = self._process(msg, batch, now_ms)
            tally.add(batch, out)
            outgoing += records.messages(self.fleet, self.pipeline, input_id(msg), out, trace, (batch, msg.data))
            self.engine.state.applied_seq = seq
        self._count(tally)
        await self.publish(outgoing)
        if ack:
            for msg in msgs:
                try:
                    await msg.ack()
                except nats.errors.Error as exc:  # redelivered later, then skipped as already applied
                    log.warning("could not ack input", error=str(exc), subject=msg.subject)

    def _process(self, msg: Msg, batch: codec.ReadingBatch, now_ms: int) -> tuple[Outputs, dict[str, str]]:
        """Run `batch` through the engine in a CONSUMER span; its outputs and the trace headers they carry."""
        unrecorded = telemetry.unsampled_child_context(msg.headers, self.tracer)
        if unrecorded is not None:  # the sampler would drop the span: its trace goes on without it being made
            return self.engine.process(batch, now_ms), telemetry.headers_of(unrecorded)
        attributes = {**telemetry.consumer_attributes(msg, self.durable), "fleetflow.device": batch.device,
                      "fleetflow.readings": len(batch.readings)}  # fmt: skip
        span = self.tracer.start_span(
            f"process {self.pipeline}", telemetry.extract(msg.headers), SpanKind.CONSUMER, attributes
        )
        if span.is_recording():
            with use_span(span, end_on_exit=True, record_exception=True, set_status_on_exception=True):
                return self.engine.process(batch, now_ms), telemetry.inject({})
        # Not sampled: nothing will see the span, but its trace goes on with the outputs. Making it current
        # and injecting from there cost more than the rest of the span's work together.
        return self.engine.process(batch, now_ms), telemetry.headers_of(span.get_span_context())

    async def tick(self) -> None:
        """Close idle windows and checkpoint, each on its own interval."""
        now = self.clock()
        if now >= self._next_advance:
            self._next_advance = now + ADVANCE_INTERVAL
            out = self.engine.advance(int(now * 1000))
            if out:
                await self.publish(records.messages(self.fleet, self.pipeline, None, out))
                self._saved_seq = -1  # the state changed without a new input
        if now >= self._next_checkpoint:
            self._next_checkpoint = now + self.checkpoint_interval
            await self.checkpoint()
            self._next_checkpoint = next_checkpoint_at(now, self.checkpoint_interval, self._checkpoint_seconds)
        self.error_log.flush(now)

    async def checkpoint(self) -> None:
        if self._saved_seq == self.engine.state.applied_seq:
            return
        started = time.perf_counter()
        try:
            size = await self.checkpoints.save(self.engine.state)
        except (nats.errors.Error, OSError) as exc:  # the next tick tries again; replay covers the gap
            self.checkpoint_failures.add(1)
            log.warning("checkpoint failed", error=str(exc))
            return
        self._saved_seq = self.engine.state.applied_seq
        self._checkpoint_seconds = time.perf_counter() - started
        self.checkpoint_bytes.record(size)
        self.checkpoint_duration.record(self._checkpoint_seconds)

    async def publish(self, messages: list[records.Message]) -> None:
        """Publish and wait for every ack, retrying failures; PublishFailed if JetStream keeps refusing."""
        for start in range(0, len(messages), PUBLISH_CHUNK):
            await self._publish_chunk(messages[start : start + PUBLISH_CHUNK])

    async def _publish_chunk(self, messages: list[records.Message]) -> None:
        # One PRODUCER span per output of a traced input, a child of the span that produced it, open until
        # JetStream acks it; the message carries the PRODUCER span's context, so the writer continues from there.
        # (Windows closed by the clock have no input, so no trace to continue.)
        spans: dict[int, Span] = {}
        headers = {id(m): self._headers(m, spans) for m in messages}
        try:
            await self._publish_attempts(messages, spans, headers)
        finally:
            for span in spans.values():
                span.end()

    def _headers(self, message: records.Message, spans: dict[int, Span]) -> dict[str, str]:
        """The headers `message` is sent with, every attempt; its PRODUCER span goes into `spans`.

        An output of an unsampled span would get an unsampled PRODUCER span (see telemetry.unsampled), which
        records nothing: it gets the headers that span would inject, without the span."""
        headers = message.headers
        if not message.trace:
            return headers
        if telemetry.unsampled(headers):
            return telemetry.unsampled_child(headers)
        span = spans[id(message)] = self._send_span(message)
        return telemetry.inject(headers, set_span_in_context(span))

    def _send_span(self, message: records.Message) -> Span:
        attributes = telemetry.producer_attributes(message.subject, message.msg_id)
        name = f"send {message.subject.rsplit('.', 1)[0]}"
        return self.tracer.start_span(name, telemetry.extract(dict(message.trace)), SpanKind.PRODUCER, attributes)

    async def _publish_attempts(
        self, messages: list[records.Message], spans: dict[int, Span], headers: dict[int, dict[str, str]]
    ) -> None:
        remaining = messages
        for attempt in range(1, PUBLISH_ATTEMPTS + 1):
            results = await self._publish_all(remaining, lambda m: headers[id(m)])
            failed = []
            published: Counter[tuple[str, bool]] = Counter()
            for message, result in zip(remaining, results, strict=True):
                if isinstance(result, BaseException):
                    failed.append((message, result))
                else:
                    published[(message.record, bool(result.duplicate))] += 1
            for (record, duplicate), n in published.items():
                self.published.add(n, {"record": record, "duplicate": str(duplicate).lower()})
            if not failed:
                return
            for message, error in failed:
                if span := spans.get(id(message)):
                    span.set_status(StatusCode.ERROR, f"attempt {attempt}: {type(error).__name__}: {error}")
            remaining = [message for message, _ in failed]
            log.warning("publish failed; retrying", failed=len(failed), attempt=attempt, error=str(failed[0][1]),
                        subject=failed[0][0].subject)  # fmt: skip
            await asyncio.sleep(redelivery_delay(attempt))
        raise PublishFailed(f"{len(remaining)} outputs, e.g. to {remaining[0].subject}, were not accepted")

    async def _publish_all(
        self, messages: list[records.Message], headers: Callable[[records.Message], dict[str, str]]
    ) -> list[Ack | BaseException]:
        """Send every message, then wait for their acks together: each one's ack, or why it has none.

        One reply subscription resolves every ack, without a task per message; nats-py's publish_async, which
        did the same before, also paid a NUID, os.urandom, asyncio.wait_for and a JSON decode per message."""
        sent = await self.acks.publish_all(((m.subject, m.data, headers(m)) for m in messages), PUBLISH_TIMEOUT)
        return [TimeoutError(f"no ack from JetStream within {PUBLISH_TIMEOUT} s") if s is None else s for s in sent]

    def _count(self, tally: FetchTally) -> None:
        if tally.processed:
            self.batches.add(tally.processed, {"outcome": "processed"})
        if tally.removed:
            self.removed.add(tally.removed)
        out = tally.outputs
        for (step, outcome), n in out.counts.items():
            self.step_readings.add(n, {"step": step, "outcome": outcome})
        for (step, reason), n in out.errors.items():
            self.evaluation_errors.add(n, {"pipeline": self.pipeline, "step": step, "reason": reason})
        if out.errors:
            self.error_log.record(out.errors, out.error_examples, self.clock())

    async def _replay_lost_deliveries(self) -> bool:
        """A fetch that fails (e.g. a 503 while nats-server shuts down) drops what the server had already
        delivered to it. Those messages come back only after ack_wait, behind later ones, and would then be
        skipped as already applied; so apply them now, in stream order, by the same replay as at start.
        False while NATS cannot be asked (try again later)."""
        try:
            replayed = await self._catch_up()
        except nats.errors.Error as exc:
            log.warning("cannot replay deliveries a failed fetch lost yet; retrying", error=str(exc))
            return False
        if replayed:
            log.info("replayed deliveries a failed fetch lost", replayed=replayed, consumer=self.durable)
        return True

    async def _catch_up(self) -> int:
        """Replay inputs after the checkpoint that the durable consumer had delivered before we started."""
        info = await self.js.consumer_info(self.stream, self.durable)
        target = info.delivered.stream_seq or 0
        start = self.engine.state.applied_seq + 1
        if target < start:
            return 0
        name = f"{self.durable}-replay-{uuid.uuid4().hex[:8]}"
        config = ConsumerConfig(
            name=name,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=start,
            ack_policy=AckPolicy.NONE,
            filter_subjects=self.filters,
            inactive_threshold=60.0,
            mem_storage=True,
        )
        await self.js.add_consumer(self.stream, config)
        try:
            return await self._replay(name, target)
        finally:
            try:
                await self.js.delete_consumer(self.stream, name)
            except nats.errors.Error as exc:  # it expires by itself after inactive_threshold
                log.warning("could not delete replay consumer", consumer=name, error=str(exc))

    async def _replay(self, consumer: str, target: int) -> int:
        sub = await self.js.pull_subscribe_bind(consumer, self.stream)
        replayed, expected = 0, 1
        try:
            while ((await sub.consumer_info()).num_pending or 0) > 0:
                try:
                    msgs = await pull.fetch(sub, self.fetch_batch, timeout=1.0)
                except (TimeoutError, nats.errors.TimeoutError):
                    continue
                for msg in msgs:
                    assert msg.metadata is not None
                    if msg.metadata.sequence.consumer != expected:  # without acks, a lost message is a gap
                        raise RuntimeError(f"replay of {self.stream} skipped from {expected} "
                                           f"to {msg.metadata.sequence.consumer}; restart to replay again")  # fmt: skip
                    expected += 1
                due = [m for m in msgs if m.metadata and m.metadata.sequence.stream <= target]
                await self.handle(due, ack=False)
                replayed += len(due)
                if len(due) < len(msgs) or (due and due[-1].metadata and due[-1].metadata.sequence.stream >= target):
                    break
            return replayed
        finally:
            await sub.unsubscribe()
