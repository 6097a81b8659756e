"""`fleetflow gateway`: serve the device API for one fleet until SIGTERM, then drain."""

import asyncio
from pathlib import Path

import nats.errors
import structlog

from fleetflow.gateway.buffer import BufferedPublisher
from fleetflow.gateway.connectivity import Connectivity
from fleetflow.gateway.http import TelemetryApi
from fleetflow.runtime import certificates, httpserver, jetstream, logs, ops, service, telemetry
from fleetflow.runtime.settings import GatewaySettings

log = structlog.get_logger(__name__)
# A buffer that holds batches this long without shrinking while NATS is connected is stuck: say so in /readyz.
BUFFER_STALL_S = 30.0


async def serve(settings: GatewaySettings, stop: asyncio.Event) -> None:
    fleet = settings.fleet
    meter = telemetry.configure("gateway", fleet=fleet.name)
    device_tls = httpserver.tls_context(
        settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file,
        settings.device_certificates_required,
    )  # fmt: skip
    if settings.tls_cert_file is not None:  # the HTTP and gRPC listeners serve the same certificate
        certificates.record_file("gateway", settings.tls_cert_file)
    watch = jetstream.ConnectionWatch()
    nc = await jetstream.connect(
        settings.nats_url,
        f"fleetflow-gateway-{fleet.name}",
        on_state=watch.update,
        login=settings.nats_login(),
        tls=settings.nats_tls(),
    )
    await jetstream.provision_fleet(nc.jetstream(), fleet, settings.site)
    links = await Connectivity.start(settings, nc, watch, meter)  # intake, commands, gRPC, MQTT, buffer
    telemetry_api = TelemetryApi(links.intake)
    app = telemetry_api.app()
    links.add_routes(app)

    def ready() -> tuple[bool, str]:
        # While its outage buffer has room the gateway still takes telemetry, so it must stay behind its
        # Service: failing readiness would turn buffered acks into refused connections.
        publisher = links.publisher
        if not isinstance(publisher, BufferedPublisher):
            return (True, "connected") if nc.is_connected else (False, "NATS is not connected")
        buffer = publisher.buffer
        if nc.is_connected:
            stalled = publisher.stalled_for()
            if stalled > BUFFER_STALL_S:
                return False, (f"the outage buffer is not draining: {len(buffer)} batches waiting, no progress "
                               f"for {stalled:.0f} s although NATS is connected")  # fmt: skip
            return True, "connected"
        if buffer.has_room(fleet.spec.gateway.max_body_bytes):
            return True, f"NATS is not connected; buffering to disk ({buffer.bytes} of {buffer.max_bytes} bytes)"
        return False, "NATS is not connected and the outage buffer is full"

    ops_runner, ops_port = await ops.start_site(ops.ops_app(ready), settings.ops_host, settings.ops_port)
    api_runner, api_port = await httpserver.start_device_site(
        app,
        settings.listen_host,
        settings.listen_port,
        device_tls,
        hot_route=telemetry_api.hot_route(),
    )
    service.freeze_startup_heap()
    service.collect_young_less_often()
    service.write_status(settings.status_file, {"http_port": api_port, "ops_port": ops_port, **links.ports})
    log.info("gateway ready", http_port=api_port, ops_port=ops_port)
    await stop.wait()
    log.info("gateway stopping: no new requests, finishing those in flight")
    await api_runner.cleanup()  # stops listening, then waits for in-flight requests
    await links.close()
    try:
        await nc.drain()
    except nats.errors.ConnectionReconnectingError:  # stopping during an outage: nothing can be flushed
        await nc.close()
    await ops_runner.cleanup()
    log.info("gateway stopped")


def main(config: Path | None) -> int:
    settings = GatewaySettings.load(config)
    logs.configure(settings.log_level, settings.log_format, service="gateway", fleet=settings.fleet.name)
    return service.run(lambda stop: serve(settings, stop))
