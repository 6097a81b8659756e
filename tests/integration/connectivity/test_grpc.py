"""The gRPC device API with a real grpcio client: acked telemetry stored once, commands pushed, auth enforced."""

import asyncio
import shutil
import subprocess
import time
from pathlib import Path

import grpc
import pytest

from fleetflow.device.grpc_client import GrpcDevice, StreamClosed
from fleetflow.runtime.commands import CommandStore, new_command, send_command
from tests.integration.connectivity.conftest import FLEET, Gateway, start_gateway, stop_gateway
from tests.support.natsserver import NatsServer


def readings(first: int, count: int) -> list[dict]:
    now = int(time.time() * 1000)
    return [{"seq": s, "ts": now + s, "metrics": {"temperature": 4.0 + s / 10}} for s in range(first, first + count)]


def device(gw: Gateway, device_id: str, token_of: str | None = None, **kwargs: object) -> GrpcDevice:
    target = f"127.0.0.1:{gw.status['grpc_port']}"
    return GrpcDevice(target, FLEET, device_id, gw.token(token_of or device_id), **kwargs)  # type: ignore[arg-type]


async def queue_command(
    gw: Gateway, device_id: str, name: str, ttl_ms: int = 60_000, params: dict | None = None
) -> str:
    js = gw.nc.jetstream()
    command = new_command(FLEET, device_id, name, params, ttl_ms=ttl_ms)
    record = await send_command(js, await CommandStore.open(js, FLEET), command)
    return record.command.id


async def test_stream_acks_each_batch_and_stores_every_reading_once(gateway: Gateway) -> None:
    async with device(gateway, "meter-1") as dev:
        batches = [readings(i * 10, 10) for i in range(20)]
        acks = [await dev.send(batch) for batch in batches]
        assert all(a["status"] == 202 and a["accepted"] == 10 and not a["duplicate"] for a in acks)
        assert (acks[3]["firstSeq"], acks[3]["lastSeq"]) == (30, 39)
        retry = await dev.send(batches[5])  # as after a lost ack: the same readings again
        assert retry["duplicate"] is True
        unary = await dev.publish(readings(200, 5))
        assert unary["accepted"] == 5
    assert sorted(await gateway.stored_readings("meter-1")) == list(range(205))


async def test_a_bad_batch_is_refused_with_the_reason_and_the_stream_stays_open(gateway: Gateway) -> None:
    async with device(gateway, "meter-2") as dev:
        refused = await dev.send([{"seq": 1, "ts": int(time.time() * 1000), "metrics": {"bad name": 1.0}}])
        assert refused["status"] == 400 and refused["error"] == "invalid_metric_name"
        assert "bad name" in refused["detail"]
        assert (await dev.send(readings(1, 3)))["accepted"] == 3
        unary = await dev.publish([{"seq": 5, "ts": 1, "metrics": {"t": 1.0}}])
        assert unary["status"] == "INVALID_ARGUMENT" and "invalid_timestamp" in unary["detail"]
    assert await gateway.stored_readings("meter-2") == [1, 2, 3]


async def test_commands_queued_while_offline_arrive_on_connect_in_order_then_live(gateway: Gateway) -> None:
    queued = [await queue_command(gateway, "pump-9", f"step{i}") for i in range(3)]
    expired = await queue_command(gateway, "pump-9", "late", ttl_ms=1000)
    await asyncio.sleep(1.1)  # its TTL passes while the device is away
    async with device(gateway, "pump-9") as dev:
        got = [await asyncio.wait_for(dev.commands.get(), 5) for _ in queued]
        assert [c["id"] for c in got] == queued and got[0]["name"] == "step0"
        live = await queue_command(gateway, "pump-9", "now")
        assert (await asyncio.wait_for(dev.commands.get(), 5))["id"] == live
        assert (await dev.report(live, "succeeded", "ok"))["state"] == "succeeded"
        refused = await dev.report("no-such-command", "failed")
        assert refused["status"] == 404
        assert dev.commands.empty()
    async with device(gateway, "pump-9") as again:  # reconnecting does not deliver anything twice
        await asyncio.sleep(0.5)
        assert again.commands.empty()
    store = await CommandStore.open(gateway.nc.jetstream(), FLEET)
    states = {r.command.id: r.state for r in await store.list("pump-9")}
    assert states == {**dict.fromkeys(queued, "delivered"), expired: "expired", live: "succeeded"}
    record = await store.get("pump-9", live)
    assert record is not None and [t.state for t in record.history] == ["queued", "delivered", "succeeded"]
    assert record.history[1].detail == "via grpc"


async def test_nested_command_params_arrive_whole(gateway: Gateway) -> None:
    params = {"slots": [{"from": "06:00", "setpoint": 4.5}, {"from": "22:00", "setpoint": 7.0}], "mode": "eco"}
    await queue_command(gateway, "pump-5", "schedule", params=params)
    async with device(gateway, "pump-5") as dev:
        assert (await asyncio.wait_for(dev.commands.get(), 5))["params"] == params


async def test_a_device_cannot_connect_publish_or_receive_as_another(gateway: Gateway) -> None:
    await queue_command(gateway, "pump-1", "secret")
    async with device(gateway, "pump-1", token_of="pump-2") as thief:
        with pytest.raises(StreamClosed, match="UNAUTHENTICATED"):
            await thief.send(readings(1, 1))
        assert thief.commands.empty()
        unary = await thief.publish(readings(1, 1))
        assert unary["status"] == "UNAUTHENTICATED"
    async with device(gateway, "pump-1") as real:
        assert (await asyncio.wait_for(real.commands.get(), 5))["name"] == "secret"
    assert await gateway.stored_readings("pump-1") == []


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, made with the openssl command."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a certificate")
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


async def test_tls_when_a_certificate_is_configured(
    tmp_path: Path, nats_server: NatsServer, certificate: tuple[Path, Path]
) -> None:
    cert, key = certificate
    gw = await start_gateway(tmp_path, nats_server.url, grpc_port=0, tls_cert_file=cert, tls_key_file=key)
    try:
        async with device(gw, "meter-7", root_certificates=cert.read_bytes()) as dev:
            assert (await dev.send(readings(1, 2)))["accepted"] == 2
        async with device(gw, "meter-7") as plaintext:
            with pytest.raises((StreamClosed, grpc.aio.AioRpcError, TimeoutError)):
                await plaintext.send(readings(3, 1), timeout=3)
    finally:
        await stop_gateway(gw)
