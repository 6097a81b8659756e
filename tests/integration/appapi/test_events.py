"""Live updates over Server-Sent Events against a real NATS: alerts as the processor publishes them, command state
changes, readings as the gateway publishes them, resumption with Last-Event-ID, device filters, slow clients,
the connection bound, shutdown, and bad input."""

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from nats.aio.client import Client

from fleetflow.runtime import codec, jetstream, subjects
from fleetflow.runtime.codec import AlertEvent, Reading, ReadingBatch
from tests.integration.appapi.conftest import FLEET, PIPELINE, RunningApi, running_api
from tests.support.natsserver import NatsServer

BASE = f"/v1/fleets/{FLEET}"


@dataclass
class Event:
    id: str | None
    event: str | None
    data: Any


@dataclass
class EventStream:
    """An open SSE response: `next()` parses the next event (or id-only block) as a browser would."""

    response: aiohttp.ClientResponse
    last_id: str | None = None
    seen: list[Event] = field(default_factory=list)

    async def next_block(self, timeout: float = 5) -> Event:
        fields: dict[str, str] = {}
        while True:
            line = (await asyncio.wait_for(self.response.content.readline(), timeout)).decode()
            assert line, "the stream ended"
            line = line.rstrip("\n")
            if not line:
                if fields:
                    break
                continue
            if line.startswith(":"):
                continue
            name, _, value = line.partition(": ")
            fields[name] = value
        if "id" in fields:
            self.last_id = fields["id"]
        return Event(fields.get("id"), fields.get("event"), json.loads(fields["data"]) if "data" in fields else None)

    async def next(self, timeout: float = 5) -> Event:
        """The next event with data (id-only blocks and keep-alives pass)."""
        deadline = time.monotonic() + timeout
        while True:
            block = await self.next_block(max(deadline - time.monotonic(), 0.01))
            if block.event is not None:
                self.seen.append(block)
                return block


@asynccontextmanager
async def events(api: RunningApi, path: str = f"{BASE}/events", last_id: str | None = None,
                 key: str = "read", **query: str) -> AsyncIterator[EventStream]:  # fmt: skip
    headers = {"Authorization": f"Bearer {api.keys[key]}"}
    if last_id is not None:
        headers["Last-Event-ID"] = last_id
    timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
    async with aiohttp.ClientSession(timeout=timeout) as session, session.get(api.url + path, params=query,
                                                                              headers=headers) as response:  # fmt: skip
        assert response.status == 200, await response.text()
        assert response.content_type == "text/event-stream"
        stream = EventStream(response)
        await stream.next_block()  # the opening id: the stream follows NATS from here
        yield stream


@asynccontextmanager
async def nats_client(nats_server: NatsServer) -> AsyncIterator[Client]:
    nc = await jetstream.connect(nats_server.url, "test-publisher")
    try:
        yield nc
    finally:
        await nc.close()


async def publish_alert(
    nc: Client, device: str, ts: int, state: str = "firing", message: str = "too hot"
) -> AlertEvent:
    """As the processor publishes an alert transition to the fleet's alert stream."""
    event = AlertEvent(fleet=FLEET, pipeline=PIPELINE, rule="hot", device=device, state=state, severity="warning",
                       ts_ms=ts, values={"temp": 31.0}, message=message)  # fmt: skip
    await nc.jetstream().publish(subjects.alert_subject(FLEET, device), codec.encode(event))
    return event


async def test_alerts_and_command_changes_arrive_live(api: RunningApi, nats_server: NatsServer) -> None:
    async with events(api, kinds="alerts,commands") as stream, nats_client(nats_server) as nc:
        await publish_alert(nc, "d-003", 1000)
        alert = await stream.next()
        assert (alert.event, alert.data["device"], alert.data["state"], alert.data["tsMs"]) == ("alert", "d-003",
                                                                                                 "firing", 1000)  # fmt: skip
        status, sent = await api.post(f"{BASE}/devices/d-003/commands", {"name": "cool"})
        assert status == 202
        command = await stream.next()
        assert (command.event, command.data["id"], command.data["state"]) == ("command", sent["id"], "queued")
        assert command.data["source"].startswith("api-key/")
        assert command.id != alert.id


async def test_a_client_that_reconnects_with_last_event_id_misses_nothing_and_sees_nothing_twice(
    api: RunningApi, nats_server: NatsServer
) -> None:
    async with nats_client(nats_server) as nc:
        async with events(api, kinds="alerts") as stream:
            await publish_alert(nc, "d-001", 1)
            first = await stream.next()
            assert first.data["tsMs"] == 1
            resume_at = stream.last_id
        for ts in (2, 3, 4):  # while the client is away
            await publish_alert(nc, "d-001", ts)
        async with events(api, last_id=resume_at, kinds="alerts") as stream:
            got = [(await stream.next()).data["tsMs"] for _ in range(3)]
            assert got == [2, 3, 4]
            await publish_alert(nc, "d-001", 5)
            assert (await stream.next()).data["tsMs"] == 5

        # A client that saw no event yet resumes from the id the stream opened with.
        async with events(api, kinds="alerts") as stream:
            opened_at = stream.last_id
        await publish_alert(nc, "d-001", 6)
        async with events(api, last_id=opened_at, kinds="alerts") as stream:
            assert (await stream.next()).data["tsMs"] == 6


async def test_a_device_stream_holds_only_that_devices_events_readings_included(
    api: RunningApi, nats_server: NatsServer
) -> None:
    async with events(api, f"{BASE}/devices/d-002/events", kinds="alerts,readings") as stream, \
            nats_client(nats_server) as nc:  # fmt: skip
        await publish_alert(nc, "d-001", 10)
        batch = ReadingBatch(fleet=FLEET, device="d-002", readings=[Reading(seq=7, ts=70, metrics={"temp": 3.5})],
                             received_ms=71)  # fmt: skip
        await nc.jetstream().publish(subjects.telemetry_subject(FLEET, "d-002"), codec.encode(batch))
        await publish_alert(nc, "d-002", 11)
        # Readings and alerts come from two streams, so their relative order is not defined.
        got = {event.event: event for event in (await stream.next(), await stream.next())}
        readings, alert = got["readings"], got["alert"]
        assert (readings.event, readings.data) == ("readings", {"device": "d-002", "readings": [
            {"seq": 7, "ts": 70, "metrics": {"temp": 3.5}}]})  # fmt: skip
        assert (alert.event, alert.data["device"], alert.data["tsMs"]) == ("alert", "d-002", 11)


async def test_a_client_too_slow_for_its_events_is_told_to_resume_and_loses_nothing(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    count, padding = 2500, "x" * 8000  # 20 MB of events: more than the socket buffers hold for a client that waits
    async with (
        running_api(tmp_path, nats_server, event_queue=4, event_patience_seconds=0.5) as api,
        nats_client(nats_server) as nc,
    ):
        async with events(api, kinds="alerts") as stream:
            for ts in range(1, count + 1):
                await publish_alert(nc, "d-001", ts, message=padding)
            received: list[int] = []
            await asyncio.sleep(1.5)  # the client is stuck: it reads nothing for three times event_patience_seconds
            while True:
                event = await stream.next()
                if event.event == "overflow":
                    break
                received.append(event.data["tsMs"])
            assert len(received) < count and "Last-Event-ID" in event.data["detail"]
            resume_at = stream.last_id
        async with events(api, last_id=resume_at, kinds="alerts") as stream:
            while len(received) < count:
                event = await stream.next()
                assert event.event == "alert", event
                received.append(event.data["tsMs"])
        assert received == list(range(1, count + 1))


async def test_connections_are_bounded_and_all_end_when_the_api_stops(tmp_path: Path, nats_server: NatsServer) -> None:
    api_running = running_api(tmp_path, nats_server, max_event_streams=2)
    async with api_running as api, events(api) as one, events(api) as two:
        headers = {"Authorization": f"Bearer {api.keys['read']}"}
        async with aiohttp.ClientSession() as session, session.get(f"{api.url}{BASE}/events", headers=headers) as third:
            assert third.status == 503 and (await third.json())["error"] == "too_many_streams"
        began = time.monotonic()
        api.stop.set()
        for stream in (one, two):
            rest = await asyncio.wait_for(stream.response.content.read(), 5)
            assert b"event:" not in rest  # ended, not with an event
        await asyncio.wait_for(api.task, 5)
        assert time.monotonic() - began < 5


async def test_bad_kinds_device_and_last_event_id_are_400_naming_them(api: RunningApi) -> None:
    status, body = await api.get(f"{BASE}/events", kinds="alerts,news")
    assert (status, body["error"]) == (400, "invalid_parameter") and body["detail"].startswith("kinds='alerts,news'")
    status, body = await api.get(f"{BASE}/events", device="no such device")
    assert status == 400 and body["detail"].startswith("device='no such device'")
    status, body = await api.get(f"{BASE}/events", key="Bearer nope")
    assert (status, body["error"]) == (401, "invalid_key")
    async with aiohttp.ClientSession() as session, session.get(
        f"{api.url}{BASE}/events", headers={"Authorization": f"Bearer {api.keys['read']}", "Last-Event-ID": "42"}
    ) as response:  # fmt: skip
        body = await response.json()
        assert response.status == 400 and body["detail"].startswith("Last-Event-ID='42'")
