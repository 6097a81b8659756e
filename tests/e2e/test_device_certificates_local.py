"""Device certificates on the local platform (`fleetflow up --gateway-tls CERT KEY --device-ca CA`), in this
process: a fleet that requires them gets HTTPS and MQTT over TLS, where a device's certificate stands in for its
token and no certificate means no connection."""

import asyncio
import shutil
import ssl
import time
from pathlib import Path

import aiohttp
import pytest
import yaml

from fleetflow.local.platform import DeviceTls, LocalPlatform
from fleetflow.local.resources import load_resources
from tests.integration.connectivity.test_device_certificates import mqtt_connect
from tests.support.certificates import new_authority

QUICKSTART = Path(__file__).resolve().parents[2] / "examples" / "quickstart"
pytestmark = pytest.mark.e2e


def requiring_certificates(folder: Path) -> Path:
    """The quickstart, its fleet saying that devices must present certificates."""
    shutil.copytree(QUICKSTART, folder)
    fleet = yaml.safe_load((folder / "fleet.yaml").read_text())
    client_auth = {"mode": "Required", "caSecretRef": {"name": "demo-device-ca"}}
    fleet["spec"].setdefault("gateway", {})["tls"] = {"secretName": "demo-gateway-tls", "clientAuth": client_auth}
    (folder / "fleet.yaml").write_text(yaml.safe_dump(fleet))
    return folder


async def test_a_fleet_that_requires_certificates_takes_them_over_https_and_mqtt(tmp_path: Path) -> None:
    authority = new_authority("local CA")
    files = authority.tls_secret_files(tmp_path / "tls", [])  # for 127.0.0.1
    pump = authority.client_files(tmp_path / "clients", "pump-1")
    platform = LocalPlatform(load_resources([requiring_certificates(tmp_path / "yaml")]), tmp_path / "data",
                             device_tls=DeviceTls((files / "tls.crt", files / "tls.key"), files / "ca.crt"))  # fmt: skip
    fleet = (await platform.start())["fleets"]["demo"]
    try:
        assert fleet["http"].startswith("https://") and fleet["mqtt"].startswith("mqtts://")
        context = ssl.create_default_context(cafile=files / "ca.crt")
        context.load_cert_chain(*pump)
        body = {"readings": [{"seq": 1, "ts": int(time.time() * 1000), "metrics": {"temperature": 4.2}}]}
        url = f"{fleet['http']}/v1/fleets/demo/devices/pump-1/telemetry"
        async with aiohttp.ClientSession() as session, session.post(url, json=body, ssl=context) as response:
            assert response.status == 202, await response.text()
        port = int(fleet["mqtt"].rsplit(":", 1)[1])
        admitted = await asyncio.to_thread(mqtt_connect, port, "demo/pump-1", None, files / "ca.crt", pump)
        assert admitted == "Success"
        refused = await asyncio.to_thread(mqtt_connect, port, "demo/pump-1", "a token", files / "ca.crt", None)
        assert refused != "Success"
    finally:
        assert await platform.stop(drain_timeout=30)
