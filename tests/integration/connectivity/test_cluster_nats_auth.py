"""On a cluster every connection to a managed NATS logs in. The nats.conf and StatefulSet the operator renders
for a fleet, run by the real nats-server with the environment the kubelet would give it
(tests/support/managed_nats.py): a client without credentials is refused; the services' user gets JetStream, as
the services and the operator connect; an MQTT device (paho, real socket) is admitted by the gateway's auth
callout with its token, and only to its own topics; three servers route to each other, and a server without
the routes' password cannot join them."""

import asyncio
import base64
import json
import secrets
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import nats.errors
import paho.mqtt.client as mqtt
import pytest
import yaml
from nats.aio.client import Client
from nats.aio.msg import Msg
from opentelemetry import metrics

from fleetflow.api import DeviceFleet
from fleetflow.gateway.mqtt_auth import MqttAuthorizer
from fleetflow.local.natsserver import free_port, nats_server_binary
from fleetflow.operator import nats_credentials, streams
from fleetflow.operator.builders import gateway, pipeline
from fleetflow.operator.builders.nats import CLIENT_PORT, CLUSTER_PORT, MONITOR_PORT
from fleetflow.runtime import credentials, jetstream
from fleetflow.runtime.natsauth import SERVICE_USER, NatsLogin
from fleetflow.runtime.settings import GatewaySettings, ProcessorSettings
from tests.operator.variants import fleet, fleet_doc, pipeline_doc
from tests.operator.variants import pipeline as pipeline_of
from tests.support.managed_nats import Pod, managed_nats, secret_value
from tests.support.mqtt_answer import connect_and_wait

# The telemetry stream's maxBytes must fit the store (90% of storageSize): JetStream reserves it up front.
STREAMS = {"partitions": 2, "maxBytes": "1Gi"}
FLEET = fleet(fleet_doc(streams=STREAMS))
BODY = json.dumps({"readings": [{"seq": 1, "ts": 1763892000000, "metrics": {"pressure": 1.0}}]})
Workload = dict[str, Any]


@dataclass
class Gateway:
    """A gateway's NATS side as the operator configures it: its settings, its connection, its callout."""

    settings: GatewaySettings
    nc: Client
    pod: Pod
    secret: dict[str, Any]

    def token(self, device: str) -> str:
        return credentials.device_token(credentials.read_secret(self.settings.secret_file), FLEET.name, device)


def new_secret() -> dict[str, Any]:
    return nats_credentials.credentials_secret(FLEET, nats_credentials.new_values())


def mount(workload: Workload, secret: dict[str, Any], folder: Path) -> None:
    """The workload's nats-credentials volume as the kubelet mounts it, in `folder`."""
    volumes = {v["name"]: v for v in workload["spec"]["template"]["spec"]["volumes"]}
    folder.mkdir(parents=True, exist_ok=True)
    for item in volumes[nats_credentials.VOLUME]["secret"]["items"]:
        (folder / item["path"]).write_text(secret_value(secret, item["key"]))


def mounted_config(rendered: str, folder: Path) -> dict[str, Any]:
    """A service's rendered config, reading the Secret's files from where `mount` put them."""
    data: dict[str, Any] = yaml.safe_load(rendered.replace(nats_credentials.DIR, str(folder)))
    return data


def gateway_settings(secret: dict[str, Any], pod: Pod, folder: Path) -> GatewaySettings:
    mount(gateway.gateway_statefulset(FLEET, "fleetflow", "IfNotPresent", {}), secret, folder)
    device_secret = folder / "device-secret"
    device_secret.write_bytes(base64.b64encode(secrets.token_bytes(32)))
    data = mounted_config(gateway.rendered_config(FLEET), folder)
    return GatewaySettings(**{**data, "nats_url": pod.url, "secret_file": str(device_secret)})


@pytest.fixture
def one_server(tmp_path: Path) -> Iterator[tuple[Pod, dict[str, Any]]]:
    secret = new_secret()
    with managed_nats(FLEET, secret, tmp_path / "nats") as pods:
        yield pods[0], secret


@pytest.fixture
async def gw(tmp_path: Path, one_server: tuple[Pod, dict[str, Any]]) -> AsyncIterator[Gateway]:
    pod, secret = one_server
    settings = gateway_settings(secret, pod, tmp_path / "gateway")
    assert settings.mqtt_issuer_seed_file is not None, "on a managed NATS the gateway serves MQTT"
    nc = await jetstream.connect(settings.nats_url, "fleetflow-gateway-test", login=settings.nats_login())
    fleet_secret = credentials.read_secret(settings.secret_file)
    seed = settings.mqtt_issuer_seed_file.read_bytes().strip()
    authorizer = MqttAuthorizer(settings.fleet, fleet_secret, seed, metrics.get_meter(__name__))
    subscription = await authorizer.subscribe(nc)
    try:
        yield Gateway(settings, nc, pod, secret)
    finally:
        await subscription.unsubscribe()
        await nc.close()


def mqtt_connect(port: int, username: str | None, password: str, client_id: str) -> tuple[mqtt.Client, str]:
    """Connect over a real socket; returns the client and how the server answered ("Success" if admitted)."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
    if username is not None:
        client.username_pw_set(username, password)
    answer = connect_and_wait(client, port)
    assert answer != "no answer", "the MQTT listener neither answered nor closed the connection"
    return client, answer


def closed(client: mqtt.Client) -> None:
    client.disconnect()
    client.loop_stop()


async def mqtt_answer(gw: Gateway, username: str | None, password: str, client_id: str) -> str:
    client, answer = await asyncio.to_thread(mqtt_connect, gw.pod.mqtt_port, username, password, client_id)
    closed(client)
    return answer


async def test_a_device_is_admitted_with_its_token_and_may_publish_only_as_itself(gw: Gateway) -> None:
    seen: list[str] = []

    async def heard(msg: Msg) -> None:
        seen.append(msg.subject)

    await gw.nc.subscribe("fleetflow.cold.>", cb=heard)
    await gw.nc.flush()  # the server has the subscription before the device publishes
    client, answer = await asyncio.to_thread(mqtt_connect, gw.pod.mqtt_port, "cold/pump-1", gw.token("pump-1"),
                                             "cold/pump-1")  # fmt: skip
    try:
        assert answer == "Success"
        sent = client.publish("fleetflow/cold/pump-1/telemetry", BODY, qos=1)
        await asyncio.to_thread(sent.wait_for_publish, 10)
        deadline = time.monotonic() + 10
        while "fleetflow.cold.pump-1.telemetry" not in seen:
            assert time.monotonic() < deadline, f"the device's own telemetry did not arrive; seen {seen}"
            await asyncio.sleep(0.05)
        client.publish("fleetflow/cold/pump-2/telemetry", BODY, qos=1)  # nats-server drops it
        await asyncio.sleep(1.0)
    finally:
        closed(client)
    assert "fleetflow.cold.pump-2.telemetry" not in seen


async def test_the_callout_refuses_wrong_tokens_anonymous_clients_and_the_services_user(gw: Gateway) -> None:
    services_password = secret_value(gw.secret, nats_credentials.SERVICES_PASSWORD_KEY)
    refusals = {
        "another device's token": ("cold/pump-1", gw.token("pump-2"), "cold/pump-1"),
        "another device's client id": ("cold/pump-1", gw.token("pump-1"), "cold/pump-2"),
        "no credentials": (None, "", "anyone"),
        "the services' user over MQTT": (SERVICE_USER, services_password, SERVICE_USER),
    }
    for what, (username, password, client_id) in refusals.items():
        answer = await mqtt_answer(gw, username, password, client_id)
        assert answer != "Success", f"{what}: admitted"


async def test_only_the_services_user_connects_to_nats_and_it_gets_jetstream(gw: Gateway, tmp_path: Path) -> None:
    port = gw.pod.ports[CLIENT_PORT]
    anonymous = secret_value(gw.secret, nats_credentials.ANONYMOUS_PASSWORD_KEY)
    refused = {
        "no credentials": f"nats://127.0.0.1:{port}",
        "a wrong password": f"nats://{SERVICE_USER}:wrong@127.0.0.1:{port}",
        "the anonymous MQTT user": f"nats://mqtt-anonymous:{anonymous}@127.0.0.1:{port}",
        "a device's token": f"nats://cold%2Fpump-1:{gw.token('pump-1')}@127.0.0.1:{port}",
    }
    for what, url in refused.items():
        try:
            nc = await nats.connect(url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=5)
        except nats.errors.Error as exc:
            assert "Authorization Violation" in str(exc), what
        else:
            await nc.close()
            pytest.fail(f"{what}: connected")

    login = NatsLogin(SERVICE_USER, secret_value(gw.secret, nats_credentials.SERVICES_PASSWORD_KEY))
    states = await streams.provision_fleet(gw.pod.url, FLEET, 5, login)  # as the operator does
    assert {s["state"] for s in states} == {"Ready"}
    ack = await gw.nc.jetstream().publish("ff.cold.tm.pump-1", b"{}")  # the gateway's own connection
    assert ack.stream == "ff-cold-telemetry"

    p = pipeline_of(pipeline_doc())
    mount(pipeline.processor_statefulset(FLEET, p, "fleetflow", "IfNotPresent", {}), gw.secret, tmp_path / "proc")
    assert [f.name for f in (tmp_path / "proc").iterdir()] == [nats_credentials.SERVICES_PASSWORD_KEY], "no seed"
    data = mounted_config(pipeline.processor_rendered_config(FLEET, p), tmp_path / "proc")
    settings = ProcessorSettings(**{**data, "nats_url": gw.pod.url})
    nc = await jetstream.connect(settings.nats_url, "fleetflow-processor-test", login=settings.nats_login())
    try:
        info = await nc.jetstream().stream_info("ff-cold-telemetry")
        assert info.state.messages == 1
    finally:
        await nc.close()


async def test_three_servers_route_only_to_servers_that_know_the_routes_password(tmp_path: Path) -> None:
    fleet3 = fleet(fleet_doc(nats={"managed": {"replicas": 3}}, streams={**STREAMS, "replicas": 3}))
    secret = nats_credentials.credentials_secret(fleet3, nats_credentials.new_values())
    with managed_nats(fleet3, secret, tmp_path / "nats") as pods:
        await until(lambda: all(route_names(pod) == {p.name for p in pods} - {pod.name} for pod in pods),
                    "every server to route to the other two")  # fmt: skip
        login = NatsLogin(SERVICE_USER, secret_value(secret, nats_credentials.SERVICES_PASSWORD_KEY))
        await until(lambda: provisioned(pods[0].url, fleet3, login), "streams with 3 replicas")
        with rogue_server(tmp_path / "rogue", pods) as rogue:
            await until(lambda: rogue.monitor("/varz") is not None, "the rogue server to start")
            await asyncio.sleep(2.0)  # a route with the right password is up well within this
            assert route_names(rogue) == set()
            for pod in pods:
                assert "rogue" not in route_names(pod)


def route_names(pod: Pod) -> set[str]:
    routes = (pod.monitor("/routez") or {}).get("routes") or []
    return {route.get("remote_name", "") for route in routes}


async def provisioned(url: str, fleet3: DeviceFleet, login: NatsLogin) -> bool:
    """The fleet's streams, replicated on all three servers (the JetStream meta group needs a leader first)."""
    try:
        states = await streams.provision_fleet(url, fleet3, 5, login)
    except streams.StreamError:
        return False
    nc = await nats.connect(url, user=login.user, password=login.password)
    try:
        info = await nc.jetstream().stream_info("ff-cold-telemetry")
    finally:
        await nc.close()
    replicas = info.cluster.replicas if info.cluster else None
    return {s["state"] for s in states} == {"Ready"} and len(replicas or []) == 2


async def until(condition: Callable[[], object], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)


@contextmanager
def rogue_server(folder: Path, pods: list[Pod]) -> Iterator[Pod]:
    """A nats-server of the same cluster name that dials two of the fleet's servers: without the routes'
    password, and with a wrong one."""
    rogue = Pod("rogue", {port: free_port() for port in (CLIENT_PORT, MONITOR_PORT, CLUSTER_PORT)})
    routes = [f"nats://127.0.0.1:{pods[0].ports[CLUSTER_PORT]}",
              f"nats://route:wrong@127.0.0.1:{pods[1].ports[CLUSTER_PORT]}"]  # fmt: skip
    folder.mkdir(parents=True)
    conf = folder / "nats.conf"
    conf.write_text(
        f"server_name: rogue\nlisten: 127.0.0.1:{rogue.ports[CLIENT_PORT]}\n"
        f"http: 127.0.0.1:{rogue.ports[MONITOR_PORT]}\n"
        f'cluster {{ name: "cold", listen: 127.0.0.1:{rogue.ports[CLUSTER_PORT]}, routes: {json.dumps(routes)} }}\n'
    )
    rogue.process = subprocess.Popen([str(nats_server_binary()), "-c", str(conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        yield rogue
    finally:
        rogue.process.terminate()
        rogue.process.wait(timeout=15)
