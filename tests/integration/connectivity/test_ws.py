"""WebSocket sessions with aiohttp's client against a real gateway and nats-server: each batch answered after
JetStream and stored once, the HTTP refusals as error frames on a session that stays open, commands pushed and
results taken, the token checked before the upgrade, one session per device, and a silent peer closed."""

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from fleetflow.device.ws_client import SessionClosed, WsDevice, session_url
from fleetflow.runtime.commands import CommandStore
from tests.integration.connectivity.conftest import FLEET, Gateway, fleet_resource, start_gateway, stop_gateway
from tests.integration.connectivity.test_grpc import queue_command, readings
from tests.support.natsserver import NatsServer

MAX_BODY = 4096


@pytest.fixture
async def ws_gateway(tmp_path: Path, nats_server: NatsServer) -> AsyncIterator[Gateway]:
    fleet = fleet_resource({"maxBodyBytes": MAX_BODY, "rateLimit": {"readingsPerSecond": 1, "burst": 200}})
    gw = await start_gateway(tmp_path, nats_server.url, fleet, ws_heartbeat=0.5)
    try:
        yield gw
    finally:
        await stop_gateway(gw)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def device(gw: Gateway, http: aiohttp.ClientSession, device_id: str, token_of: str | None = None) -> WsDevice:
    return WsDevice(http, gw.url, FLEET, device_id, gw.token(token_of or device_id))


async def test_each_batch_is_acked_in_order_and_stored_once_across_retries_and_reconnects(
    ws_gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    batches = [readings(i * 10, 10) for i in range(12)]
    async with device(ws_gateway, http, "meter-1") as dev:
        answers = [await dev.send(batch) for batch in batches[:8]]
        assert all(a["status"] == 202 and a["accepted"] == 10 and not a["duplicate"] for a in answers)
        assert [(a["firstSeq"], a["lastSeq"]) for a in answers[2:4]] == [(20, 29), (30, 39)]
        assert (await dev.send(batches[7]))["duplicate"] is True  # as after a lost answer
    async with device(ws_gateway, http, "meter-1") as again:  # a reconnect resends what it had not seen answered
        answers = [await again.send(batch) for batch in batches[7:]]
        assert [a["duplicate"] for a in answers] == [True, False, False, False, False]
    assert await ws_gateway.stored_readings("meter-1") == list(range(120))  # once each, in the order sent


async def test_bad_messages_get_the_http_refusals_and_the_session_goes_on(
    ws_gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    headers = {"Authorization": f"Bearer {ws_gateway.token('meter-2')}"}
    async with http.ws_connect(session_url(ws_gateway.url, FLEET, "meter-2"), headers=headers) as ws:

        async def answer(frame: str | bytes) -> dict[str, Any]:
            await (ws.send_bytes(frame) if isinstance(frame, bytes) else ws.send_str(frame))
            return dict(await ws.receive_json(timeout=5))

        now = int(time.time() * 1000)
        bad_name = await answer(
            json.dumps({"type": "telemetry", "id": 7, "readings": [{"seq": 1, "ts": now, "metrics": {"bad name": 1}}]})
        )
        assert bad_name["type"] == "error" and bad_name["status"] == 400 and bad_name["id"] == 7
        assert bad_name["error"] == "invalid_metric_name" and "bad name" in bad_name["detail"]
        assert (await answer("{not json"))["error"] == "malformed_json"
        unknown = await answer('{"type": "telemetrie", "readings": []}')
        assert unknown["error"] == "invalid_message" and "telemetrie" in unknown["detail"]
        assert (await answer(b'{"type": "telemetry"}'))["error"] == "invalid_message"  # binary frame
        assert (await answer('{"type": "telemetry", "readings": []}'))["error"] == "empty_batch"
        big = [{"seq": s, "ts": now, "metrics": {"temperature": 1.5}} for s in range(1, 100)]
        too_large = await answer(json.dumps({"type": "telemetry", "readings": big}))
        assert (too_large["status"], too_large["error"]) == (413, "body_too_large")
        assert str(MAX_BODY) in too_large["detail"]
        good = await answer(
            json.dumps(
                {"type": "telemetry", "id": "b1", "readings": [{"seq": 5, "ts": now, "metrics": {"temperature": 4.5}}]}
            )
        )
        assert good == {"type": "ack", "id": "b1", "accepted": 1, "duplicate": False, "firstSeq": 5, "lastSeq": 5}
    assert await ws_gateway.stored_readings("meter-2") == [5]


async def test_a_key_twice_in_a_message_is_refused_not_half_stored(
    ws_gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    """As over HTTP, a key twice is refused: read last-wins, the first `readings` would be acknowledged unstored."""
    headers = {"Authorization": f"Bearer {ws_gateway.token('meter-5')}"}
    async with http.ws_connect(session_url(ws_gateway.url, FLEET, "meter-5"), headers=headers) as ws:

        async def answer(frame: str) -> dict[str, Any]:
            await ws.send_str(frame)
            return dict(await ws.receive_json(timeout=5))

        first, second = json.dumps(readings(1, 2)), json.dumps(readings(3, 1))
        twice = await answer(f'{{"type": "telemetry", "readings": {first}, "readings": {second}}}')
        assert (twice["status"], twice["error"]) == (400, "duplicate_key") and "'readings'" in twice["detail"]
        id_twice = await answer(f'{{"type": "telemetry", "id": "a", "id": "b", "readings": {second}}}')
        assert id_twice["error"] == "duplicate_key" and "'id'" in id_twice["detail"]
        type_twice = await answer('{"type": "telemetry", "type": "telemetry", "id": "a:\\u003a", "readings": []}')
        assert type_twice["error"] == "duplicate_key" and "'type'" in type_twice["detail"]
        result_twice = await answer('{"type": "result", "id": "c1", "status": "failed", "status": "succeeded"}')
        assert result_twice["error"] == "duplicate_key" and "'status'" in result_twice["detail"]
        assert (await answer(f'{{"type": "telemetry", "id": "x:y", "readings": {second}}}'))["accepted"] == 1
        assert (await answer(f'{{"type": "telemetry", "id": null, "readings": {first}}}'))["accepted"] == 2
    assert await ws_gateway.stored_readings("meter-5") == [3, 1, 2]


async def test_the_token_is_checked_before_the_upgrade(ws_gateway: Gateway, http: aiohttp.ClientSession) -> None:
    with pytest.raises(SessionClosed, match="401"):
        await device(ws_gateway, http, "pump-1", token_of="pump-2").connect()
    url = session_url(ws_gateway.url, FLEET, "pump-1")
    async with http.get(url, headers={"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
                                      "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}) as refused:  # fmt: skip
        assert refused.status == 401
        body = await refused.json()
        assert body["error"] == "missing_token" and "bearer." in body["detail"]
    async with http.get(session_url(ws_gateway.url, "other", "pump-1")) as unknown:
        assert unknown.status == 404 and (await unknown.json())["error"] == "unknown_fleet"
    # A browser cannot set headers: the token rides as a subprotocol beside fleetflow.v1, which is chosen.
    protocols = ("fleetflow.v1", f"bearer.{ws_gateway.token('pump-1')}")
    async with http.ws_connect(url, protocols=protocols) as ws:
        assert ws.protocol == "fleetflow.v1"
        await ws.send_json({"type": "telemetry", "readings": readings(1, 2)})
        assert (await ws.receive_json(timeout=5))["accepted"] == 2
    assert await ws_gateway.stored_readings("pump-1") == [1, 2]


async def test_commands_are_pushed_in_order_and_results_reported(
    ws_gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    queued = [await queue_command(ws_gateway, "pump-9", f"step{i}") for i in range(3)]
    async with device(ws_gateway, http, "pump-9") as dev:
        got = [await asyncio.wait_for(dev.commands.get(), 5) for _ in queued]
        assert [c["id"] for c in got] == queued and got[1]["name"] == "step1"
        live = await queue_command(ws_gateway, "pump-9", "now", params={"setpoint": 4.5})
        pushed = await asyncio.wait_for(dev.commands.get(), 5)
        assert (pushed["id"], pushed["params"]) == (live, {"setpoint": 4.5})
        assert await dev.report(live, "succeeded", "ok") == {"status": 200, "id": live, "state": "succeeded"}
        unknown = await dev.report("no-such-command", "failed")
        assert (unknown["status"], unknown["error"]) == (404, "unknown_command")
        assert (await dev.send(readings(1, 1)))["accepted"] == 1  # the session goes on
    store = await CommandStore.open(ws_gateway.nc.jetstream(), FLEET)
    record = await store.get("pump-9", live)
    assert record is not None and [(t.state, t.detail) for t in record.history][1:] == [
        ("delivered", "via ws"), ("succeeded", "ok")]  # fmt: skip


async def test_the_rate_limit_is_one_bucket_per_device_across_http_and_ws(
    ws_gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    url = f"{ws_gateway.url}/v1/fleets/{FLEET}/devices/meter-3/telemetry"
    headers = {"Authorization": f"Bearer {ws_gateway.token('meter-3')}"}
    for first in range(0, 200, 50):  # the whole burst, over HTTP
        async with http.post(url, json={"readings": readings(first, 50)}, headers=headers) as response:
            assert response.status == 202
    async with device(ws_gateway, http, "meter-3") as dev:
        limited = await dev.send(readings(200, 5))
        assert (limited["status"], limited["error"]) == (429, "rate_limited") and limited["retryAfter"] >= 1
    assert await ws_gateway.stored_readings("meter-3") == list(range(200))


async def test_a_newer_session_replaces_the_older_one(ws_gateway: Gateway, http: aiohttp.ClientSession) -> None:
    async with device(ws_gateway, http, "pump-3") as first, device(ws_gateway, http, "pump-3") as second:
        with pytest.raises(SessionClosed, match="4001"):
            await first.send(readings(1, 1))
        command = await queue_command(ws_gateway, "pump-3", "reset")
        assert (await asyncio.wait_for(second.commands.get(), 5))["id"] == command
        assert (await second.send(readings(1, 1)))["accepted"] == 1


async def test_a_peer_that_answers_no_ping_is_closed(ws_gateway: Gateway, http: aiohttp.ClientSession) -> None:
    headers = {"Authorization": f"Bearer {ws_gateway.token('pump-4')}"}
    # autoping off: the client reads the gateway's pings but answers none, as a peer gone silent.
    async with http.ws_connect(session_url(ws_gateway.url, FLEET, "pump-4"), headers=headers, autoping=False) as ws:
        pings = 0
        deadline = time.monotonic() + 5
        while not ws.closed and time.monotonic() < deadline:
            message = await ws.receive(timeout=5)
            pings += message.type is aiohttp.WSMsgType.PING
            if message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
                break
        assert pings >= 1 and message.type is not aiohttp.WSMsgType.PING
    # and a session that answers its pings stays open past several heartbeats
    async with device(ws_gateway, http, "pump-4") as dev:
        await asyncio.sleep(0)
        deadline = time.monotonic() + 1.6
        while time.monotonic() < deadline:
            assert dev.connected
            await asyncio.sleep(0.1)
        assert (await dev.send(readings(1, 1)))["accepted"] == 1
