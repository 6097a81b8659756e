"""A real gateway (its `serve()`, in this event loop) in front of a real nats-server, for connectivity tests."""

import asyncio
import contextlib
import json
import sqlite3
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import nats
import pytest
from nats.aio.client import Client

from fleetflow.api import DeviceFleet, Pipeline
from fleetflow.gateway import main as gateway_main
from fleetflow.gateway.command_api import application_token
from fleetflow.local import natslogins
from fleetflow.local.natsserver import nats_server_binary
from fleetflow.processor import main as processor_main
from fleetflow.runtime import credentials, natsauth, subjects
from fleetflow.runtime.settings import GatewaySettings, ProcessorSettings, WriterSettings
from fleetflow.writer import main as writer_main
from tests.support.natsserver import NatsServer, free_port, wait_for_port

FLEET = "demo"


@dataclass
class Gateway:
    settings: GatewaySettings
    status: dict[str, Any]
    secret: bytes
    nc: Client  # a separate client connection, for assertions
    stop: asyncio.Event
    task: asyncio.Task[None]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.status['http_port']}"

    def token(self, device: str) -> str:
        return credentials.device_token(self.secret, FLEET, device)

    @property
    def app_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {application_token(self.secret, FLEET)}"}

    async def stored_readings(self, device: str) -> list[int]:
        """Every reading seq in the telemetry stream for `device` (duplicates included, if any got in)."""
        return [seq for batch in await self.telemetry_batches(device) for seq in batch]

    async def telemetry_batches(self, device: str) -> list[list[int]]:
        """The seqs of each telemetry message of `device`, in stream order."""
        js = self.nc.jetstream()
        sub = await js.subscribe(
            f"ff.{FLEET}.tm.*.{device}", ordered_consumer=True, stream=subjects.telemetry_stream(FLEET)
        )
        batches: list[list[int]] = []
        try:
            while True:
                msg = await sub.next_msg(timeout=0.5)
                batches.append([r[0] for r in json.loads(msg.data)["readings"]])
        except (TimeoutError, nats.errors.TimeoutError):
            pass
        await sub.unsubscribe()
        return batches


def fleet_resource(gateway: dict[str, Any] | None = None) -> DeviceFleet:
    spec = {"streams": {"partitions": 2}, "gateway": gateway or {}}
    return DeviceFleet.model_validate({"metadata": {"name": FLEET}, "spec": spec})


async def start_gateway(tmp_path: Path, nats_url: str, fleet: DeviceFleet | None = None, **overrides: Any) -> Gateway:
    secret_file = tmp_path / "secret.key"
    secret = credentials.ensure_local_secret(tmp_path, FLEET)
    secret_file.write_bytes(secret)
    status_file = tmp_path / "gateway-status.json"
    settings = GatewaySettings(
        fleet=fleet or fleet_resource(),
        nats_url=nats_url,
        secret_file=secret_file,
        ops_port=0,
        status_file=status_file,
        **{"listen_port": 0, **overrides},
    )
    stop = asyncio.Event()
    task = asyncio.create_task(gateway_main.serve(settings, stop))
    for _ in range(400):
        if status_file.exists() or task.done():
            break
        await asyncio.sleep(0.025)
    if task.done():
        task.result()
    status = json.loads(status_file.read_text())
    login = settings.nats_login()  # the test's own connection logs in as the gateway does, where it must
    nc = await nats.connect(nats_url, user=login.user if login else None, password=login.password if login else None)
    return Gateway(settings, status, secret, nc, stop, task)


async def stop_gateway(gateway: Gateway) -> None:
    gateway.stop.set()
    await asyncio.wait_for(gateway.task, 30)
    await gateway.nc.close()


@pytest.fixture
async def gateway(tmp_path: Path, nats_server: NatsServer) -> AsyncIterator[Gateway]:
    gw = await start_gateway(tmp_path, nats_server.url, grpc_port=0)
    try:
        yield gw
    finally:
        await stop_gateway(gw)


@dataclass
class MqttPlatform:
    gateway: Gateway
    mqtt_port: int
    nats: NatsServer
    logins_dir: Path  # where the users' password files are, as in a local platform's data dir

    def login(self, user: str) -> dict[str, Any]:
        return login_settings(self.logins_dir, user)


def login_settings(logins_dir: Path, user: str) -> dict[str, Any]:
    """The settings that make a service log in as `user` of local mode."""
    return {"nats_user": user, "nats_password_file": natslogins.password_file(logins_dir, user)}


@pytest.fixture
async def mqtt_platform(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[MqttPlatform]:
    """nats-server with its MQTT listener and auth callout, authenticating as local mode's does, and a gateway
    serving MQTT devices. Parametrize it indirectly with a DeviceFleet `spec.gateway` to change the fleet's
    gateway settings (e.g. its rate limit)."""
    async with running_mqtt_platform(tmp_path, fleet_resource(getattr(request, "param", None))) as platform:
        yield platform


@contextlib.asynccontextmanager
async def running_mqtt_platform(tmp_path: Path, fleet: DeviceFleet, nats_config: str = "",
                                **gateway: Any) -> AsyncIterator[MqttPlatform]:  # fmt: skip
    """The platform of `mqtt_platform`; `nats_config` adds lines to nats-server's configuration, `gateway`
    overrides GatewaySettings."""
    seed_file = tmp_path / "mqtt-issuer.nk"
    seed = natsauth.ensure_issuer_seed(seed_file)
    port, mqtt_port = free_port(), free_port()
    config = tmp_path / "nats.conf"
    logins_dir = tmp_path / "logins"
    auth = natslogins.server_auth(natslogins.ensure_passwords(logins_dir), mqtt_port, seed)
    config.write_text(
        f'server_name: test\nlisten: 127.0.0.1:{port}\njetstream {{ store_dir: "{tmp_path / "js"}" }}\n'
        + nats_config
        + natsauth.server_config(auth)
    )
    process = subprocess.Popen([str(nats_server_binary()), "-c", str(config)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_for_port(port)
        wait_for_port(mqtt_port)
        server = NatsServer(f"nats://127.0.0.1:{port}", port, tmp_path / "js", process)
        callout = natsauth.CALLOUT_USER
        gw = await start_gateway(tmp_path, server.url, fleet, mqtt_issuer_seed_file=seed_file,
                                 **login_settings(logins_dir, natslogins.GATEWAY),
                                 nats_callout_user=callout,
                                 nats_callout_password_file=natslogins.password_file(logins_dir, callout),
                                 **gateway)  # fmt: skip
        try:
            yield MqttPlatform(gw, mqtt_port, server, logins_dir)
        finally:
            await stop_gateway(gw)
    finally:
        process.terminate()
        process.wait(timeout=10)


@dataclass
class Store:
    """The SQLite store that the processor and the writer behind the gateway fill."""

    path: Path
    table: str

    def seqs(self, device: str) -> list[int]:
        """The device's stored readings' seqs, in the store's key order (ts, seq); one per row."""
        sql = f"SELECT seq FROM {self.table} WHERE fleet = ? AND device = ? ORDER BY ts, seq"
        try:
            with contextlib.closing(sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)) as db:
                return [row[0] for row in db.execute(sql, (FLEET, device))]
        except sqlite3.OperationalError:  # the writer has not created the store yet
            return []


@pytest.fixture
async def mqtt_store(tmp_path: Path, mqtt_platform: MqttPlatform) -> AsyncIterator[Store]:
    """A pipeline without steps behind the MQTT gateway: a processor and a writer (their `serve()`, in this
    event loop) storing the fleet's readings into SQLite."""
    pipeline = Pipeline.model_validate({"metadata": {"name": "keep"}, "spec": {"fleetRef": {"name": FLEET}}})
    common: dict[str, Any] = {"fleet": mqtt_platform.gateway.settings.fleet, "pipeline": pipeline,
                              "nats_url": mqtt_platform.nats.url, "ops_port": 0}  # fmt: skip
    path = tmp_path / "store.sqlite3"
    status = {"processor": tmp_path / "processor-status.json", "writer": tmp_path / "writer-status.json"}
    processor = ProcessorSettings(
        **common, **mqtt_platform.login(natslogins.PROCESSOR), status_file=status["processor"]
    )
    writer = WriterSettings(**common, **mqtt_platform.login(natslogins.WRITER), status_file=status["writer"],
                            sqlite_path=path)  # fmt: skip
    stop = asyncio.Event()
    services = [
        asyncio.create_task(processor_main.serve(processor, stop)),
        asyncio.create_task(writer_main.serve(writer, stop)),
    ]
    try:
        for status_file in status.values():  # ready: they provisioned their streams and consume
            await wait_ready(status_file, services)
        yield Store(path, pipeline.spec.sink.tables.readings)
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*services), 30)


async def wait_ready(status_file: Path, services: list[asyncio.Task[None]], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while True:
            for task in services:
                if task.done():
                    task.result()  # a service that ended early: its error fails the test
            port = ops_port(status_file)
            if port is not None:
                async with session.get(f"http://127.0.0.1:{port}/readyz") as response:
                    if response.status == 200:
                        return
            assert time.monotonic() < deadline, f"{status_file.name}: the service did not become ready"
            await asyncio.sleep(0.05)


def ops_port(status_file: Path) -> int | None:
    return int(json.loads(status_file.read_text())["ops_port"]) if status_file.exists() else None
