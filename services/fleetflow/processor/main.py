"""`fleetflow processor`: run a Pipeline's steps over this replica's telemetry partitions until SIGTERM."""

import asyncio
import sys
from pathlib import Path

import structlog

from fleetflow.processor.compiler import PipelineCompileError, compile_pipeline
from fleetflow.processor.runner import Runner
from fleetflow.runtime import edgelink, jetstream, logs, ops, service, telemetry
from fleetflow.runtime.lag import ConsumerLag
from fleetflow.runtime.settings import ProcessorSettings

log = structlog.get_logger(__name__)


async def serve(settings: ProcessorSettings, stop: asyncio.Event) -> None:
    fleet, pipeline = settings.fleet, settings.pipeline
    compiled = compile_pipeline(pipeline, fleet)
    meter = telemetry.configure("processor", fleet=fleet.name, pipeline=pipeline.name)
    name = f"fleetflow-processor-{pipeline.name}-{settings.replica}"
    nc = await jetstream.connect(settings.nats_url, name, login=settings.nats_login(), tls=settings.nats_tls())
    js = nc.jetstream()
    await jetstream.provision_fleet(js, fleet, settings.site)
    await jetstream.provision_pipeline(js, fleet, pipeline, settings.site)
    runner = Runner(
        js, fleet, pipeline, compiled, settings.replica, meter, settings.fetch_batch, settings.checkpoint_interval
    )

    def ready() -> tuple[bool, str]:
        if not nc.is_connected:
            return False, "NATS is not connected"
        return (True, "consuming") if runner.ready else (False, "restoring state")

    ops_runner, ops_port = await ops.start_site(ops.ops_app(ready), settings.ops_host, settings.ops_port)
    try:
        await runner.start()
        service.freeze_startup_heap()
        service.write_status(settings.status_file, {"ops_port": ops_port})
        log.info("processor ready", replica=settings.replica, ops_port=ops_port, steps=len(compiled.steps))
        lag = ConsumerLag(js, meter, [(runner.stream, runner.durable)])
        await asyncio.gather(runner.run(stop), lag.poll(stop))
    finally:
        await nc.drain()
        await ops_runner.cleanup()
    log.info("processor stopped")


def main(config: Path | None) -> int:
    settings = ProcessorSettings.load(config)
    logs.configure(settings.log_level, settings.log_format, service="processor",
                   fleet=settings.fleet.name, pipeline=settings.pipeline.name)  # fmt: skip
    if settings.site is None and settings.pipeline.name in edgelink.edge_pipelines(settings.fleet):
        # Its consumers exist only at the sites; in the centre only its writer runs (docs/edge.md).
        problem = (f"pipeline {settings.pipeline.name!r} is an edge pipeline of fleet {settings.fleet.name!r} "
                   "(spec.sites[].pipelines): its processors run at its sites (fleetflow edge up)")  # fmt: skip
        log.error("edge pipeline started in the centre", problem=problem)
        print(f"fleetflow processor: {problem}", file=sys.stderr)
        return 2
    try:
        compile_pipeline(settings.pipeline, settings.fleet)
    except PipelineCompileError as exc:
        log.error("pipeline does not compile", problems=exc.problems)
        print(f"fleetflow processor: {exc}", file=sys.stderr)
        return 2
    return service.run(lambda stop: serve(settings, stop))
