"""A real gateway (its `serve()`, in this event loop) in front of a real nats-server, for connectivity tests."""

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client

from fleetflow.api import DeviceFleet
from fleetflow.gateway import main as gateway_main
from fleetflow.gateway.command_api import application_token
from fleetflow.local.natsserver import nats_server_binary
from fleetflow.runtime import credentials, natsauth, subjects
from fleetflow.runtime.settings import GatewaySettings
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
        js = self.nc.jetstream()
        sub = await js.subscribe(
            f"ff.{FLEET}.tm.*.{device}", ordered_consumer=True, stream=subjects.telemetry_stream(FLEET)
        )
        seqs: list[int] = []
        try:
            while True:
                msg = await sub.next_msg(timeout=0.5)
                seqs.extend(r[0] for r in json.loads(msg.data)["readings"])
        except (TimeoutError, nats.errors.TimeoutError):
            pass
        await sub.unsubscribe()
        return seqs


def fleet_resource() -> DeviceFleet:
    return DeviceFleet.model_validate({"metadata": {"name": FLEET}, "spec": {"streams": {"partitions": 2}}})


async def start_gateway(tmp_path: Path, nats_url: str, **overrides: Any) -> Gateway:
    secret_file = tmp_path / "secret.key"
    secret = credentials.ensure_local_secret(tmp_path, FLEET)
    secret_file.write_bytes(secret)
    status_file = tmp_path / "gateway-status.json"
    settings = GatewaySettings(
        fleet=fleet_resource(),
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
    nc = await nats.connect(nats_url)
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


@pytest.fixture
async def mqtt_platform(tmp_path: Path) -> AsyncIterator[MqttPlatform]:
    """nats-server with its MQTT listener and auth callout, and a gateway serving MQTT devices."""
    seed_file = tmp_path / "mqtt-issuer.nk"
    seed = natsauth.ensure_issuer_seed(seed_file)
    port, mqtt_port = free_port(), free_port()
    config = tmp_path / "nats.conf"
    config.write_text(
        f'server_name: test\nlisten: 127.0.0.1:{port}\njetstream {{ store_dir: "{tmp_path / "js"}" }}\n'
        + natsauth.server_config(natsauth.ServerAuth.local("127.0.0.1", mqtt_port, seed, "test-password"))
    )
    process = subprocess.Popen([str(nats_server_binary()), "-c", str(config)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_for_port(port)
        wait_for_port(mqtt_port)
        server = NatsServer(f"nats://127.0.0.1:{port}", port, tmp_path / "js", process)
        gw = await start_gateway(tmp_path, server.url, mqtt_issuer_seed_file=seed_file)
        try:
            yield MqttPlatform(gw, mqtt_port, server)
        finally:
            await stop_gateway(gw)
    finally:
        process.terminate()
        process.wait(timeout=10)
