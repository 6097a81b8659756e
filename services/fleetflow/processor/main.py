"""`fleetflow processor`: consume this replica's telemetry partitions until SIGTERM, then finish the batch."""

import asyncio
from pathlib import Path

import structlog

from fleetflow.processor.forward import Forwarder
from fleetflow.runtime import jetstream, logs, ops, service, subjects, telemetry
from fleetflow.runtime.consumer import BatchConsumer, DeadLetters
from fleetflow.runtime.settings import ProcessorSettings

log = structlog.get_logger(__name__)


async def serve(settings: ProcessorSettings, stop: asyncio.Event) -> None:
    fleet, pipeline = settings.fleet, settings.pipeline
    meter = telemetry.configure("processor", fleet=fleet.name, pipeline=pipeline.name)
    nc = await jetstream.connect(settings.nats_url, f"fleetflow-processor-{pipeline.name}-{settings.replica}")
    js = nc.jetstream()
    await jetstream.provision_fleet(js, fleet)
    await jetstream.provision_pipeline(js, fleet, pipeline)
    consumer = BatchConsumer(
        js,
        subjects.telemetry_stream(fleet.name),
        subjects.processor_consumer(pipeline.name, settings.replica),
        Forwarder(js, pipeline, meter).handle,
        DeadLetters(js, fleet.name, f"processor-{pipeline.name}"),
        pipeline.spec.delivery.max_deliver,
        settings.fetch_batch,
    )

    def ready() -> tuple[bool, str]:
        if not nc.is_connected:
            return False, "NATS is not connected"
        return (True, "consuming") if consumer.subscribed else (False, "not yet subscribed")

    ops_runner, ops_port = await ops.start_site(ops.ops_app(ready), settings.ops_host, settings.ops_port)
    task = asyncio.create_task(consumer.run(stop))
    service.write_status(settings.status_file, {"ops_port": ops_port})
    log.info("processor ready", replica=settings.replica, ops_port=ops_port)
    await task
    await nc.drain()
    await ops_runner.cleanup()
    log.info("processor stopped")


def main(config: Path | None) -> int:
    settings = ProcessorSettings.load(config)
    logs.configure(settings.log_level, settings.log_format, service="processor",
                   fleet=settings.fleet.name, pipeline=settings.pipeline.name)  # fmt: skip
    return service.run(lambda stop: serve(settings, stop))
