"""Commands over HTTP: sent by an application, long-polled by the device, with a queryable state history."""

import asyncio
import time

import aiohttp
import msgspec

from fleetflow.device.commands import CommandChannelError, HttpCommands
from fleetflow.runtime import subjects
from fleetflow.runtime.codec import Command
from tests.integration.connectivity.conftest import FLEET, Gateway


async def send(session: aiohttp.ClientSession, gw: Gateway, device: str, name: str, **body: object) -> dict:
    async with session.post(
        f"{gw.url}/v1/fleets/{FLEET}/devices/{device}/commands", json={"name": name, **body}, headers=gw.app_headers
    ) as response:
        assert response.status == 202, await response.text()
        return await response.json()


async def show(session: aiohttp.ClientSession, gw: Gateway, command_id: str) -> dict:
    async with session.get(f"{gw.url}/v1/fleets/{FLEET}/commands/{command_id}", headers=gw.app_headers) as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def wait_for_state(session: aiohttp.ClientSession, gw: Gateway, command_id: str, state: str) -> dict:
    """The command's record once it is in `state`. One published straight to the stream (as the processor does) is
    unknown (404) until the gateway's follower of the stream has recorded it."""
    deadline, seen = time.monotonic() + 10, "unknown"
    while time.monotonic() < deadline:
        async with session.get(f"{gw.url}/v1/fleets/{FLEET}/commands/{command_id}", headers=gw.app_headers) as answer:
            assert answer.status in (200, 404), await answer.text()
            record = await answer.json()
        if answer.status == 200:
            seen = record["state"]
            if seen == state:
                return record
        await asyncio.sleep(0.1)
    raise AssertionError(f"command {command_id} is {seen}, not {state}")


async def test_queued_commands_reach_the_device_once_in_order_with_history(gateway: Gateway) -> None:
    async with aiohttp.ClientSession() as session:
        sent = [await send(session, gateway, "pump-1", f"step{i}", params={"i": i}) for i in range(3)]
        assert all(c["state"] == "queued" for c in sent)
        device = HttpCommands(session, gateway.url, FLEET, "pump-1", gateway.token("pump-1"))

        received = await device.poll(wait=2)
        assert [c["id"] for c in received] == [c["id"] for c in sent]
        assert received[0]["params"] == {"i": 0} and received[0]["name"] == "step0"
        assert await device.poll(wait=0) == []  # delivered once

        assert (await device.report(sent[0]["id"], "succeeded", "done"))["state"] == "succeeded"
        assert (await device.report(sent[0]["id"], "succeeded"))["state"] == "succeeded"  # a retry is harmless
        await device.report(sent[1]["id"], "rejected", "unknown step")
        record = await show(session, gateway, sent[0]["id"])
        assert [t["state"] for t in record["history"]] == ["queued", "delivered", "succeeded"]
        times = [t["atMs"] for t in record["history"]]
        assert times == sorted(times) and times[0] == record["createdMs"]
        assert record["history"][1]["detail"] == "via http"

        async with session.get(
            f"{gateway.url}/v1/fleets/{FLEET}/commands", params={"device": "pump-1"}, headers=gateway.app_headers
        ) as response:
            listed = (await response.json())["commands"]
        assert [(c["id"], c["state"]) for c in listed] == [
            (sent[0]["id"], "succeeded"),
            (sent[1]["id"], "rejected"),
            (sent[2]["id"], "delivered"),
        ]
        try:
            await device.report(sent[0]["id"], "failed")
            raise AssertionError("a finished command accepted a different result")
        except CommandChannelError as exc:
            assert exc.status == 409 and exc.body["error"] == "state_conflict"


async def test_long_poll_returns_a_command_sent_while_waiting(gateway: Gateway) -> None:
    async with aiohttp.ClientSession() as session:
        device = HttpCommands(session, gateway.url, FLEET, "valve-2", gateway.token("valve-2"))
        poll = asyncio.create_task(device.poll(wait=10))
        await asyncio.sleep(0.3)
        started = time.monotonic()
        sent = await send(session, gateway, "valve-2", "open")
        received = await poll
        assert [c["id"] for c in received] == [sent["id"]]
        assert time.monotonic() - started < 3


async def test_nested_params_reach_the_device_and_the_record_unchanged(gateway: Gateway) -> None:
    params = {"slots": [{"from": "06:00", "setpoint": 4}, {"from": "22:00", "setpoint": 7}], "limits": {"max": 9}}
    async with aiohttp.ClientSession() as session:
        sent = await send(session, gateway, "pump-6", "schedule", params=params)
        device = HttpCommands(session, gateway.url, FLEET, "pump-6", gateway.token("pump-6"))
        assert [c["params"] for c in await device.poll(wait=2)] == [params]
        assert (await show(session, gateway, sent["id"]))["params"] == params


async def test_a_command_whose_ttl_passes_first_expires(gateway: Gateway) -> None:
    async with aiohttp.ClientSession() as session:
        sent = await send(session, gateway, "fan-3", "spin", ttlSeconds=1)
        record = await wait_for_state(session, gateway, sent["id"], "expired")
        assert record["history"][-1]["atMs"] == sent["expiresMs"]
        device = HttpCommands(session, gateway.url, FLEET, "fan-3", gateway.token("fan-3"))
        assert await device.poll(wait=0) == []


async def test_commands_published_by_the_processor_are_tracked_and_delivered(gateway: Gateway) -> None:
    now = int(time.time() * 1000)
    command = Command(id=f"quickstart/cold/fan-4/fan-4/{now}", fleet=FLEET, device="fan-4", name="cool", created_ms=now, ttl_ms=60_000,
                      source="pipeline/p/cold")  # fmt: skip
    await gateway.nc.jetstream().publish(
        subjects.command_subject(FLEET, "fan-4"), msgspec.json.encode(command), headers={"Nats-Msg-Id": command.id}
    )
    async with aiohttp.ClientSession() as session:
        assert (await wait_for_state(session, gateway, command.id, "queued"))["source"] == "pipeline/p/cold"
        device = HttpCommands(session, gateway.url, FLEET, "fan-4", gateway.token("fan-4"))
        assert [c["id"] for c in await device.poll(wait=2)] == [command.id]
        assert (await device.report(command.id, "succeeded"))["state"] == "succeeded"
        assert (await show(session, gateway, command.id))["state"] == "succeeded"


async def test_a_device_cannot_receive_or_answer_for_another_device(gateway: Gateway) -> None:
    async with aiohttp.ClientSession() as session:
        sent = await send(session, gateway, "pump-1", "stop")
        thief = HttpCommands(session, gateway.url, FLEET, "pump-1", gateway.token("pump-2"))
        for attempt in (thief.poll(wait=0), thief.report(sent["id"], "failed")):
            try:
                await attempt
                raise AssertionError("another device's token was accepted")
            except CommandChannelError as exc:
                assert exc.status == 401
        other = HttpCommands(session, gateway.url, FLEET, "pump-2", gateway.token("pump-2"))
        try:
            await other.report(sent["id"], "failed")
            raise AssertionError("a device answered another device's command")
        except CommandChannelError as exc:
            assert exc.status == 404
        async with session.post(
            f"{gateway.url}/v1/fleets/{FLEET}/devices/pump-1/commands",
            json={"name": "stop"},
            headers={"Authorization": f"Bearer {gateway.token('pump-1')}"},
        ) as response:
            assert response.status == 401  # devices do not send commands
        assert (await show(session, gateway, sent["id"]))["state"] == "queued"
        telemetry = {"readings": [{"seq": 1, "ts": int(time.time() * 1000), "metrics": {"t": 1.0}}]}
        async with session.post(
            f"{gateway.url}/v1/fleets/{FLEET}/devices/pump-1/telemetry",
            json=telemetry,
            headers={"Authorization": f"Bearer {gateway.token('pump-2')}"},
        ) as response:
            assert response.status == 401  # nor publish as another device
        assert await gateway.stored_readings("pump-1") == []


def nested(depth: int) -> list[object]:
    value: list[object] = [1]
    for _ in range(depth):
        value = [value]
    return value


async def test_bad_command_requests_say_what_is_wrong(gateway: Gateway) -> None:
    async with aiohttp.ClientSession() as session:
        url = f"{gateway.url}/v1/fleets/{FLEET}/devices/pump-1/commands"
        for body, reason in [
            ({"name": "no spaces"}, "invalid_command"),
            ({"name": "ok", "ttlSeconds": 0}, "invalid_command"),
            ({"name": "ok", "ttlSeconds": 1e308}, "invalid_command"),
            ({"name": "ok", "params": {"a": nested(40)}}, "invalid_command"),
            ({"name": "ok", "params": {"a": "x" * 70_000}}, "invalid_command"),
            ({"name": "ok", "colour": 1}, "invalid_request"),
        ]:
            async with session.post(url, json=body, headers=gateway.app_headers) as response:
                assert response.status == 400
                assert (await response.json())["error"] == reason
