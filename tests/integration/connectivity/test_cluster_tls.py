"""TLS on a cluster, with real servers and real clients: the nats.conf and service configs the operator renders
for a fleet whose NATS has a certificate (tests/support/managed_nats.py runs them with the real nats-server),
the services' and the operator's NATS connections (nats-py), MQTT devices (paho), and the gateway's HTTP
(aiohttp) and gRPC (grpcio) listeners. The right CA connects; another CA and plaintext are refused."""

import asyncio
import base64
import json
import re
import secrets
import socket
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import nats
import paho.mqtt.client as mqtt
import pytest
import yaml
from cryptography import x509
from opentelemetry import metrics

from fleetflow.api import DeviceFleet
from fleetflow.api.tls import CA_KEY
from fleetflow.device.grpc_client import GrpcDevice, StreamClosed
from fleetflow.gateway.mqtt_auth import MqttAuthorizer
from fleetflow.operator import nats_credentials, streams
from fleetflow.operator.builders import gateway, pipeline
from fleetflow.operator.builders import nats as nats_builder
from fleetflow.runtime import credentials, jetstream, telemetry
from fleetflow.runtime.settings import GatewaySettings, ProcessorSettings
from tests.integration.connectivity.conftest import FLEET as LOCAL_FLEET
from tests.integration.connectivity.conftest import start_gateway, stop_gateway
from tests.operator.variants import fleet, fleet_doc, pipeline_doc
from tests.operator.variants import pipeline as pipeline_of
from tests.support.certificates import Authority, new_authority
from tests.support.managed_nats import Pod, managed_nats, secret_value
from tests.support.mqtt_answer import connect_and_wait
from tests.support.natsserver import NatsServer

STREAMS = {"partitions": 2, "maxBytes": "1Gi"}
TLS_FLEET = fleet(fleet_doc(streams=STREAMS, nats={"managed": {"tls": {"secretName": "cold-nats-tls"}}}))
EXPIRY = "fleetflow_tls_certificate_expiry_timestamp_seconds"
BODY = json.dumps({"readings": [{"seq": 1, "ts": 1763892000000, "metrics": {"pressure": 1.0}}]})


@dataclass
class TlsNats:
    pod: Pod
    secret: dict[str, Any]  # the fleet's NATS credentials
    authority: Authority
    mounts: Path  # where the service pods' Secret volumes are, as the kubelet would mount them


def mounted(rendered: str, mounts: Path, pod: Pod) -> dict[str, Any]:
    """A service's rendered config, its Secret files where `mount_client_secrets` put them, its NATS URL pointing
    at the local stand-in of the client Service (keeping the scheme the operator chose)."""
    text = rendered.replace(nats_credentials.DIR, str(mounts / "nats")).replace(
        nats_builder.CLIENT_TLS_DIR, str(mounts / "nats-tls")
    )
    data: dict[str, Any] = yaml.safe_load(text)
    scheme = data["nats_url"].split("://", 1)[0]
    data["nats_url"] = pod.url.replace("nats://", f"{scheme}://")
    return data


def mount_client_secrets(fleet_: DeviceFleet, secret: dict[str, Any], authority: Authority, mounts: Path) -> None:
    """The volumes a service pod gets: the NATS credentials' keys and the certificate's CA alone."""
    workload = gateway.gateway_statefulset(fleet_, "fleetflow", "IfNotPresent", {})
    volumes = {v["name"]: v for v in workload["spec"]["template"]["spec"]["volumes"]}
    (mounts / "nats").mkdir(parents=True)
    for item in volumes[nats_credentials.VOLUME]["secret"]["items"]:
        (mounts / "nats" / item["path"]).write_text(secret_value(secret, item["key"]))
    ca_volume = volumes[nats_builder.CLIENT_TLS_VOLUME]["secret"]
    assert ca_volume["secretName"] == "cold-nats-tls" and ca_volume["items"] == [{"key": CA_KEY, "path": CA_KEY}]
    (mounts / "nats-tls").mkdir()
    (mounts / "nats-tls" / CA_KEY).write_bytes(authority.pem)


@pytest.fixture(scope="module")
def authority() -> Authority:
    return new_authority()


@pytest.fixture
def tls_nats(tmp_path: Path, authority: Authority) -> Iterator[TlsNats]:
    secret = nats_credentials.credentials_secret(TLS_FLEET, nats_credentials.new_values())
    server_files = authority.tls_secret_files(tmp_path / "nats-tls", nats_builder.tls_dns_names(TLS_FLEET))
    mount_client_secrets(TLS_FLEET, secret, authority, tmp_path / "mounts")
    with managed_nats(TLS_FLEET, secret, tmp_path / "nats", tls_dir=server_files) as pods:
        yield TlsNats(pods[0], secret, authority, tmp_path / "mounts")


def not_after(pem: bytes) -> float:
    return x509.load_pem_x509_certificate(pem).not_valid_after_utc.timestamp()


def exported_expiries(text: str) -> dict[str, float]:
    """certificate -> the expiry exported in a /metrics body."""
    series = re.findall(rf'^{EXPIRY}\{{.*certificate="([^"]*)".*\}} (\S+)$', text, re.MULTILINE)
    return {certificate: float(value) for certificate, value in series}


def services_login(tls_nats: TlsNats) -> nats_credentials.NatsCredentials:
    values = {key: secret_value(tls_nats.secret, key) for key in nats_credentials.KEYS}
    return nats_credentials.NatsCredentials(values)


async def test_the_services_and_the_operator_connect_only_over_tls_verified_with_the_ca(tls_nats: TlsNats) -> None:
    config = mounted(
        pipeline.processor_rendered_config(TLS_FLEET, pipeline_of(pipeline_doc())), tls_nats.mounts, tls_nats.pod
    )
    assert config["nats_url"].startswith("tls://"), "the operator never lets a service fall back to plaintext"
    settings = ProcessorSettings(**config)
    telemetry.configure("processor", TLS_FLEET.name, "store")  # as the processor does before it connects
    nc = await jetstream.connect(settings.nats_url, "processor", login=settings.nats_login(), tls=settings.nats_tls())
    try:
        assert nc.is_connected and (await nc.jetstream().account_info()).streams >= 0
    finally:
        await nc.close()
    # The CA the service verifies NATS with is the certificate whose expiry it exports.
    assert exported_expiries(telemetry.prometheus_text().decode())["ca"] == not_after(tls_nats.authority.pem)
    operator_tls = ssl.create_default_context(cadata=tls_nats.authority.pem.decode())
    states = await streams.provision_fleet(tls_nats.pod.url, TLS_FLEET, 5.0, services_login(tls_nats).login,
                                           operator_tls)  # fmt: skip
    assert {s["state"] for s in states} == {"Ready"}


async def test_another_ca_and_plaintext_are_refused(tls_nats: TlsNats) -> None:
    login = services_login(tls_nats).login
    impostor = ssl.create_default_context(cadata=new_authority("another CA").pem.decode())
    with pytest.raises((ssl.SSLError, nats.errors.Error, OSError)):
        await nats.connect(tls_nats.pod.url, user=login.user, password=login.password, tls=impostor,
                           allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=5)  # fmt: skip
    with pytest.raises((nats.errors.Error, OSError)):
        await nats.connect(tls_nats.pod.url, user=login.user, password=login.password,
                           allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=5)  # fmt: skip
    with pytest.raises(streams.StreamError):
        await streams.provision_fleet(tls_nats.pod.url, TLS_FLEET, 3.0, login, impostor)
    # What a plaintext client meets on the wire: the server asks for TLS before anything else.
    with socket.create_connection(("127.0.0.1", tls_nats.pod.ports[nats_builder.CLIENT_PORT]), timeout=5) as sock:
        info = json.loads(sock.recv(4096).decode().removeprefix("INFO ").strip())
    assert info["tls_required"] is True


# --- MQTT devices ---------------------------------------------------------------------------------------


@pytest.fixture
async def mqtt_gateway(tmp_path: Path, tls_nats: TlsNats) -> AsyncIterator[GatewaySettings]:
    """The gateway's MQTT side (its auth callout), configured as the operator renders it, on the TLS NATS."""
    device_secret = tmp_path / "device-secret"
    device_secret.write_bytes(base64.b64encode(secrets.token_bytes(32)))
    config = mounted(gateway.rendered_config(TLS_FLEET), tls_nats.mounts, tls_nats.pod)
    settings = GatewaySettings(**{**config, "secret_file": str(device_secret)})
    assert settings.mqtt_issuer_seed_file is not None
    nc = await jetstream.connect(settings.nats_url, "gateway", login=settings.nats_login(), tls=settings.nats_tls())
    seed = settings.mqtt_issuer_seed_file.read_bytes().strip()
    authorizer = MqttAuthorizer(TLS_FLEET, credentials.read_secret(device_secret), seed, metrics.get_meter(__name__))
    subscription = await authorizer.subscribe(nc)
    try:
        yield settings
    finally:
        await subscription.unsubscribe()
        await nc.close()


def mqtt_answer(port: int, username: str, password: str, ca: bytes | None, folder: Path) -> str:
    """How the MQTT listener answers a real paho client: "Success" if admitted, else why it was not."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=username, protocol=mqtt.MQTTv311)
    client.username_pw_set(username, password)
    if ca is not None:
        (folder / "mqtt-ca.crt").write_bytes(ca)
        client.tls_set(ca_certs=str(folder / "mqtt-ca.crt"))
    try:
        return connect_and_wait(client, port)
    finally:
        client.disconnect()
        client.loop_stop()


async def test_mqtt_devices_connect_over_tls_only(
    tls_nats: TlsNats, mqtt_gateway: GatewaySettings, tmp_path: Path
) -> None:
    token = credentials.device_token(credentials.read_secret(mqtt_gateway.secret_file), "cold", "pump-1")
    port = tls_nats.pod.mqtt_port
    admitted = await asyncio.to_thread(mqtt_answer, port, "cold/pump-1", token, tls_nats.authority.pem, tmp_path)
    assert admitted == "Success"
    impostor = new_authority("another CA").pem
    assert await asyncio.to_thread(mqtt_answer, port, "cold/pump-1", token, impostor, tmp_path) != "Success"
    assert await asyncio.to_thread(mqtt_answer, port, "cold/pump-1", token, None, tmp_path) != "Success"


# --- the gateway's HTTP and gRPC ------------------------------------------------------------------------


def test_the_gateway_reads_its_certificate_where_the_operator_mounts_it() -> None:
    f = fleet(fleet_doc(gateway={"tls": {"secretName": "devices-tls"}}))
    config = yaml.safe_load(gateway.rendered_config(f))
    deployment = gateway.gateway_statefulset(f, "fleetflow", "IfNotPresent", {})
    spec = deployment["spec"]["template"]["spec"]
    (volume,) = [v for v in spec["volumes"] if v.get("secret", {}).get("secretName") == "devices-tls"]
    (mount,) = [m for m in spec["containers"][0]["volumeMounts"] if m["name"] == volume["name"]]
    assert config["tls_cert_file"] == f"{mount['mountPath']}/tls.crt"
    assert config["tls_key_file"] == f"{mount['mountPath']}/tls.key"
    assert gateway.endpoints(f)["http"].startswith("https://")


async def test_devices_reach_the_gateway_over_https_and_grpc_with_tls_only(
    tmp_path: Path, nats_server: NatsServer, authority: Authority
) -> None:
    files = authority.tls_secret_files(tmp_path / "gateway-tls", ["cold-gateway.ns1.svc"])
    gw = await start_gateway(tmp_path, nats_server.url, grpc_port=0, tls_cert_file=files / "tls.crt",
                             tls_key_file=files / "tls.key")  # fmt: skip
    body = {"readings": [{"seq": 1, "ts": "2026-11-23T10:00:00Z", "metrics": {"temperature": 4.2}}]}
    url = f"127.0.0.1:{gw.status['http_port']}/v1/fleets/{LOCAL_FLEET}/devices/meter-7/telemetry"
    headers = {"Authorization": f"Bearer {gw.token('meter-7')}"}
    try:
        trusted = ssl.create_default_context(cadata=authority.pem.decode())
        async with aiohttp.ClientSession() as session:
            async with session.post(f"https://{url}", json=body, headers=headers, ssl=trusted) as response:
                assert response.status == 202, await response.text()
            with pytest.raises(aiohttp.ClientError):
                async with session.post(f"http://{url}", json=body, headers=headers) as response:
                    await response.read()
            impostor = ssl.create_default_context(cadata=new_authority("another CA").pem.decode())
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                async with session.post(f"https://{url}", json=body, headers=headers, ssl=impostor) as response:
                    await response.read()
        target = f"127.0.0.1:{gw.status['grpc_port']}"
        readings = [{"seq": 2, "ts": int(time.time() * 1000), "metrics": {"temperature": 4.3}}]
        async with GrpcDevice(target, LOCAL_FLEET, "meter-7", gw.token("meter-7"),
                              root_certificates=authority.pem) as dev:  # fmt: skip
            assert (await dev.send(readings))["accepted"] == 1
        async with GrpcDevice(target, LOCAL_FLEET, "meter-7", gw.token("meter-7")) as plaintext:
            with pytest.raises((StreamClosed, grpc.aio.AioRpcError, TimeoutError)):
                await plaintext.send(readings, timeout=3)
        metrics_url = f"http://127.0.0.1:{gw.status['ops_port']}/metrics"
        async with aiohttp.ClientSession() as session, session.get(metrics_url) as response:
            served = exported_expiries(await response.text())
        assert served["gateway"] == not_after((files / "tls.crt").read_bytes()), "the certificate it serves"
    finally:
        await stop_gateway(gw)


def test_three_servers_route_to_each_other_over_verified_tls(tmp_path: Path, authority: Authority) -> None:
    three = fleet(fleet_doc(streams=STREAMS, nats={"managed": {"replicas": 3, "tls": {"secretName": "t"}}}))
    conf = nats_builder.server_config(three)
    cluster = conf[conf.index("cluster {") :]
    assert "tls {" in cluster and "verify: true" in cluster, "routes must present and check certificates"
    secret = nats_credentials.credentials_secret(three, nats_credentials.new_values())
    files = authority.tls_secret_files(tmp_path / "tls", nats_builder.tls_dns_names(three))
    with managed_nats(three, secret, tmp_path / "nats", tls_dir=files) as pods:
        deadline = time.monotonic() + 20
        while any((pod.monitor("/routez") or {}).get("num_routes", 0) < 2 for pod in pods):
            assert time.monotonic() < deadline, [pod.monitor("/routez") for pod in pods]
            time.sleep(0.1)
