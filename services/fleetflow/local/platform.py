"""The local platform: embedded NATS JetStream plus the gateway, processor and writer as child processes."""

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import nats.errors
import structlog
from aiohttp import web
from nats.aio.client import Client
from nats.js.errors import NotFoundError

from fleetflow.api import DeviceFleet, Pipeline
from fleetflow.api.devicefleet import max_payload_for
from fleetflow.appapi.keys import keys_file
from fleetflow.local import natslogins, private, scrape, sitelogins
from fleetflow.local.datadir import DataDirLock
from fleetflow.local.natsserver import LOCAL_MAX_PAYLOAD, EmbeddedNats
from fleetflow.local.ports import LOOPBACK, PortChoice
from fleetflow.local.processes import ServiceProcess
from fleetflow.local.resources import ResourceSet, central_resources
from fleetflow.local.sitelinks import SiteLinks
from fleetflow.local.sitemetrics import SiteMetrics
from fleetflow.local.sitestates import SiteStates
from fleetflow.local.supervisor import Supervisor
from fleetflow.runtime import config, credentials, edgelink, jetstream, natsauth, ops, subjects

log = structlog.get_logger(__name__)
# How long a start waits for what an earlier, killed run left unstored before its gateways accept anyway.
LEFTOVER_TIMEOUT_S = 60.0


@dataclass
class ConsumerState:
    stream: str
    consumer: str
    pending: int
    ack_pending: int
    redelivered: int

    @property
    def lag(self) -> int:
        return self.pending + self.ack_pending


@dataclass(frozen=True)
class DeviceTls:
    """The gateways' certificate and key (devices' HTTP, WebSocket and gRPC over TLS only) and, optionally, the CA
    of devices' client certificates (`fleetflow up --gateway-tls CERT KEY --device-ca CA`)."""

    certificate_and_key: tuple[Path, Path]
    device_ca: Path | None = None

    @property
    def device_ca_file(self) -> Path | None:
        return self.device_ca.resolve() if self.device_ca else None  # the services run elsewhere than `up`


class LocalPlatform:
    def __init__(self, resources: ResourceSet, data_dir: Path, nats_port: int | None = None,
                 leafnode_listen: tuple[str, int | None] | None = None,
                 leafnode_tls: tuple[Path, Path] | None = None, device_tls: DeviceTls | None = None):  # fmt: skip
        self.leafnode_tls = leafnode_tls  # (certificate, key) of the hub's leaf-node listener: sites dial tls://
        self.device_tls = device_tls
        self.site_name: str | None = None  # the edge site this platform is, if it is one (edgesite.py)
        self.resources = self._placed(resources)
        self.data_dir = data_dir.resolve()
        self.ports = PortChoice()
        max_payload = max_payload_for(list(resources.fleets.values()), floor=LOCAL_MAX_PAYLOAD)
        self.nats = EmbeddedNats(self.data_dir, nats_port, self.ports, max_payload)
        self._secure_mqtt()
        self.leafnode_url: str | None = None
        self._serve_sites(leafnode_listen)
        self.lock = DataDirLock(self.data_dir)
        self.services: list[ServiceProcess] = []
        self._stop_supervising = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None
        self._drained: bool | None = None
        self.carried_over = False  # an earlier run's readings were still being stored when the gateways opened
        self.site_links: SiteLinks | None = None
        self._site_watch: asyncio.Task[None] | None = None
        self.site_metrics: SiteMetrics | None = None  # a hub's: /metrics and /sites of its edge sites
        self.sites_url: str | None = None
        self._site_ops: web.AppRunner | None = None

    def _secure_mqtt(self) -> None:
        """With --gateway-tls, MQTT devices connect over TLS too, with the gateway's certificate. One MQTT listener
        serves every fleet here, and nats-server cannot ask for a certificate without requiring one: it requires
        device certificates when a fleet does (spec.gateway.tls.clientAuth.mode Required)."""
        if self.device_tls is None:
            return
        certificate, key = self.device_tls.certificate_and_key
        self.nats.mqtt_tls = (str(certificate.resolve()), str(key.resolve()))
        fleets = self.resources.fleets.values()
        if self.device_tls.device_ca_file and any(config.device_certificate_mode(f) == "Required" for f in fleets):
            self.nats.mqtt_device_ca = str(self.device_tls.device_ca_file)

    def _placed(self, resources: ResourceSet) -> ResourceSet:
        """What runs here: the centre's share (an edge site's platform runs its site's share)."""
        return central_resources(resources)

    def _serve_sites(self, leafnode_listen: tuple[str, int | None] | None) -> None:
        """Be the hub of the fleets' edge sites, if any (docs/edge.md): a JetStream domain and a leaf-node listener."""
        fleets = list(self.resources.fleets.values())
        if not any(fleet.spec.sites for fleet in fleets):
            return
        host, port = leafnode_listen or (LOOPBACK, None)
        port = port or self.ports.take()
        self.leafnode_url = f"{'tls' if self.leafnode_tls else 'nats'}://{host}:{port}"
        self.nats.domain = edgelink.HUB_DOMAIN
        self._leafnode_listen = (host, port)
        self._render_site_logins()

    def _render_site_logins(self) -> None:
        fleets = list(self.resources.fleets.values())
        self.nats.leafnodes, self.nats.linked_accounts = sitelogins.hub_leafnodes(
            self.data_dir, fleets, *self._leafnode_listen, self.leafnode_tls
        )

    def reload_site_logins(self) -> None:
        """Apply a revocation (`fleetflow edge revoke`) to the running NATS: the site's next connect is refused."""
        self._render_site_logins()
        self.nats.reload()

    @property
    def endpoints_file(self) -> Path:
        return self.data_dir / "endpoints.json"

    @property
    def pipelines_file(self) -> Path:
        """Where each pipeline stores, kept after a stop so `fleetflow query` reads the right store and tables."""
        return self.data_dir / "pipelines.json"

    def store_path(self, pipeline: Pipeline) -> Path:
        sink = pipeline.spec.sink
        return Path(sink.sqlite.path) if sink.sqlite and sink.sqlite.path else self.data_dir / "store.sqlite3"

    async def start(self, before_intake: Callable[[], Awaitable[object]] | None = None) -> dict[str, Any]:
        """Start everything, wait until each service is ready, and write endpoints.json. Raises DataDirInUse
        (before changing anything) if another `fleetflow up` runs on the data dir.

        `before_intake` is awaited once no gateway accepts yet and nothing acknowledged before this run is left
        to store: where `fleetflow up` counts what its stores hold, so that what it stores from then on is what
        this run's gateways acknowledge. Readings an earlier run that was killed left in JetStream are stored
        first, for at most LEFTOVER_TIMEOUT_S (`carried_over` says when some were still left after it)."""
        self.lock.acquire()
        private.make_private(self.data_dir)
        self.endpoints_file.unlink(missing_ok=True)  # a killed run's; it names ports nothing listens on
        await self.nats.start()
        await self._provision()
        gateways, others = self._gateways(), self._pipeline_services() + self._app_apis()
        self.services = gateways + others
        to_start = self.services
        if not self._sourcing_streams() and not await self._all_consumed():
            log.info("storing what an earlier run acknowledged before accepting new readings")
            await _spawn_ready(others)
            self.carried_over = not await self.wait_drained(LEFTOVER_TIMEOUT_S)
            to_start = gateways
        if before_intake:
            await before_intake()
        await _spawn_ready(to_start)
        supervisor = Supervisor([self.nats, *self.services])
        self._supervisor = asyncio.create_task(supervisor.run(self._stop_supervising))
        if self.leafnode_url:
            metrics = self.site_metrics = await self._serve_site_metrics()
            self.site_links = SiteLinks(self.nats.monitor_url, self._connect, metrics.streams, metrics.observe)
            self.site_links.watch_revocations(lambda: sitelogins.revocations(self.data_dir), self.reload_site_logins)
            self._site_watch = asyncio.create_task(self.site_links.run(self._stop_supervising))
        endpoints = self.endpoints()
        private.write_private(self.endpoints_file, json.dumps(endpoints, indent=2) + "\n")
        private.write_private(self.pipelines_file, json.dumps(self.stores(), indent=2) + "\n")
        scrape.write(self.data_dir, self.services, self.sites_url.removeprefix("http://") if self.sites_url else None)
        return endpoints

    def stores(self) -> dict[str, Any]:
        """Per pipeline: its fleet, its sink as written in the Pipeline, and the SQLite file it uses here."""
        return {
            name: {"fleet": p.fleet, "sink": p.spec.sink.to_k8s(), "sqlitePath": str(self.store_path(p))}
            for name, p in self.resources.pipelines.items()
        }

    async def _connect(self, **options: Any) -> Client:
        """`fleetflow up`'s own connection, as the admin user."""
        login = self.nats.login(natslogins.ADMIN)
        return await nats.connect(self.nats.url, user=login.user, password=login.password, **options)

    async def _provision(self) -> None:
        nc = await self._connect()
        try:
            js = nc.jetstream()
            for fleet in self.resources.fleets.values():
                await jetstream.provision_fleet(js, fleet, self.site_name)
            for pipeline in self.resources.pipelines.values():
                await jetstream.provision_pipeline(js, self.resources.fleet_of(pipeline), pipeline, self.site_name)
        finally:
            await nc.close()

    def runs_processor(self, pipeline: Pipeline) -> bool:
        """False for an edge pipeline whose records sites forward: its processors run at the sites, its writer here."""
        return pipeline.name not in edgelink.edge_pipelines(self.resources.fleet_of(pipeline))

    def _sourcing_streams(self) -> list[str]:
        """The streams here that source from edge sites."""
        found = []
        for pipeline in self.resources.pipelines.values():
            streams = jetstream.pipeline_streams(self.resources.fleet_of(pipeline), pipeline)
            found += [c.name or "" for c in streams if c.sources]
        for fleet in self.resources.fleets.values():
            found += [c.name or "" for c in jetstream.fleet_streams(fleet) if c.sources]
        return [name for name in dict.fromkeys(found) if name]

    def _run_dir(self) -> Path:
        return self.data_dir / "run"

    def _login(self, user: str) -> dict[str, Any]:
        """The config function arguments that make a service log in as `user`."""
        return {"nats_user": user, "nats_password_file": self.nats.password_file(user)}

    def _gateways(self) -> list[ServiceProcess]:
        gateways = []
        for fleet in self.resources.fleets.values():
            credentials.ensure_local_secret(self.data_dir, fleet.name)
            cfg = config.gateway_config(
                fleet,
                nats_url=self.nats.url,
                secret_file=credentials.local_secret_path(self.data_dir, fleet.name),
                listen_port=self.ports.take(),
                ops_port=self.ports.take(),
                coap_port=self.ports.take_udp(),
                sole_consumer=True,  # one gateway per fleet here, whatever gateway.replicas says
                **self._login(natslogins.GATEWAY),
                nats_callout_password_file=self.nats.password_file(natsauth.CALLOUT_USER),
                site=self.site_name,
                device_ca_file=self.device_tls.device_ca_file if self.device_tls else None,
            )
            if self.device_tls is not None:
                certificate, key = self.device_tls.certificate_and_key
                cfg.update(tls_cert_file=str(certificate.resolve()), tls_key_file=str(key.resolve()))
            # Device connectivity (docs/devices.md): gRPC, CoAP (UDP), MQTT through the embedded server, outage
            # buffer; WebSockets share the HTTP port.
            cfg.update(grpc_port=self.ports.take(),
                       buffer_dir=str(self.data_dir / "buffer" / fleet.name),
                       mqtt_issuer_seed_file=str(self.nats.mqtt_issuer_seed_file))  # fmt: skip
            gateways.append(ServiceProcess(f"gateway-{fleet.name}", "gateway", cfg, self._run_dir()))
        return gateways

    def _pipeline_services(self) -> list[ServiceProcess]:
        services = []
        for pipeline in self.resources.pipelines.values():
            fleet = self.resources.fleet_of(pipeline)
            for replica in range(pipeline.spec.processor.replicas if self.runs_processor(pipeline) else 0):
                login = self._login(natslogins.PROCESSOR)
                cfg = config.processor_config(fleet, pipeline, nats_url=self.nats.url, replica=replica,
                                              ops_port=self.ports.take(), site=self.site_name, **login)  # fmt: skip
                name = f"processor-{pipeline.name}-{replica}"
                services.append(ServiceProcess(name, "processor", cfg, self._run_dir()))
            # One writer per pipeline here, whatever writer.replicas says.
            cfg = config.writer_config(fleet, pipeline, nats_url=self.nats.url, sqlite_path=self.store_path(pipeline),
                                       ops_port=self.ports.take(), sole_consumer=True, site=self.site_name,
                                       **self._login(natslogins.WRITER))  # fmt: skip
            services.append(ServiceProcess(f"writer-{pipeline.name}", "writer", cfg, self._run_dir()))
        return services

    def _app_apis(self) -> list[ServiceProcess]:
        """One application API per fleet, reading the stores of the fleet's pipelines; keys under the data dir."""
        apis = []
        for fleet in self.resources.fleets.values():
            pipelines = [p for p in self.resources.pipelines.values() if p.fleet == fleet.name]
            cfg = config.appapi_config(
                fleet,
                pipelines,
                nats_url=self.nats.url,
                keys_file=keys_file(self.data_dir, fleet.name),
                listen_port=self.ports.take(),
                ops_port=self.ports.take(),
                sqlite_paths={p.name: self.store_path(p) for p in pipelines},
                **self._login(natslogins.APPAPI),  # commands: the fleet's command stream and state bucket
            )
            apis.append(ServiceProcess(f"appapi-{fleet.name}", "appapi", cfg, self._run_dir()))
        return apis

    def service(self, name: str) -> ServiceProcess:
        return next(s for s in self.services if s.name == name)

    def gateway_url(self, fleet: DeviceFleet) -> str:
        scheme = "https" if self.device_tls else "http"
        return f"{scheme}://127.0.0.1:{self.service(f'gateway-{fleet.name}').status['http_port']}"

    def api_url(self, fleet: DeviceFleet) -> str:
        return f"http://127.0.0.1:{self.service(f'appapi-{fleet.name}').status['http_port']}"

    def _fleet_endpoints(self, fleet: DeviceFleet) -> dict[str, str]:
        gateway = self.service(f"gateway-{fleet.name}").status
        found = {
            "http": self.gateway_url(fleet),
            "grpc": f"127.0.0.1:{gateway['grpc_port']}",
            "mqtt": f"{'mqtts' if self.nats.mqtt_tls else 'mqtt'}://127.0.0.1:{self.nats.mqtt_port}",
            "ws": "ws" + self.gateway_url(fleet).removeprefix("http"),
            "secretFile": str(credentials.local_secret_path(self.data_dir, fleet.name)),
            "api": self.api_url(fleet),
        }
        if "coap_port" in gateway:  # not where the fleet requires device certificates (no DTLS)
            found["coap"] = f"coap://127.0.0.1:{gateway['coap_port']}"
        return found

    def endpoints(self) -> dict[str, Any]:
        return {
            "nats": {
                "url": self.nats.url,
                "monitor": self.nats.monitor_url,
                "user": natslogins.ADMIN,
                "passwordFile": str(self.nats.password_file(natslogins.ADMIN)),
            },
            "fleets": {name: self._fleet_endpoints(fleet) for name, fleet in self.resources.fleets.items()},
            "services": {
                s.name: {
                    "kind": s.kind,
                    "metrics": f"http://127.0.0.1:{s.status['ops_port']}/metrics",
                    "health": f"http://127.0.0.1:{s.status['ops_port']}/readyz",
                    "log": str(s.log_file),
                }
                for s in self.services
            },
            **({"leafnodes": self.leafnodes_endpoint()} if self.leafnode_url else {}),
            "prometheus": {"config": str(scrape.config_path(self.data_dir))},
            "stores": {
                name: {"kind": p.spec.sink.kind, "path": str(self.store_path(p))}
                for name, p in self.resources.pipelines.items()
            },
        }

    async def _serve_site_metrics(self) -> SiteMetrics:
        declared = [(fleet.name, site.name) for fleet in self.resources.fleets.values() for site in fleet.spec.sites]
        certificate = self.leafnode_tls[0] if self.leafnode_tls else None
        metrics = SiteMetrics(SiteStates(declared), self._sourcing_streams(), certificate)
        self._site_ops, port = await ops.start_site(metrics.app(), LOOPBACK, self.ports.take())
        self.sites_url = f"http://{LOOPBACK}:{port}"
        return metrics

    def leafnodes_endpoint(self) -> dict[str, Any]:
        """Where edge sites dial in, and the file with each site's password (`fleetflow edge up --credentials`)."""
        sites = {
            edgelink.site_domain(fleet.name, site.name): str(
                sitelogins.site_password_file(self.data_dir, fleet.name, site.name)
            )
            for fleet in self.resources.fleets.values()
            for site in fleet.spec.sites
        }
        return {"url": self.leafnode_url, "credentials": sites, "sites": f"{self.sites_url}/sites",
                "metrics": f"{self.sites_url}/metrics"}  # fmt: skip

    async def consumer_states(self) -> list[ConsumerState]:
        """Where every pipeline's durable consumers stand: unprocessed and unacknowledged messages."""
        nc = await self._connect(connect_timeout=2, max_reconnect_attempts=1)
        try:
            js = nc.jetstream()
            return [await _state(js, stream, durable) for stream, durable in self._consumers()]
        finally:
            await nc.close()

    def _consumers(self) -> list[tuple[str, str]]:
        found = []
        for pipeline in self.resources.pipelines.values():
            fleet = pipeline.fleet
            for replica in range(pipeline.spec.processor.replicas if self.runs_processor(pipeline) else 0):
                found.append((subjects.telemetry_stream(fleet), subjects.processor_consumer(pipeline.name, replica)))
            found.append((subjects.pipeline_stream(fleet, pipeline.name), subjects.writer_consumer(pipeline.name)))
        return found

    async def wait_drained(self, timeout: float) -> bool:
        """Wait until every consumer has processed and acknowledged everything, or `timeout` passes."""
        deadline = asyncio.get_running_loop().time() + timeout
        settled = 0
        while asyncio.get_running_loop().time() < deadline:
            # Twice in a row: a processor may publish to the writer's stream just after it was read.
            settled = settled + 1 if await self._all_consumed() else 0
            if settled >= 2:
                return True
            await asyncio.sleep(0.2)
        return False

    async def _all_consumed(self) -> bool:
        try:
            return all(state.lag == 0 for state in await self.consumer_states())
        except (nats.errors.Error, OSError, TimeoutError) as exc:  # NATS restarting: not drained yet, ask again
            log.warning("cannot read the consumers' state yet", error=str(exc) or type(exc).__name__)
            return False

    async def _stop_supervisor(self) -> None:
        """Stop restarting children; a restart under way is abandoned (the child it spawned is stopped next)."""
        self._stop_supervising.set()
        if self._site_watch:
            await self._site_watch  # it ends on the same event, within a poll
        if self._site_ops:
            await self._site_ops.cleanup()
        if self.site_metrics:
            self.site_metrics.close()
        if self._supervisor:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor

    async def stop_gateways(self) -> None:
        await asyncio.gather(*(s.stop() for s in self.services if s.kind == "gateway"))

    async def drain(self, timeout: float = 60.0) -> bool:
        """Stop intake (the gateways) and wait until the pipelines processed everything; True if they did.
        The rest stays supervised meanwhile: a processor, writer or nats-server that crashes now is restarted."""
        await self.stop_gateways()
        if self.nats.process is None:  # never started: nothing was accepted
            self._drained = True
        else:
            self._drained = await self.wait_drained(timeout)
        return self._drained

    async def stop(self, drain_timeout: float = 60.0) -> bool:
        """Drain (unless done already), then stop the rest; True if everything drained."""
        drained = self._drained if self._drained is not None else await self.drain(drain_timeout)
        await self._stop_supervisor()
        await asyncio.gather(*(s.stop() for s in self.services if s.kind != "gateway"))
        await self.nats.stop()
        if self.lock.held:  # only the run that owns the data dir removes its endpoints.json
            self.endpoints_file.unlink(missing_ok=True)
            scrape.clear(self.data_dir)
            self.lock.release()
        return drained


async def _spawn_ready(services: list[ServiceProcess]) -> None:
    """Start the services side by side and wait until each is ready."""
    for service in services:
        service.spawn()
    for service in services:
        await service.wait_ready()


async def _state(js: Any, stream: str, durable: str) -> ConsumerState:
    try:
        info = await js.consumer_info(stream, durable)
    except NotFoundError:
        return ConsumerState(stream, durable, 0, 0, 0)
    return ConsumerState(stream, durable, info.num_pending or 0, info.num_ack_pending or 0, info.num_redelivered or 0)
