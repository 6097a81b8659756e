"""CoAP with aiocoap's client against a real gateway and nats-server: confirmable POSTs (JSON and CBOR, block-wise)
answered after JetStream and stored once, retransmissions answered from the deduplication, the HTTP refusals as
4.xx codes with the JSON payload, the rate limit shared with HTTP, and commands through Observe."""

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import cbor2
import pytest
from aiocoap import CON, POST, Code, Context, Message

from fleetflow.device.coap_client import CoapDevice
from fleetflow.runtime.commands import CommandStore
from tests.integration.connectivity.conftest import FLEET, Gateway, fleet_resource, start_gateway, stop_gateway
from tests.integration.connectivity.test_grpc import queue_command, readings
from tests.support.natsserver import NatsServer

MAX_BODY = 4096


@pytest.fixture
async def coap_gateway(tmp_path: Path, nats_server: NatsServer) -> AsyncIterator[Gateway]:
    fleet = fleet_resource({"maxBodyBytes": MAX_BODY, "rateLimit": {"readingsPerSecond": 1, "burst": 200}})
    gw = await start_gateway(tmp_path, nats_server.url, fleet, coap_port=0)
    try:
        yield gw
    finally:
        await stop_gateway(gw)


def url(gw: Gateway) -> str:
    return f"coap://127.0.0.1:{gw.status['coap_port']}"


def device(gw: Gateway, device_id: str, token_of: str | None = None, cbor: bool = False) -> CoapDevice:
    return CoapDevice(url(gw), FLEET, device_id, gw.token(token_of or device_id), cbor=cbor)


async def test_json_and_cbor_batches_are_acked_after_jetstream_and_stored_once(coap_gateway: Gateway) -> None:
    async with device(coap_gateway, "meter-1") as json_device, device(coap_gateway, "meter-1", cbor=True) as cbor:
        first = await json_device.send(readings(0, 10))
        assert first == {"status": 202, "accepted": 10, "duplicate": False, "firstSeq": 0, "lastSeq": 9}
        batch = readings(10, 10)
        assert (await cbor.send(batch))["accepted"] == 10
        assert (await cbor.send(batch))["duplicate"] is True  # a new request with the same readings
        large = await json_device.send(readings(20, 50))  # about 3 KB: aiocoap sends it block-wise (1 KiB blocks)
        assert (large["status"], large["accepted"]) == (202, 50)
    assert await coap_gateway.stored_readings("meter-1") == list(range(70))


async def test_a_retransmitted_message_is_answered_from_the_deduplication(coap_gateway: Gateway) -> None:
    request = Message(code=POST, payload=json.dumps({"readings": readings(1, 3)}).encode())
    request.mtype, request.mid, request.token = CON, 0x1234, b"\x07\x01"  # what aiocoap would choose itself
    request.opt.uri_path = ("v1", "fleets", FLEET, "devices", "meter-2", "telemetry")
    request.opt.uri_query = (f"token={coap_gateway.token('meter-2')}",)
    datagram = request.encode()
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", coap_gateway.status["coap_port"]))
        answers = []
        for _ in range(2):  # the same message id twice, as a device whose ACK was lost retransmits it
            await loop.sock_sendall(sock, datagram)
            while not (answers and answers[-1].payload) and len(answers) < 4:
                answers.append(Message.decode(await asyncio.wait_for(loop.sock_recv(sock, 2048), 10)))
        bodies = [json.loads(a.payload) for a in answers if a.payload]
    assert bodies and all(body["duplicate"] is False for body in bodies)  # never published a second time
    assert await coap_gateway.stored_readings("meter-2") == [1, 2, 3]


async def test_refusals_carry_the_coap_code_and_the_http_payload(coap_gateway: Gateway) -> None:
    async with device(coap_gateway, "meter-3") as dev, device(coap_gateway, "meter-3", token_of="meter-4") as thief:
        bad = await dev.send([{"seq": 1, "ts": readings(1, 1)[0]["ts"], "metrics": {"bad name": 1.0}}])
        assert (bad["status"], bad["error"]) == (400, "invalid_metric_name") and "bad name" in bad["detail"]
        too_large = await dev.send(readings(1, 100))  # over maxBodyBytes: refused while the blocks arrive
        assert (too_large["status"], too_large["error"]) == (413, "body_too_large")
        assert str(MAX_BODY) in too_large["detail"]
        spoofed = await thief.send(readings(1, 1))
        assert (spoofed["status"], spoofed["error"]) == (401, "invalid_token")
        context = await Context.create_client_context()
        try:
            base = f"{url(coap_gateway)}/v1/fleets/{FLEET}/devices/meter-3"
            no_token = await context.request(Message(code=POST, uri=f"{base}/telemetry", payload=b"{}")).response
            assert no_token.code == Code.UNAUTHORIZED
            assert "token=" in json.loads(no_token.payload)["detail"]
            query = f"?token={coap_gateway.token('meter-3')}"
            text = Message(code=POST, uri=f"{base}/telemetry{query}", payload=b"1,2", content_format=0)
            unsupported = await context.request(text).response
            assert unsupported.code == Code.UNSUPPORTED_CONTENT_FORMAT
            assert json.loads(unsupported.payload)["error"] == "unsupported_content_format"
            cbor_answer = Message(code=POST, uri=f"{base}/telemetry{query}", payload=b"{", accept=60)
            malformed = await context.request(cbor_answer).response
            assert cbor2.loads(malformed.payload)["error"] == "malformed_json"
        finally:
            await context.shutdown()
        assert (await dev.send(readings(1, 2)))["accepted"] == 2
    assert await coap_gateway.stored_readings("meter-3") == [1, 2]


async def test_a_cbor_key_twice_or_a_nan_is_refused_as_over_http(coap_gateway: Gateway) -> None:
    """cbor2 keeps the last of two equal keys: two `readings` had the first acknowledged and never stored."""
    first, second = readings(1, 2), readings(3, 1)

    def cbor_map(*pairs: tuple[str, object]) -> bytes:  # a map as a device may write it, keys repeated
        return bytes([0xA0 + len(pairs)]) + b"".join(cbor2.dumps(key) + cbor2.dumps(value) for key, value in pairs)

    reading = second[0]
    seq_twice = [cbor_map(("seq", 7), ("seq", 8), ("ts", reading["ts"]), ("metrics", reading["metrics"]))]
    nan = [{**reading, "metrics": {"temperature": float("nan")}}]
    bodies = {
        "readings twice": cbor_map(("readings", first), ("readings", second)),
        "seq twice": bytes([0xA1]) + cbor2.dumps("readings") + bytes([0x81]) + seq_twice[0],
        "nan": cbor2.dumps({"readings": nan}),
    }
    context = await Context.create_client_context()
    try:
        uri = f"{url(coap_gateway)}/v1/fleets/{FLEET}/devices/meter-8/telemetry?token={coap_gateway.token('meter-8')}"
        answers = {}
        for name, payload in bodies.items():
            response = await context.request(Message(code=POST, uri=uri, payload=payload, content_format=60)).response
            answers[name] = (response.code, json.loads(response.payload))
    finally:
        await context.shutdown()
    for name in ("readings twice", "seq twice"):
        code, body = answers[name]
        assert (code, body["error"]) == (Code.BAD_REQUEST, "duplicate_key"), (name, body)
        assert repr(name.split()[0]) in body["detail"]
    assert (answers["nan"][0], answers["nan"][1]["error"]) == (Code.BAD_REQUEST, "non_finite_number"), answers["nan"]
    async with device(coap_gateway, "meter-8", cbor=True) as dev:
        assert (await dev.send(second))["accepted"] == 1
    assert await coap_gateway.stored_readings("meter-8") == [3]


async def test_the_rate_limit_is_shared_with_http(coap_gateway: Gateway) -> None:
    headers = {"Authorization": f"Bearer {coap_gateway.token('meter-5')}"}
    async with aiohttp.ClientSession() as http:
        for first in range(0, 200, 50):
            async with http.post(f"{coap_gateway.url}/v1/fleets/{FLEET}/devices/meter-5/telemetry",
                                 json={"readings": readings(first, 50)}, headers=headers) as response:  # fmt: skip
                assert response.status == 202
    context = await Context.create_client_context()
    try:
        uri = f"{url(coap_gateway)}/v1/fleets/{FLEET}/devices/meter-5/telemetry?token={headers['Authorization'][7:]}"
        body = json.dumps({"readings": readings(200, 5)}).encode()
        limited = await context.request(Message(code=POST, uri=uri, payload=body)).response
        assert limited.code == Code.TOO_MANY_REQUESTS
        assert json.loads(limited.payload)["error"] == "rate_limited" and limited.opt.max_age >= 1
    finally:
        await context.shutdown()


async def test_commands_arrive_through_observe_and_results_are_reported(coap_gateway: Gateway) -> None:
    queued = [await queue_command(coap_gateway, "pump-9", f"step{i}") for i in range(2)]
    async with device(coap_gateway, "pump-9") as dev, device(coap_gateway, "pump-9", token_of="pump-8") as thief:
        refused = await thief.observe_commands()
        assert (refused["status"], refused["error"]) == (401, "invalid_token")
        assert (await dev.observe_commands())["status"] == 200
        got = [await asyncio.wait_for(dev.commands.get(), 5) for _ in queued]
        assert [c["id"] for c in got] == queued
        live = await queue_command(coap_gateway, "pump-9", "now", params={"setpoint": 4.5})
        pushed = await asyncio.wait_for(dev.commands.get(), 5)
        assert (pushed["id"], pushed["params"]) == (live, {"setpoint": 4.5})
        assert await dev.report(live, "succeeded", "ok") == {"status": 200, "id": live, "state": "succeeded"}
        unknown = await dev.report("no-such-command", "failed")
        assert (unknown["status"], unknown["error"]) == (404, "unknown_command")
    store = await CommandStore.open(coap_gateway.nc.jetstream(), FLEET)
    record = await store.get("pump-9", live)
    assert record is not None and [(t.state, t.detail) for t in record.history][1:] == [
        ("delivered", "via coap"), ("succeeded", "ok")]  # fmt: skip
