"""NATS connection and idempotent provisioning of a fleet's streams and a pipeline's durable consumers."""

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import nats
import nats.errors
import structlog
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    SubjectTransform,
)
from nats.js.errors import NotFoundError

from fleetflow.api import DeviceFleet, Pipeline
from fleetflow.runtime import edgelink, subjects
from fleetflow.runtime.natsauth import NatsLogin

log = structlog.get_logger(__name__)


async def connect(
    url: str,
    name: str,
    on_state: Callable[[bool], Awaitable[None] | None] | None = None,
    login: NatsLogin | None = None,
    tls: ssl.SSLContext | None = None,
) -> Client:
    """Connect with unlimited reconnects, as `login` if given, over TLS verified by `tls` if given;
    `on_state(connected)` hears about outages."""

    async def disconnected() -> None:
        log.warning("nats disconnected", url=url)
        if on_state:
            await _maybe_await(on_state(False))

    async def reconnected() -> None:
        log.info("nats reconnected", url=url)
        if on_state:
            await _maybe_await(on_state(True))

    async def error(exc: Exception) -> None:
        log.warning("nats error", error=str(exc))

    return await nats.connect(
        url,
        name=name,
        user=login.user if login else None,
        password=login.password if login else None,
        tls=tls,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        connect_timeout=5,
        allow_reconnect=True,
        disconnected_cb=disconnected,
        reconnected_cb=reconnected,
        error_cb=error,
        pending_size=64 * 1024 * 1024,
    )


class ConnectionWatch:
    """Knows when the NATS connection drops. nats-py keeps waiting for an answer to a request sent on a
    connection that has since dropped until the request times out; `lost` lets a waiter give up at once, and
    `call_when_lost` lets a request give up without a task of its own racing the event."""

    def __init__(self) -> None:
        self.lost = asyncio.Event()
        self._on_lost: set[Callable[[], None]] = set()

    def update(self, connected: bool) -> None:
        if connected:
            self.lost = asyncio.Event()  # the last outage's waiters already woke; new ones wait for the next
        else:
            self.lost.set()
            for callback in list(self._on_lost):
                callback()

    def call_when_lost(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call `callback` whenever the connection drops, until the returned function is called."""
        self._on_lost.add(callback)
        return lambda: self._on_lost.discard(callback)


async def _maybe_await(value: Awaitable[None] | None) -> None:
    if value is not None:
        await value


def fleet_streams(fleet: DeviceFleet, site: str | None = None) -> list[StreamConfig]:
    """The fleet's streams: telemetry (partitioned by device), commands, alerts and dead letters. In the centre
    (`site` None) the telemetry stream sources the fleet's edge sites; at a site it keeps to the site's budget, and
    the command stream also takes the commands the centre pushes to the site's devices."""
    name, spec = fleet.name, fleet.spec.streams
    common: dict[str, Any] = {
        "retention": RetentionPolicy.LIMITS,
        "storage": StorageType.FILE,
        "num_replicas": spec.replicas,
        "max_age": spec.max_age_seconds,
        "discard": DiscardPolicy.OLD,
        "duplicate_window": spec.duplicate_window_seconds,
    }
    # The stream rewrites ff.<fleet>.tm.<device> to ff.<fleet>.tm.<partition>.<device>, so every device's
    # readings land in one partition and each processor replica can filter on its own partitions.
    partition = SubjectTransform(
        src=f"ff.{name}.{subjects.TELEMETRY}.*",
        dest=f"ff.{name}.{subjects.TELEMETRY}.{{{{partition({spec.partitions},1)}}}}.{{{{wildcard(1)}}}}",
    )
    telemetry = StreamConfig(
        name=subjects.telemetry_stream(name),
        description=f"Telemetry batches of fleet {name}",
        subjects=[f"ff.{name}.{subjects.TELEMETRY}.*"],
        subject_transform=partition,
        max_bytes=spec.max_bytes_value,
        sources=edgelink.telemetry_sources(fleet) or None,  # the fleet's edge sites (docs/edge.md)
        **common,
    )
    commands = StreamConfig(
        name=subjects.commands_stream(name),
        description=f"Commands to devices of fleet {name}",
        subjects=[f"ff.{name}.cmd.>"],
        allow_direct=True,  # a connecting device's backlog is read by direct get, without a consumer each
        **common,
    )
    if site is not None:
        telemetry = edgelink.site_telemetry(telemetry, edgelink.find_site(fleet, site))
        commands = edgelink.site_commands(commands, fleet.name, site)
    return [
        telemetry,
        commands,
        StreamConfig(
            name=subjects.alerts_stream(name),
            description=f"Alert events of fleet {name}",
            subjects=[f"ff.{name}.alert.>"],
            **common,
        ),
        StreamConfig(
            name=subjects.dead_letter_stream(name),
            description=f"Messages of fleet {name} that could not be processed, with the reason in a header",
            subjects=[f"ff.{name}.dlq.>"],
            **common,
        ),
    ]


def pipeline_streams(fleet: DeviceFleet, pipeline: Pipeline, site: str | None = None) -> list[StreamConfig]:
    """The stream that carries a pipeline's processed records to its writer; in the centre, an edge pipeline's
    sources the records its sites forward.

    No max_bytes: JetStream reserves a stream's max_bytes from the server's store when the stream is created,
    so a byte limit per pipeline would use up a managed NATS volume after a pipeline or two. The stream is
    bounded by max_age instead."""
    spec = fleet.spec.streams
    return [
        StreamConfig(
            name=subjects.pipeline_stream(fleet.name, pipeline.name),
            description=f"Processed records of pipeline {pipeline.name}",
            subjects=[f"ff.{fleet.name}.pl.{pipeline.name}.>"],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            num_replicas=spec.replicas,
            max_age=spec.max_age_seconds,
            max_bytes=-1,  # explicit, so that updating a stream made with a byte limit lifts it
            duplicate_window=spec.duplicate_window_seconds,
            sources=(edgelink.record_sources(fleet, pipeline.name) or None) if site is None else None,
        )
    ]


def partitions_of(replica: int, replicas: int, partitions: int) -> list[int]:
    """The telemetry partitions a processor replica owns: every partition p with p % replicas == replica."""
    return [p for p in range(partitions) if p % replicas == replica]


def processor_consumer(fleet: DeviceFleet, pipeline: Pipeline, replica: int) -> ConsumerConfig:
    delivery = pipeline.spec.delivery
    owned = partitions_of(replica, pipeline.spec.processor.replicas, fleet.spec.streams.partitions)
    return ConsumerConfig(
        durable_name=subjects.processor_consumer(pipeline.name, replica),
        description=f"Processor replica {replica} of pipeline {pipeline.name}",
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=delivery.ack_wait_seconds,
        max_deliver=delivery.max_deliver,
        max_ack_pending=delivery.max_ack_pending,
        filter_subjects=[subjects.telemetry_partition_filter(fleet.name, p) for p in owned],
    )


def writer_consumer(fleet: DeviceFleet, pipeline: Pipeline) -> ConsumerConfig:
    delivery = pipeline.spec.delivery
    return ConsumerConfig(
        durable_name=subjects.writer_consumer(pipeline.name),
        description=f"Writer of pipeline {pipeline.name}",
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=delivery.ack_wait_seconds,
        max_deliver=delivery.max_deliver,
        max_ack_pending=delivery.max_ack_pending,
        filter_subject=f"ff.{fleet.name}.pl.{pipeline.name}.>",
    )


async def ensure_stream(js: JetStreamContext, config: StreamConfig) -> str:
    """Create the stream or bring it to `config`; returns "created", "updated" or "unchanged"."""
    assert config.name is not None
    try:
        current = await js.stream_info(config.name)
    except NotFoundError:
        await js.add_stream(config)
        log.info("stream created", stream=config.name)
        return "created"
    if _differs(current.config.as_dict(), config.as_dict()):
        await js.update_stream(config)
        log.info("stream updated", stream=config.name)
        return "updated"
    return "unchanged"


async def ensure_consumer(js: JetStreamContext, stream: str, config: ConsumerConfig) -> str:
    """Create the durable consumer or bring it to `config`; returns "created", "updated" or "unchanged"."""
    assert config.durable_name is not None
    try:
        current = await js.consumer_info(stream, config.durable_name)
    except NotFoundError:
        await js.add_consumer(stream, config)
        log.info("consumer created", stream=stream, consumer=config.durable_name)
        return "created"
    if _differs(current.config.as_dict(), config.as_dict()):
        # Adding a consumer with an existing durable name updates its editable fields.
        await js.add_consumer(stream, config)
        log.info("consumer updated", stream=stream, consumer=config.durable_name)
        return "updated"
    return "unchanged"


async def resume_from_ack_floor(js: JetStreamContext, stream: str, durable: str) -> int:
    """Have the durable consumer deliver again from its ack floor, at once and in stream order; returns how many
    messages were delivered and unacknowledged. Call it only as the consumer's sole client, before fetching:
    what is unacknowledged then was delivered to a predecessor that crashed. Without this, JetStream would
    redeliver those messages only after ack_wait, behind newer ones, and a drain would wait that long too.
    A server older than 2.14 lacks the reset; then the messages come back after ack_wait, as before."""
    try:
        info = await js.consumer_info(stream, durable)
        held = info.num_ack_pending or 0
        if held:
            await js.reset_consumer(stream, durable)
            log.info("consumer resumed from its ack floor", stream=stream, consumer=durable, redelivered=held,
                     ack_floor=info.ack_floor.stream_seq if info.ack_floor else 0)  # fmt: skip
        return held
    except nats.errors.Error as exc:
        log.warning("could not resume consumer from its ack floor; unacknowledged messages return after ack_wait",
                    stream=stream, consumer=durable, error=str(exc))  # fmt: skip
        return 0


def _differs(current: dict[str, Any], wanted: dict[str, Any]) -> bool:
    return any(current.get(key) != value for key, value in wanted.items() if value is not None)


async def provision_fleet(js: JetStreamContext, fleet: DeviceFleet, site: str | None = None) -> dict[str, str]:
    """The fleet's streams in the centre (`site` None) or at one of its edge sites."""
    return {cfg.name or "": await ensure_stream(js, cfg) for cfg in fleet_streams(fleet, site)}


async def provision_pipeline(
    js: JetStreamContext, fleet: DeviceFleet, pipeline: Pipeline, site: str | None = None
) -> dict[str, str]:
    """The pipeline's stream, one processor consumer per replica, and the writer consumer. An edge pipeline has no
    processors in the centre (they run at its sites), only the writer of the records the sites forward."""
    outcome = {cfg.name or "": await ensure_stream(js, cfg) for cfg in pipeline_streams(fleet, pipeline, site)}
    telemetry = subjects.telemetry_stream(fleet.name)
    processors = site is not None or pipeline.name not in edgelink.edge_pipelines(fleet)
    for replica in range(pipeline.spec.processor.replicas if processors else 0):
        config = processor_consumer(fleet, pipeline, replica)
        outcome[f"{telemetry}/{config.durable_name}"] = await ensure_consumer(js, telemetry, config)
    out_stream = subjects.pipeline_stream(fleet.name, pipeline.name)
    config = writer_consumer(fleet, pipeline)
    outcome[f"{out_stream}/{config.durable_name}"] = await ensure_consumer(js, out_stream, config)
    return outcome
