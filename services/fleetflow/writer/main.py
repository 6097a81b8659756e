"""`fleetflow writer`: store a pipeline's records until SIGTERM, acknowledging only what was committed."""

import asyncio
import contextlib
import time
from pathlib import Path

import structlog

from fleetflow.runtime import jetstream, logs, ops, service, subjects, telemetry
from fleetflow.runtime.consumer import BatchConsumer, DeadLetters
from fleetflow.runtime.lag import ConsumerLag
from fleetflow.runtime.settings import WriterSettings
from fleetflow.writer import command_log
from fleetflow.writer.command_log import CommandLogWriter
from fleetflow.writer.persist import RecordWriter
from fleetflow.writer.stores import TelemetryStore, open_store
from fleetflow.writer.stores.opening import open_until_stopped

log = structlog.get_logger(__name__)
EXPIRY_INTERVAL = 60.0


async def expire_periodically(store: TelemetryStore, stop: asyncio.Event) -> None:
    while not stop.is_set():
        removed = await store.expire(int(time.time() * 1000))
        if removed:
            log.info("expired readings past the sink's ttl", rows=removed)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), EXPIRY_INTERVAL)


async def serve(settings: WriterSettings, stop: asyncio.Event) -> None:
    fleet, pipeline = settings.fleet, settings.pipeline
    meter = telemetry.configure("writer", fleet=fleet.name, pipeline=pipeline.name)
    store = open_store(pipeline, settings.sqlite_path, settings.cassandra_credentials_dir)
    consumer: BatchConsumer | None = None
    nc = None

    def ready() -> tuple[bool, str]:
        if consumer is None:
            return False, f"opening the {pipeline.spec.sink.kind} store"
        if nc is None or not nc.is_connected:
            return False, "NATS is not connected"
        return (True, "consuming") if consumer.subscribed else (False, "not yet subscribed")

    # Health endpoints come up first, so a writer waiting for its store is alive but not ready.
    ops_runner, ops_port = await ops.start_site(ops.ops_app(ready), settings.ops_host, settings.ops_port)
    service.write_status(settings.status_file, {"ops_port": ops_port})
    if not await open_until_stopped(store, stop):
        await ops_runner.cleanup()
        return
    nc = await jetstream.connect(
        settings.nats_url, f"fleetflow-writer-{pipeline.name}", login=settings.nats_login(), tls=settings.nats_tls()
    )
    js = nc.jetstream()
    await jetstream.provision_fleet(js, fleet, settings.site)
    await jetstream.provision_pipeline(js, fleet, pipeline, settings.site)
    consumer = BatchConsumer(
        js,
        subjects.pipeline_stream(fleet.name, pipeline.name),
        subjects.writer_consumer(pipeline.name),
        RecordWriter(store, meter, subjects.writer_consumer(pipeline.name)).handle,
        DeadLetters(js, fleet.name, f"writer-{pipeline.name}"),
        pipeline.spec.delivery.max_deliver,
        pipeline.spec.writer.batch_messages,
        sole=settings.sole_consumer,
    )
    await command_log.provision(js, fleet, pipeline)
    commands = BatchConsumer(
        js,
        subjects.command_state_stream(fleet.name),
        subjects.command_log_consumer(pipeline.name),
        CommandLogWriter(store, fleet.name).handle,
        DeadLetters(js, fleet.name, subjects.command_log_consumer(pipeline.name)),
        pipeline.spec.delivery.max_deliver,
        pipeline.spec.writer.batch_messages,
        sole=settings.sole_consumer,
    )
    lag = ConsumerLag(js, meter, [(consumer.stream, consumer.durable), (commands.stream, commands.durable)])
    tasks = [asyncio.create_task(consumer.run(stop)), asyncio.create_task(commands.run(stop)),
             asyncio.create_task(expire_periodically(store, stop)), asyncio.create_task(lag.poll(stop))]  # fmt: skip
    service.freeze_startup_heap()
    service.collect_young_less_often()
    log.info("writer ready", ops_port=ops_port, sink=pipeline.spec.sink.kind)
    await asyncio.gather(*tasks)
    await nc.drain()
    await store.close()
    await ops_runner.cleanup()
    log.info("writer stopped")


def main(config: Path | None) -> int:
    settings = WriterSettings.load(config)
    logs.configure(settings.log_level, settings.log_format, service="writer",
                   fleet=settings.fleet.name, pipeline=settings.pipeline.name)  # fmt: skip
    return service.run(lambda stop: serve(settings, stop))
