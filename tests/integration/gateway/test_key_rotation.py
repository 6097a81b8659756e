"""A device-key rotation's overlap: while the previous fleet secret lies beside the current one (as the operator
mounts `secret.previous` of the device Secret), a gateway accepts tokens of both; without it, only the current."""

import asyncio
import base64
import json
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest

from fleetflow.api import DeviceFleet
from fleetflow.gateway.main import serve
from fleetflow.runtime import credentials
from fleetflow.runtime.settings import GatewaySettings
from tests.support.natsserver import NatsServer

NOW_MS = 1_763_900_000_000
FLEET = DeviceFleet.model_validate({"metadata": {"name": "demo"}})


def new_secret() -> bytes:
    return base64.b64encode(secrets.token_bytes(32))


def write_secret(path: Path, value: bytes) -> None:
    path.write_bytes(value + b"\n")
    os.chmod(path, 0o600)


@asynccontextmanager
async def gateway(
    nats_server: NatsServer, folder: Path, secret_file: Path
) -> AsyncIterator[Callable[[str, bytes, int], Awaitable[int]]]:
    status = folder / "status.json"
    status.unlink(missing_ok=True)
    settings = GatewaySettings(fleet=FLEET, nats_url=nats_server.url, secret_file=secret_file, listen_port=0,
                               ops_port=0, status_file=status)  # fmt: skip
    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings, stop))
    async with asyncio.timeout(15):
        while not status.exists():
            await asyncio.sleep(0.02)
    url = f"http://127.0.0.1:{json.loads(status.read_text())['http_port']}"

    async def post(device: str, secret: bytes, seq: int) -> int:
        token = credentials.device_token(secret, "demo", device)
        body = {"readings": [{"seq": seq, "ts": NOW_MS + seq, "metrics": {"temp": 21.5}}]}
        async with aiohttp.ClientSession() as session, session.post(
            f"{url}/v1/fleets/demo/devices/{device}/telemetry", json=body,
            headers={"Authorization": f"Bearer {token}"},
        ) as response:  # fmt: skip
            return response.status

    try:
        yield post
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)


async def test_during_the_overlap_old_and_new_tokens_are_accepted_and_after_it_only_the_new(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    old, new, stranger = new_secret(), new_secret(), new_secret()
    secret_file = tmp_path / "secret"
    write_secret(secret_file, new)
    write_secret(credentials.previous_secret_path(secret_file), old)
    async with gateway(nats_server, tmp_path, secret_file) as post:
        assert await post("dev-old", old, 1) == 202, "a device still on its old token"
        assert await post("dev-new", new, 1) == 202, "a device given its new token"
        assert await post("dev-x", stranger, 1) == 401, "a token of neither secret"

    credentials.previous_secret_path(secret_file).unlink()  # retired: the gateways roll without it
    async with gateway(nats_server, tmp_path, secret_file) as post:
        assert await post("dev-old", old, 2) == 401
        assert await post("dev-new", new, 2) == 202


def test_a_previous_secret_too_short_to_be_one_is_refused_with_its_path(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    write_secret(secret_file, new_secret())
    write_secret(credentials.previous_secret_path(secret_file), b"short")
    with pytest.raises(ValueError, match=r"secret\.previous is 5 bytes; at least 16"):
        credentials.read_previous_secret(secret_file)


@pytest.mark.parametrize(("previous", "admitted"), [(True, True), (False, False)], ids=["overlap", "retired"])
def test_an_mqtt_device_on_its_old_token_is_admitted_only_during_the_overlap(previous: bool, admitted: bool) -> None:
    from opentelemetry import metrics

    from fleetflow.gateway.mqtt_auth import MqttAuthorizer, Refusal
    from fleetflow.runtime import natsauth

    old, new = new_secret(), new_secret()
    authorizer = MqttAuthorizer(FLEET, new, natsauth.new_issuer_seed(), metrics.get_meter(__name__),
                                old if previous else None)  # fmt: skip

    def request(secret: bytes) -> dict[str, object]:
        token = credentials.device_token(secret, "demo", "dev-1")
        return {"client_info": {"type": "mqtt", "mqtt_id": "demo/dev-1"}, "connect_opts": {"pass": token}}

    assert authorizer.admit(request(new), "dev-1")["sub"] == {"allow": ["fleetflow.demo.dev-1.commands"]}
    if admitted:
        authorizer.admit(request(old), "dev-1")
    else:
        with pytest.raises(Refusal, match="not the device token"):
            authorizer.admit(request(old), "dev-1")
