"""Everything the gateway offers devices besides HTTP telemetry: commands, their expiry and (in the centre of edge
sites) their forwarding to the sites, and the other protocols (gRPC, MQTT, WebSocket, CoAP). `serve()` in main.py
starts it once and closes it on shutdown."""

import asyncio
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiohttp import web
from nats.aio.client import Client
from opentelemetry.metrics import Meter

from fleetflow.gateway.buffer import BufferedPublisher, DiskBuffer
from fleetflow.gateway.coap import CoapDeviceApi
from fleetflow.gateway.coap import start_server as start_coap_server
from fleetflow.gateway.command_api import CommandApi
from fleetflow.gateway.command_expiry import CommandExpirer
from fleetflow.gateway.command_sessions import CommandSessions
from fleetflow.gateway.command_sites import SiteCommandForwarder
from fleetflow.gateway.grpc_api import DeviceGatewayService, start_server, tls_credentials
from fleetflow.gateway.intake import DeviceIntake
from fleetflow.gateway.mqtt_auth import MqttAuthorizer
from fleetflow.gateway.mqtt_bridge import MqttBridge
from fleetflow.gateway.publisher import TelemetryPublisher
from fleetflow.gateway.sessions import DeviceSessions
from fleetflow.gateway.ws import WebSocketApi
from fleetflow.runtime import cancellation, credentials, jetstream
from fleetflow.runtime.commands import CommandStore
from fleetflow.runtime.jetstream import ConnectionWatch
from fleetflow.runtime.settings import GatewaySettings

log = structlog.get_logger(__name__)
# How long a background task (MQTT bridge, command expiry, ...) has to end by itself on shutdown before it is
# cancelled.
TASK_STOP_S = 5.0


@dataclass
class Connectivity:
    intake: DeviceIntake  # what every protocol hands telemetry to
    commands: CommandApi
    websockets: WebSocketApi
    ports: dict[str, int] = field(default_factory=dict)
    _tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    _closers: list[Any] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    async def start(cls, settings: GatewaySettings, nc: Client, watch: ConnectionWatch, meter: Meter) -> "Connectivity":
        fleet = settings.fleet
        js = nc.jetstream()
        secret = credentials.read_secret(settings.secret_file)
        previous = credentials.read_previous_secret(settings.secret_file)  # during a rotation's overlap
        store = await CommandStore.open(js, fleet.name)
        budgeted = settings.site is not None  # an edge site's telemetry stream refuses new batches when full
        publisher = TelemetryPublisher(nc, meter, settings.max_publishes_in_flight, budgeted)
        if settings.buffer_dir is not None:
            buffer = DiskBuffer(settings.buffer_dir, settings.buffer_max_bytes)
            publisher = BufferedPublisher(nc, watch, meter, settings.max_publishes_in_flight, buffer, budgeted)
        intake = DeviceIntake(fleet, secret, publisher, meter, previous_secret=previous)
        sessions = CommandSessions(nc, store, fleet.spec.gateway.max_streams_per_device, meter)
        await sessions.start()
        commands = CommandApi(fleet, secret, js, store, sessions, meter, previous_secret=previous)
        pushed = DeviceSessions(meter)  # one per device, across WebSocket and CoAP
        websockets = WebSocketApi(intake, pushed, sessions, store, commands.commands_delivered, settings.ws_heartbeat)
        links = cls(intake=intake, commands=commands, websockets=websockets)
        links._closers.append(sessions.close)  # closers run last to first: this one after the device listeners
        if isinstance(publisher, BufferedPublisher):
            links._tasks.append(asyncio.create_task(publisher.run(links._stop)))
        links._tasks.append(asyncio.create_task(CommandExpirer(js, store).run(links._stop)))
        if settings.site is None and fleet.spec.sites:  # the centre of edge sites: their devices' commands go there
            links._tasks.append(asyncio.create_task(SiteCommandForwarder(nc, store, fleet).run(links._stop)))
        if settings.mqtt_issuer_seed_file is not None:
            seed = settings.mqtt_issuer_seed_file.read_bytes().strip()
            callout = await links._callout_connection(settings, nc)
            links._closers.append(
                (await MqttAuthorizer(fleet, secret, seed, meter, previous).subscribe(callout)).unsubscribe
            )
            bridge = MqttBridge(nc, fleet, intake, store, sessions, sole=settings.sole_consumer)
            links._tasks.append(asyncio.create_task(bridge.run(links._stop)))
        if settings.grpc_port is not None:
            await links._start_grpc(settings, sessions, store)
        if settings.coap_port is not None and settings.device_certificates_required:
            # CoAP has no DTLS here (coap.py): it could only take tokens, which this fleet does not accept.
            log.info("CoAP is off: this fleet requires device certificates, which CoAP without DTLS cannot carry")
        elif settings.coap_port is not None:
            coap = CoapDeviceApi(intake, pushed, sessions, store, commands.commands_delivered)
            await links._start_coap(settings, coap)
        return links

    @property
    def publisher(self) -> TelemetryPublisher:
        return self.intake.publisher

    async def _callout_connection(self, settings: GatewaySettings, nc: Client) -> Client:
        """Where the MQTT auth callout is answered: a connection of its own where the callout has its own
        account (local mode), else the gateway's connection."""
        login = settings.nats_callout_login()
        if login is None:
            return nc
        callout = await jetstream.connect(
            settings.nats_url, f"fleetflow-gateway-{settings.fleet.name}-auth", login=login
        )
        self._closers.append(callout.close)  # closers run in reverse: after the subscription is gone
        return callout

    async def _start_grpc(self, settings: GatewaySettings, sessions: CommandSessions, store: CommandStore) -> None:
        tls = tls_credentials(settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file,
                              settings.device_certificates_required)  # fmt: skip
        service = DeviceGatewayService(self.intake, sessions, store)
        server, port = await start_server(service, settings.listen_host, settings.grpc_port or 0, tls,
                                          settings.fleet.spec.gateway.max_body_bytes)  # fmt: skip
        self.ports["grpc_port"] = port

        async def stop_grpc() -> None:
            await server.stop(grace=settings.drain_timeout / 2)

        self._closers.append(stop_grpc)

    async def _start_coap(self, settings: GatewaySettings, api: CoapDeviceApi) -> None:
        context, port = await start_coap_server(api, settings.listen_host, settings.coap_port or 0)
        self.ports["coap_port"] = port

        async def stop_coap() -> None:
            await api.close()
            await context.shutdown()

        self._closers.append(stop_coap)

    def add_routes(self, app: web.Application) -> None:
        self.commands.add_routes(app)
        self.websockets.add_routes(app)

    async def close(self) -> None:
        """Stop listening and finish what is in flight (protocol servers first, then background tasks)."""
        for closer in reversed(self._closers):
            try:
                await closer()
            except Exception:  # e.g. NATS away: the subscription is gone with the connection anyway
                log.warning("closing a device listener failed", exc_info=True)
        self._stop.set()
        for task in self._tasks:
            ended, _ = await asyncio.wait({task}, timeout=TASK_STOP_S)
            if not ended:  # e.g. NATS away mid-call
                await cancellation.cancel_and_wait(task)
            elif not task.cancelled():
                task.result()  # a task that failed fails the gateway's stop
