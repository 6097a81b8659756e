"""Mutual TLS for devices (spec.gateway.tls.clientAuth), with a real gateway, real certificates and real clients:
aiohttp over HTTPS and WebSocket, grpcio with a client key pair, paho over TLS to the operator-rendered nats-server
whose MQTT listener verifies certificates for the gateway's auth callout. A device certificate the fleet's device
CA signed is the device's identity (its subject CN), so it needs no token; it only speaks for its own device;
another CA's certificate fails the handshake; `Required` refuses a handshake without a certificate; `Optional`
keeps tokens."""

import asyncio
import base64
import re
import secrets
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import paho.mqtt.client as mqtt
import pydantic
import pytest
import yaml
from opentelemetry import metrics

from fleetflow.api import DeviceFleet
from fleetflow.api.errors import SpecError
from fleetflow.api.tls import CA_KEY
from fleetflow.device.grpc_client import GrpcDevice, StreamClosed
from fleetflow.gateway.auth import DeviceAuthenticator, certified_device
from fleetflow.gateway.errors import Rejection
from fleetflow.gateway.ingest import check_device_id
from fleetflow.gateway.mqtt_auth import MqttAuthorizer
from fleetflow.operator import nats_credentials
from fleetflow.operator.builders import gateway
from fleetflow.operator.builders import nats as nats_builder
from fleetflow.runtime import credentials, httpserver, jetstream
from fleetflow.runtime.settings import GatewaySettings
from tests.integration.connectivity.conftest import FLEET, Gateway, fleet_resource, start_gateway, stop_gateway
from tests.integration.connectivity.test_cluster_tls import TlsNats, mount_client_secrets, mounted
from tests.integration.connectivity.test_grpc import readings
from tests.operator.variants import DEVICE_CERTIFICATES_GATEWAY, fleet, fleet_doc
from tests.support.certificates import Authority, new_authority
from tests.support.managed_nats import Pod, managed_nats
from tests.support.mqtt_answer import connect_and_wait
from tests.support.natsserver import NatsServer

GATEWAY_NAMES = ["demo-gateway.ns1.svc"]
PRODUCTION = Path(__file__).resolve().parents[3] / "examples" / "cluster" / "production"


def body(seq: int) -> dict[str, object]:
    return {"readings": [{"seq": seq, "ts": int(time.time() * 1000), "metrics": {"temperature": 4.2}}]}


@dataclass
class MutualTls:
    gateway: Gateway
    server_ca: Authority
    device_ca: Authority
    folder: Path

    def client_context(self, device: str | None, authority: Authority | None = None) -> ssl.SSLContext:
        """What a device dials with: the server's CA, and its own certificate for `device` (None: none) from
        `authority` (default: the fleet's device CA)."""
        context = ssl.create_default_context(cadata=self.server_ca.pem.decode())
        if device is not None:
            certificate, key = (authority or self.device_ca).client_files(self.folder / "clients", device)
            context.load_cert_chain(certificate, key)
        return context

    def telemetry_url(self, device: str) -> str:
        return f"https://127.0.0.1:{self.gateway.status['http_port']}/v1/fleets/{FLEET}/devices/{device}/telemetry"

    def grpc_device(self, device: str, certificate_of: str | None, token: str | None = None) -> GrpcDevice:
        pair = self.device_ca.issue_client(certificate_of) if certificate_of else None
        target = f"127.0.0.1:{self.gateway.status['grpc_port']}"
        return GrpcDevice(target, FLEET, device, token, root_certificates=self.server_ca.pem, client_certificate=pair)


@pytest.fixture(scope="module")
def server_ca() -> Authority:
    return new_authority("gateway CA")


@pytest.fixture(scope="module")
def device_ca() -> Authority:
    return new_authority("demo device CA")


async def mutual_tls(tmp_path: Path, nats_url: str, server_ca: Authority, device_ca: Authority, mode: str,
                     fleet: DeviceFleet | None = None) -> MutualTls:  # fmt: skip
    files = server_ca.tls_secret_files(tmp_path / "gateway-tls", GATEWAY_NAMES)
    (tmp_path / "device-ca.crt").write_bytes(device_ca.pem)
    gw = await start_gateway(tmp_path, nats_url, fleet, grpc_port=0, coap_port=0, tls_cert_file=files / "tls.crt",
                             tls_key_file=files / "tls.key", tls_client_ca_file=tmp_path / "device-ca.crt",
                             tls_client_auth=mode)  # fmt: skip
    return MutualTls(gw, server_ca, device_ca, tmp_path)


@pytest.fixture
async def required(
    tmp_path: Path, nats_server: NatsServer, server_ca: Authority, device_ca: Authority
) -> AsyncIterator[MutualTls]:
    setup = await mutual_tls(tmp_path, nats_server.url, server_ca, device_ca, "Required")
    try:
        yield setup
    finally:
        await stop_gateway(setup.gateway)


@pytest.fixture
async def optional(
    tmp_path: Path, nats_server: NatsServer, server_ca: Authority, device_ca: Authority
) -> AsyncIterator[MutualTls]:
    setup = await mutual_tls(tmp_path, nats_server.url, server_ca, device_ca, "Optional")
    try:
        yield setup
    finally:
        await stop_gateway(setup.gateway)


async def post(mtls: MutualTls, device: str, context: ssl.SSLContext, seq: int,
               headers: dict[str, str] | None = None) -> tuple[int, dict[str, object]]:  # fmt: skip
    async with (
        aiohttp.ClientSession() as session,
        session.post(mtls.telemetry_url(device), json=body(seq), ssl=context, headers=headers) as response,
    ):
        return response.status, await response.json()


async def test_a_device_certificate_stands_in_for_the_token_over_https(required: MutualTls) -> None:
    status, answer = await post(required, "meter-7", required.client_context("meter-7"), 1)
    assert (status, answer["accepted"]) == (202, 1)
    assert await required.gateway.stored_readings("meter-7") == [1]


async def test_a_certificate_speaks_only_for_its_own_device(required: MutualTls) -> None:
    token = {"Authorization": f"Bearer {required.gateway.token('meter-8')}"}  # a token does not override it
    status, answer = await post(required, "meter-8", required.client_context("meter-7"), 1, token)
    assert status == 403 and answer["error"] == "certificate_mismatch"
    assert "'meter-7'" in str(answer["detail"]) and "'meter-8'" in str(answer["detail"])
    assert await required.gateway.stored_readings("meter-8") == []


async def test_a_certificate_with_two_cns_speaks_for_no_device(required: MutualTls) -> None:
    """Readers disagree on which of several CNs a certificate names; the gateway takes none of them."""
    certificate, key = required.device_ca.issue_client("meter-8", "meter-7")
    (required.folder / "two-cns.crt").write_bytes(certificate)
    (required.folder / "two-cns.key").write_bytes(key)
    context = required.client_context(None)
    context.load_cert_chain(required.folder / "two-cns.crt", required.folder / "two-cns.key")
    for device in ("meter-8", "meter-7"):
        status, answer = await post(required, device, context, 1)
        assert (status, answer["error"]) == (403, "certificate_mismatch"), answer
        assert "exactly one subject CN" in str(answer["detail"])
    target = f"127.0.0.1:{required.gateway.status['grpc_port']}"
    grpc_device = GrpcDevice(target, FLEET, "meter-7", None, root_certificates=required.server_ca.pem,
                             client_certificate=(certificate, key))  # fmt: skip
    async with grpc_device as dev:
        with pytest.raises((StreamClosed, grpc.aio.AioRpcError)):
            await dev.send(body(5)["readings"], timeout=5)  # type: ignore[arg-type]
        assert "PERMISSION_DENIED" in dev.closed_because
    assert await required.gateway.stored_readings("meter-7") == []
    assert await required.gateway.stored_readings("meter-8") == []


async def test_required_refuses_a_handshake_without_a_certificate_or_with_another_cas(required: MutualTls) -> None:
    token = {"Authorization": f"Bearer {required.gateway.token('meter-7')}"}
    impostor = required.client_context("meter-7", new_authority("another CA"))
    for context in (required.client_context(None), impostor):
        with pytest.raises((aiohttp.ClientError, ssl.SSLError, ConnectionError)):
            await post(required, "meter-7", context, 1, token)
    assert await required.gateway.stored_readings("meter-7") == []


async def test_a_client_that_never_finishes_the_tls_handshake_is_closed_as_a_silent_one_is(
    tmp_path: Path, nats_server: NatsServer, server_ca: Authority, device_ca: Authority, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection that sends no ClientHello was held 60 s on HTTPS (asyncio's default) and 120 s on gRPC
    (grpc's), where one that sends no request headers is closed after HEADER_TIMEOUT_S (here shortened)."""
    monkeypatch.setattr(httpserver, "HEADER_TIMEOUT_S", 1.0)
    setup = await mutual_tls(tmp_path, nats_server.url, server_ca, device_ca, "Required")
    loop = asyncio.get_running_loop()

    async def closed_after(port: int) -> float:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)  # and nothing sent
        started = loop.time()
        try:
            assert await asyncio.wait_for(reader.read(), 30) == b""
            return loop.time() - started
        finally:
            writer.close()

    try:
        waited = await asyncio.gather(
            *(closed_after(setup.gateway.status[port]) for port in ("http_port", "grpc_port"))
        )
        assert max(waited) < 5, waited
        status, _ = await post(setup, "meter-7", setup.client_context("meter-7"), 1)  # a device that speaks gets in
        assert status == 202
    finally:
        await stop_gateway(setup.gateway)


async def test_device_commands_take_the_certificate_too(required: MutualTls) -> None:
    base = f"https://127.0.0.1:{required.gateway.status['http_port']}/v1/fleets/{FLEET}/devices"
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base}/meter-7/commands", ssl=required.client_context("meter-7")) as response:
            assert response.status == 200, await response.text()
            assert await response.json() == {"commands": []}
        async with session.get(f"{base}/meter-8/commands", ssl=required.client_context("meter-7")) as response:
            assert response.status == 403 and (await response.json())["error"] == "certificate_mismatch"


async def test_a_websocket_session_is_admitted_by_its_certificate(required: MutualTls) -> None:
    url = f"wss://127.0.0.1:{required.gateway.status['http_port']}/v1/fleets/{FLEET}/devices/meter-7/ws"
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(url, ssl=required.client_context("meter-7"), protocols=("fleetflow.v1",)) as ws,
    ):
        await ws.send_json({"type": "telemetry", "id": "1", **body(3)})
        answer = await ws.receive_json(timeout=10)
    assert answer["type"] == "ack" and answer["accepted"] == 1, answer


async def test_required_turns_coap_off_which_has_no_dtls_to_carry_a_certificate(
    required: MutualTls, tmp_path: Path, nats_server: NatsServer, server_ca: Authority, device_ca: Authority
) -> None:
    assert "coap_port" not in required.gateway.status
    optional = await mutual_tls(tmp_path / "optional", nats_server.url, server_ca, device_ca, "Optional")
    try:
        assert optional.gateway.status["coap_port"] > 0
    finally:
        await stop_gateway(optional.gateway)


async def test_grpc_with_a_client_key_pair_and_no_token(required: MutualTls) -> None:
    async with required.grpc_device("meter-7", certificate_of="meter-7") as dev:
        assert (await dev.send(body(5)["readings"]))["accepted"] == 1  # type: ignore[arg-type]
    async with required.grpc_device("meter-8", certificate_of="meter-7") as other:
        with pytest.raises((StreamClosed, grpc.aio.AioRpcError)):
            await other.send(body(5)["readings"], timeout=5)  # type: ignore[arg-type]
        assert "PERMISSION_DENIED" in other.closed_because and "'meter-7'" in other.closed_because
    token = required.gateway.token("meter-7")
    async with required.grpc_device("meter-7", certificate_of=None, token=token) as without:
        with pytest.raises((StreamClosed, grpc.aio.AioRpcError, TimeoutError)):
            await without.send(body(6)["readings"], timeout=5)  # type: ignore[arg-type]
    assert await required.gateway.stored_readings("meter-7") == [5]


async def test_optional_takes_certificates_and_tokens(optional: MutualTls) -> None:
    status, _ = await post(optional, "meter-7", optional.client_context("meter-7"), 1)
    assert status == 202
    token = {"Authorization": f"Bearer {optional.gateway.token('meter-9')}"}
    status, _ = await post(optional, "meter-9", optional.client_context(None), 1, token)
    assert status == 202
    status, answer = await post(optional, "meter-9", optional.client_context(None), 2)
    assert status == 401 and answer["error"] == "missing_token"
    with pytest.raises((aiohttp.ClientError, ssl.SSLError, ConnectionError)):
        await post(optional, "meter-7", optional.client_context("meter-7", new_authority("another CA")), 2)
    # grpcio cannot ask for a certificate without requiring one (grpc_api.tls_credentials): tokens over gRPC.
    async with optional.grpc_device("meter-9", certificate_of=None, token=optional.gateway.token("meter-9")) as dev:
        assert (await dev.send(body(3)["readings"]))["accepted"] == 1  # type: ignore[arg-type]
    assert await optional.gateway.stored_readings("meter-7") == [1]
    assert await optional.gateway.stored_readings("meter-9") == [1, 3]


async def test_a_certificate_gets_the_limits_a_token_gets_in_one_rate_bucket(
    tmp_path: Path, nats_server: NatsServer, server_ca: Authority, device_ca: Authority
) -> None:
    limits = {"maxBodyBytes": 4096, "maxBatchReadings": 10, "rateLimit": {"readingsPerSecond": 0.1, "burst": 30}}
    setup = await mutual_tls(tmp_path, nats_server.url, server_ca, device_ca, "Optional", fleet_resource(limits))
    certificate = setup.client_context("meter-7")

    async def send(batch: list[dict[str, Any]], context: ssl.SSLContext, **headers: str) -> dict[str, Any]:
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                setup.telemetry_url("meter-7"), json={"readings": batch}, ssl=context, headers=headers
            ) as response,  # fmt: skip
        ):
            return {"status": response.status, **await response.json()}

    try:
        first = readings(1, 10)
        assert (await send(first, certificate))["duplicate"] is False
        assert (await send(first, certificate))["duplicate"] is True  # a retry: stored once
        assert (await send(readings(11, 100), certificate))["error"] == "body_too_large"
        assert (await send(readings(11, 11), certificate))["error"] == "batch_too_large"
        token = f"Bearer {setup.gateway.token('meter-7')}"
        assert (await send(readings(11, 10), setup.client_context(None), Authorization=token))["status"] == 202
        # The burst of 30 is spent (the retry counted too), by certificate and by token: the bucket is the
        # device's, whatever proved who it is and whichever protocol it speaks.
        url = f"wss://127.0.0.1:{setup.gateway.status['http_port']}/v1/fleets/{FLEET}/devices/meter-7/ws"
        async with aiohttp.ClientSession() as session, session.ws_connect(url, ssl=certificate) as ws:
            await ws.send_json({"type": "telemetry", "readings": readings(21, 1)})
            limited = await ws.receive_json(timeout=10)
        assert (limited["status"], limited["error"]) == (429, "rate_limited"), limited
        assert await setup.gateway.stored_readings("meter-7") == list(range(1, 21))
    finally:
        await stop_gateway(setup.gateway)


# --- on a cluster -----------------------------------------------------------------------------------------


def test_the_gateway_reads_the_device_ca_where_the_operator_mounts_it_and_only_that_key() -> None:
    f = fleet(fleet_doc(gateway=DEVICE_CERTIFICATES_GATEWAY))
    settings = GatewaySettings(**{**yaml.safe_load(gateway.rendered_config(f)), "secret_file": "/s"})
    spec = gateway.gateway_statefulset(f, "fleetflow", "IfNotPresent", {})["spec"]["template"]["spec"]
    (volume,) = [v for v in spec["volumes"] if v.get("secret", {}).get("secretName") == "cold-device-ca"]
    assert volume["secret"]["items"] == [{"key": CA_KEY, "path": CA_KEY}], "never the CA Issuer's private key"
    (mount,) = [m for m in spec["containers"][0]["volumeMounts"] if m["name"] == volume["name"]]
    assert settings.tls_client_ca_file == Path(mount["mountPath"]) / CA_KEY
    assert settings.device_certificates_required and settings.tls_cert_file is not None
    optional = fleet(fleet_doc(gateway={"tls": {"secretName": "g", "clientAuth": {"caSecretRef": {"name": "ca"}}}}))
    assert yaml.safe_load(gateway.rendered_config(optional))["tls_client_auth"] == "Optional"
    assert "coap" not in gateway.endpoints(f) and "coap" in gateway.endpoints(optional)  # Required: no CoAP
    assert "tls_client_ca_file" not in yaml.safe_load(gateway.rendered_config(fleet(fleet_doc())))


def test_client_auth_without_a_ca_or_with_an_unknown_mode_is_refused_naming_the_field() -> None:
    cases = (
        ({}, "clientAuth.caSecretRef: required"),
        ({"mode": "Sometimes", "caSecretRef": {"name": "ca"}}, "clientAuth.mode.*Sometimes.*Optional.*Required"),
    )
    for client_auth, expected in cases:
        with pytest.raises(SpecError, match=expected):
            fleet(fleet_doc(gateway={"tls": {"secretName": "g", "clientAuth": client_auth}}))
    with pytest.raises(pydantic.ValidationError, match=r"tls_client_ca_file.*tls_cert_file"):
        GatewaySettings(fleet=fleet_resource(), secret_file=Path("/s"), tls_client_ca_file=Path("/ca.crt"))


# --- MQTT: nats-server's listener verifies the certificate, the gateway's auth callout admits the device by it ---

MQTT_FLEET = fleet(fleet_doc(streams={"partitions": 2, "maxBytes": "1Gi"}, gateway=DEVICE_CERTIFICATES_GATEWAY,
                             nats={"managed": {"tls": {"secretName": "cold-nats-tls"}}}))  # fmt: skip


def mqtt_block(fleet_: DeviceFleet) -> str:
    """The mqtt {} block of the nats.conf the operator renders for `fleet_`."""
    return nats_builder.server_config(fleet_).split("mqtt {")[1].split("accounts {")[0]


def mqtt_connect(port: int, username: str, password: str | None, server_ca: Path,
                 certificate: tuple[Path, Path] | None) -> str:  # fmt: skip
    """How the MQTT listener answers a real paho client over TLS: "Success" if admitted, else why not."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=username, protocol=mqtt.MQTTv311)
    client.username_pw_set(username, password)
    client.tls_set(ca_certs=str(server_ca), certfile=str(certificate[0]) if certificate else None,
                   keyfile=str(certificate[1]) if certificate else None)  # fmt: skip
    try:
        return connect_and_wait(client, port)
    finally:
        client.disconnect()
        client.loop_stop()


@pytest.fixture
def mqtt_listener(tmp_path: Path, server_ca: Authority, device_ca: Authority) -> Iterator[tuple[Pod, TlsNats]]:
    """The fleet's managed NATS as the operator renders it (MQTT over TLS, verifying devices' certificates)."""
    secret = nats_credentials.credentials_secret(MQTT_FLEET, nats_credentials.new_values())
    server_files = server_ca.tls_secret_files(tmp_path / "nats-tls", nats_builder.tls_dns_names(MQTT_FLEET))
    (server_files / "device-ca").mkdir()
    (server_files / "device-ca" / CA_KEY).write_bytes(device_ca.pem)
    mount_client_secrets(MQTT_FLEET, secret, server_ca, tmp_path / "mounts")
    with managed_nats(MQTT_FLEET, secret, tmp_path / "nats", tls_dir=server_files) as pods:
        yield pods[0], TlsNats(pods[0], secret, server_ca, tmp_path / "mounts")


async def test_mqtt_devices_are_admitted_by_their_certificate(
    tmp_path: Path, mqtt_listener: tuple[Pod, TlsNats], device_ca: Authority
) -> None:
    pod, tls_nats = mqtt_listener
    assert "verify: true" in mqtt_block(MQTT_FLEET)
    optional = fleet(fleet_doc(gateway={"tls": {"secretName": "g", "clientAuth": {"caSecretRef": {"name": "ca"}}}},
                               nats={"managed": {"tls": {"secretName": "cold-nats-tls"}}}))  # fmt: skip
    assert "verify" not in mqtt_block(optional), "nats-server cannot ask for a certificate without requiring one"
    config = mounted(gateway.rendered_config(MQTT_FLEET), tls_nats.mounts, pod)
    settings = GatewaySettings(**{**config, "secret_file": str(tmp_path / "device-secret")})
    (tmp_path / "device-secret").write_bytes(base64.b64encode(secrets.token_bytes(32)))
    assert settings.mqtt_issuer_seed_file is not None
    nc = await jetstream.connect(settings.nats_url, "gateway", login=settings.nats_login(), tls=settings.nats_tls())
    authorizer = MqttAuthorizer(MQTT_FLEET, credentials.read_secret(settings.secret_file),
                                settings.mqtt_issuer_seed_file.read_bytes().strip(), metrics.get_meter(__name__))  # fmt: skip
    subscription = await authorizer.subscribe(nc)
    server_ca_file = tmp_path / "server-ca.crt"
    server_ca_file.write_bytes(tls_nats.authority.pem)
    pump_1 = device_ca.client_files(tmp_path / "clients", "pump-1")
    token = credentials.device_token(credentials.read_secret(settings.secret_file), "cold", "pump-1")

    def answer(username: str, password: str | None, certificate: tuple[Path, Path] | None) -> Any:
        return asyncio.to_thread(mqtt_connect, pod.mqtt_port, username, password, server_ca_file, certificate)

    try:
        assert await answer("cold/pump-1", None, pump_1) == "Success", "the certificate stands in for the token"
        assert await answer("cold/pump-2", None, pump_1) == "Not authorized", "it speaks only for its own device"
        assert await answer("cold/pump-1", token, None) != "Success", "Required: no certificate, no handshake"
        impostor = new_authority("another CA").client_files(tmp_path / "impostor", "pump-1")
        assert await answer("cold/pump-1", token, impostor) != "Success"
    finally:
        await subscription.unsubscribe()
        await nc.close()


def test_the_device_ca_example_issues_device_certificates_the_gateway_accepts() -> None:
    documents = list(yaml.safe_load_all((PRODUCTION / "device-ca.yaml").read_text()))
    issuers = {d["metadata"]["name"]: d["spec"] for d in documents if d["kind"] == "Issuer"}
    certificates = {d["metadata"]["name"]: d["spec"] for d in documents if d["kind"] == "Certificate"}
    assert all(c["issuerRef"]["name"] in issuers for c in certificates.values())
    (ca,) = [c for c in certificates.values() if c.get("isCA")]
    (ca_issuer,) = [name for name, spec in issuers.items() if spec.get("ca", {}).get("secretName") == ca["secretName"]]
    devices = [c for c in certificates.values() if not c.get("isCA")]
    assert devices and all(c["issuerRef"]["name"] == ca_issuer and c["usages"] == ["client auth"] for c in devices)
    example = fleet(fleet_doc(gateway={"tls": {"secretName": "demo-gateway-tls",
                                               "clientAuth": {"mode": "Required",
                                                              "caSecretRef": {"name": ca["secretName"]}}}}))  # fmt: skip
    for device in devices:
        check_device_id(example, device["commonName"], re.compile(example.spec.devices.id_pattern))


def test_the_device_ca_is_the_only_ca_a_client_certificate_may_chain_to(tmp_path: Path, device_ca: Authority) -> None:
    """No system CA: a certificate a public CA issued to anyone must never name a device."""
    files = new_authority("gateway CA").tls_secret_files(tmp_path / "tls", GATEWAY_NAMES)
    (tmp_path / "device-ca.crt").write_bytes(device_ca.pem)
    context = httpserver.tls_context(files / "tls.crt", files / "tls.key", tmp_path / "device-ca.crt")
    assert context is not None and context.verify_mode == ssl.CERT_OPTIONAL
    assert [ca["subject"] for ca in context.get_ca_certs()] == [((("commonName", "demo device CA"),),)]
    (tmp_path / "not-a-ca.crt").write_text("not PEM")
    with pytest.raises(ValueError, match=r"tls_client_ca_file '.*not-a-ca.crt': not a readable PEM CA"):
        httpserver.tls_context(files / "tls.crt", files / "tls.key", tmp_path / "not-a-ca.crt", True)


def test_a_verified_certificate_without_a_cn_names_no_device() -> None:
    authenticator = DeviceAuthenticator(FLEET, b"secret")
    certified = certified_device({"subject": ((("organizationName", "Example"),),)})
    assert certified == ""
    with pytest.raises(Rejection, match="exactly one subject CN") as refused:
        authenticator.authenticate("meter-7", None, certified)
    assert refused.value.status == 403 and refused.value.reason == "certificate_mismatch"
    assert certified_device(None) is None and certified_device({}) is None  # no certificate: the token decides
