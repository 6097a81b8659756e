"""Generated device load over HTTP, gRPC, MQTT, WebSocket or CoAP: closed-loop devices (rate `max`) or paced to a
target rate."""

import asyncio
import collections
import contextlib
import functools
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import msgspec

from fleetflow.bench.procstats import percentile
from fleetflow.device.forwarding import Link, MqttLink, Outcome
from fleetflow.device.mqtt_client import MAX_IN_FLIGHT, MqttDevice
from fleetflow.device.protocols import make_link


@dataclass
class LoadResult:
    """What the devices saw. Readings and latencies count only after the warm-up."""

    acknowledged: int = 0  # every reading whose batch got a 202, warm-up included
    measured_acknowledged: int = 0
    rejected: int = 0
    duplicate_answers: int = 0
    latencies: list[float] = field(default_factory=list)
    measure_start: float = 0.0
    measure_end: float = 0.0

    def response_percentiles(self) -> dict[str, float]:
        ordered = sorted(self.latencies)
        return {name: percentile(ordered, q) * 1000 for name, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))}


_encoder = msgspec.json.Encoder()
InFlight = collections.deque[tuple[asyncio.Future[None], bytes]]  # PUBACK, body
# (device, first seq, readings, now in ms) -> a request body; the readings' `ts` is the send time
BodyMaker = Callable[[str, int, int, int], bytes]


def batch_body(seq: int, size: int, now_ms: int) -> bytes:
    """One request body; readings carry the send time as `ts`, so the store can tell end-to-end latency.

    Only `seq` and `ts` change from body to body, so they are put into a template in one formatting call:
    a third of the CPU of building and encoding the readings each time."""
    numbers: list[int] = [now_ms] * (2 * size)
    numbers[0::2] = range(seq, seq + size)
    return _body_template(size) % tuple(numbers)


@functools.cache
def _body_template(size: int) -> bytes:
    """The JSON of `size` readings, with `%d` where each one's seq and ts go."""
    readings = (
        b'{"seq":%d,"ts":%d,"metrics":'
        + _encoder.encode({"temperature": 20.0 + (i % 7), "voltage": 3.7}).replace(b"%", b"%%")
        + b"}"
        for i in range(size)
    )
    return b'{"readings":[' + b",".join(readings) + b"]}"


def plain_body(device: str, seq: int, size: int, now_ms: int) -> bytes:
    """The stepless bench's readings: the same two metrics for every device."""
    return batch_body(seq, size, now_ms)


async def device_loop(
    session: aiohttp.ClientSession,
    url: str,
    device: str,
    bodies: BodyMaker,
    token: str,
    batch: int,
    interval: float,
    result: LoadResult,
    warmup_end: float,
    stop: asyncio.Event,
) -> None:
    """An HTTP device: bodies encoded straight to bytes, so the load generator stays light on the CPU."""
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    seq = 1
    next_send = await _first_send(interval, stop)
    while not stop.is_set():
        body = bodies(device, seq, batch, int(time.time() * 1000))
        await _send_until_acknowledged(session, url, headers, body, batch, result, warmup_end)
        seq += batch
        next_send = await _pace(next_send, interval, stop)


async def _send_until_acknowledged(
    session: aiohttp.ClientSession,
    url: str,
    headers: dict[str, str],
    body: bytes,
    batch: int,
    result: LoadResult,
    warmup_end: float,
) -> None:
    for attempt in range(50):
        started = time.monotonic()
        try:
            async with session.post(url, data=body, headers=headers) as response:
                answer = await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError):
            status, answer = 0, b""
        if status == 202:
            _acknowledged(result, batch, b'"duplicate":true' in answer, started, warmup_end)
            return
        if status not in (0, 429, 503):
            result.rejected += batch
            return
        await asyncio.sleep(min(1.0, 0.05 * 2**attempt))
    result.rejected += batch


async def link_loop(
    link: Link,
    device: str,
    bodies: BodyMaker,
    batch: int,
    interval: float,
    result: LoadResult,
    warmup_end: float,
    stop: asyncio.Event,
) -> None:
    """The gRPC, WebSocket and CoAP devices: the protocol client of fleetflow.device, one batch at a time (a
    WebSocket session waits for each batch's answer; a CoAP device sends confirmable POSTs, one per batch)."""
    await link.reconnect()
    seq = 1
    next_send = await _first_send(interval, stop)
    try:
        while not stop.is_set():
            body = bodies(device, seq, batch, int(time.time() * 1000))
            await _deliver_until_acknowledged(link, msgspec.json.decode(body)["readings"], result, warmup_end)
            seq += batch
            next_send = await _pace(next_send, interval, stop)
    finally:
        await link.close()


async def _deliver_until_acknowledged(
    link: Link, readings: list[dict[str, Any]], result: LoadResult, warmup_end: float
) -> None:
    for attempt in range(50):
        started = time.monotonic()
        delivery = await link.deliver(readings)
        if delivery.outcome is Outcome.ACKNOWLEDGED:
            _acknowledged(result, len(readings), delivery.duplicate, started, warmup_end)
            return
        if delivery.outcome is Outcome.REFUSED:
            result.rejected += len(readings)
            return
        await asyncio.sleep(min(1.0, 0.05 * 2**attempt))
        with contextlib.suppress(Exception):
            await link.reconnect()
    result.rejected += len(readings)


async def mqtt_loop(
    device: MqttDevice,
    device_id: str,
    bodies: BodyMaker,
    batch: int,
    interval: float,
    result: LoadResult,
    warmup_end: float,
    stop: asyncio.Event,
) -> None:
    """An MQTT device keeps up to its in-flight limit of QoS 1 messages unacknowledged, as a paho device does,
    and settles them in the order sent. A message that failed is sent again on its own until acknowledged."""
    link = MqttLink(device)
    await link.reconnect()
    topic = f"{device.topic}/telemetry"
    in_flight: InFlight = collections.deque()
    seq = 1
    next_send = await _first_send(interval, stop)
    try:
        while not stop.is_set():
            body = bodies(device_id, seq, batch, int(time.time() * 1000))
            acked = device.publish(topic, body)
            # Counted when the PUBACK arrives, not when the loop gets round to the oldest message.
            acked.add_done_callback(functools.partial(_on_puback, result, batch, time.monotonic(), warmup_end))
            in_flight.append((acked, body))
            seq += batch
            if len(in_flight) >= MAX_IN_FLIGHT:
                await _settle_oldest(link, in_flight, result, warmup_end)
            next_send = await _pace(next_send, interval, stop)
        while in_flight:
            await _settle_oldest(link, in_flight, result, warmup_end)
    finally:
        await link.close()


def _on_puback(result: LoadResult, batch: int, started: float, warmup_end: float, acked: asyncio.Future[None]) -> None:
    if not acked.cancelled() and acked.exception() is None:
        _acknowledged(result, batch, False, started, warmup_end)


async def _settle_oldest(link: MqttLink, in_flight: InFlight, result: LoadResult, warmup_end: float) -> None:
    """Wait for the oldest message's PUBACK; a message the connection lost is sent again until acknowledged."""
    acked, body = in_flight.popleft()
    try:
        await acked  # no timeout of its own: paho's keep-alive ends a silent connection, which fails it
    except ConnectionError:
        link.connected = False
        await _deliver_until_acknowledged(link, json.loads(body)["readings"], result, warmup_end)


def _acknowledged(result: LoadResult, count: int, duplicate: bool, started: float, warmup_end: float) -> None:
    result.acknowledged += count
    result.duplicate_answers += int(duplicate)
    if started >= warmup_end:
        result.measured_acknowledged += count
        result.latencies.append(time.monotonic() - started)


async def _first_send(interval: float, stop: asyncio.Event) -> float:
    """Paced devices start at random points of their interval, as a real fleet does, not in one burst."""
    if interval > 0:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), random.uniform(0, interval))
    return time.monotonic()


async def _pace(next_send: float, interval: float, stop: asyncio.Event) -> float:
    if interval <= 0:
        return next_send
    next_send += interval
    delay = next_send - time.monotonic()
    if delay > 0:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
    return next_send


async def run_load(
    targets: dict[str, str],
    protocol: str,
    fleet: str,
    tokens: dict[str, str],
    batch: int,
    rate: float | None,
    warmup: float,
    duration: float,
    bodies: BodyMaker = plain_body,
) -> LoadResult:
    """Drive one coroutine per device for warmup + duration seconds. `targets` are the fleet's entries in
    endpoints.json (http, grpc, mqtt, ws, coap)."""
    result = LoadResult()
    stop = asyncio.Event()
    interval = len(tokens) * batch / rate if rate else 0.0
    start = time.monotonic()
    result.measure_start = start + warmup
    connector = aiohttp.TCPConnector(limit=len(tokens) + 10)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        if protocol == "http":
            loops = [
                device_loop(session, f"{targets['http']}/v1/fleets/{fleet}/devices/{device}/telemetry", device,
                            bodies, token, batch, interval, result, result.measure_start, stop)
                for device, token in tokens.items()
            ]  # fmt: skip
        elif protocol == "mqtt":
            host, _, port = targets["mqtt"].removeprefix("mqtt://").rpartition(":")
            loops = [
                mqtt_loop(MqttDevice(host, int(port), fleet, device, token), device, bodies, batch, interval, result,
                          result.measure_start, stop)
                for device, token in tokens.items()
            ]  # fmt: skip
        else:
            loops = [
                link_loop(make_link(protocol, targets[protocol], fleet, device, token, session), device, bodies, batch,
                          interval, result, result.measure_start, stop)
                for device, token in tokens.items()
            ]  # fmt: skip
        tasks = [asyncio.create_task(loop) for loop in loops]
        await asyncio.sleep(warmup + duration)
        result.measure_end = time.monotonic()
        stop.set()
        await asyncio.gather(*tasks)
    return result
