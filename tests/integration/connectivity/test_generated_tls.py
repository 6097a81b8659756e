"""The certificates the operator's fleet CA issues (`tls.generate`), in real servers: the Secrets the operator
writes, mounted as the kubelet would, in the nats.conf the operator renders and in a real gateway. A nats-py
client, and an HTTPS device, that verify with the fleet's CA (ca.crt of the Secret) connect under the names the
certificate holds; clients that trust only the system's CAs, or another CA, are refused."""

import base64
import datetime
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import nats
import pytest

from fleetflow.api.tls import CA_KEY, CERT_KEY, KEY_KEY
from fleetflow.operator import fleet_ca, nats_credentials
from fleetflow.operator.builders import nats as nats_builder
from tests.integration.connectivity.conftest import FLEET as LOCAL_FLEET
from tests.integration.connectivity.conftest import start_gateway, stop_gateway
from tests.operator.variants import fleet, fleet_doc
from tests.support.certificates import new_authority
from tests.support.managed_nats import Pod, managed_nats, secret_value
from tests.support.natsserver import NatsServer

FLEET = fleet(fleet_doc(streams={"maxBytes": "1Gi"}, nats={"managed": {"tls": {"generate": True}}}))
# What the services dial: the client Service's name, which the certificate must hold (127.0.0.1 is not in it).
SERVICE_NAME = f"{nats_builder.client_service_name(FLEET)}.ns1.svc"


def mount(secret: dict[str, Any], folder: Path) -> Path:
    """A Secret volume: one file per key."""
    folder.mkdir(parents=True)
    for key, value in secret["data"].items():
        (folder / key).write_bytes(base64.b64decode(value))
    return folder


@pytest.fixture
def generated(tmp_path: Path) -> Iterator[tuple[Pod, dict[str, Any], dict[str, Any]]]:
    now = datetime.datetime.now(datetime.UTC)
    authority = fleet_ca.new_authority(FLEET, now)
    (want,) = fleet_ca.wanted(FLEET)
    certificate = fleet_ca.certificate_secret(FLEET, want, fleet_ca.issue(authority, want.dns_names, now))
    assert certificate["metadata"]["name"] == nats_builder.tls_secret_name(FLEET)
    credentials = nats_credentials.credentials_secret(FLEET, nats_credentials.new_values())
    with managed_nats(FLEET, credentials, tmp_path / "nats", tls_dir=mount(certificate, tmp_path / "tls")) as pods:
        yield pods[0], certificate, credentials


async def connect(pod: Pod, credentials: dict[str, Any], context: ssl.SSLContext) -> nats.NATS:
    return await nats.connect(pod.url.replace("nats://", "tls://"), tls=context, tls_hostname=SERVICE_NAME,
                              user="fleetflow", password=secret_value(credentials, nats_credentials.SERVICES_PASSWORD_KEY),
                              allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=5)  # fmt: skip


async def test_a_client_with_the_fleets_ca_connects_and_others_are_refused(
    generated: tuple[Pod, dict[str, Any], dict[str, Any]],
) -> None:
    pod, certificate, credentials = generated
    trusted = ssl.create_default_context(cadata=base64.b64decode(certificate["data"][CA_KEY]).decode())
    nc = await connect(pod, credentials, trusted)
    try:
        assert nc.is_connected and (await nc.jetstream().account_info()).streams >= 0
    finally:
        await nc.close()
    for untrusted in (ssl.create_default_context(), ssl.create_default_context(cadata=new_authority().pem.decode())):
        with pytest.raises(ssl.SSLCertVerificationError, match="CERTIFICATE_VERIFY_FAILED"):
            await connect(pod, credentials, untrusted)


async def test_devices_reach_the_gateway_over_https_by_its_service_and_ingress_names_with_the_fleets_ca(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    exposed = fleet(
        fleet_doc(gateway={"tls": {"generate": True}, "ingress": {"http": {"host": "telemetry.example.com"}}})
    )
    now = datetime.datetime.now(datetime.UTC)
    (want,) = fleet_ca.wanted(exposed)
    certificate = fleet_ca.certificate_secret(exposed, want, fleet_ca.issue(fleet_ca.new_authority(exposed, now),
                                                                            want.dns_names, now))  # fmt: skip
    files = mount(certificate, tmp_path / "gateway-tls")
    gw = await start_gateway(tmp_path, nats_server.url, tls_cert_file=files / CERT_KEY, tls_key_file=files / KEY_KEY)
    body = {"readings": [{"seq": 1, "ts": "2026-11-23T10:00:00Z", "metrics": {"temperature": 4.2}}]}
    url = f"https://127.0.0.1:{gw.status['http_port']}/v1/fleets/{LOCAL_FLEET}/devices/meter-7/telemetry"
    headers = {"Authorization": f"Bearer {gw.token('meter-7')}"}
    trusted = ssl.create_default_context(cadata=(files / CA_KEY).read_text())
    try:
        async with aiohttp.ClientSession() as session:
            for name in ("cold-gateway.ns1.svc", "telemetry.example.com"):
                async with session.post(url, json=body, headers=headers, ssl=trusted, server_hostname=name) as answer:
                    assert answer.status == 202, f"{name}: {await answer.text()}"
            with pytest.raises(aiohttp.ClientConnectorCertificateError):  # a name the certificate does not hold
                async with session.post(
                    url, json=body, headers=headers, ssl=trusted, server_hostname="elsewhere.example.com"
                ):
                    pass
            with pytest.raises(aiohttp.ClientConnectorCertificateError):  # the system's CAs only
                async with session.post(url, json=body, headers=headers, server_hostname="cold-gateway.ns1.svc"):
                    pass
    finally:
        await stop_gateway(gw)
