"""Generated device load over HTTP: closed-loop devices (rate `max`) or paced to a target rate."""

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

import aiohttp
import msgspec

from fleetflow.bench.procstats import percentile


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


def batch_body(seq: int, size: int, now_ms: int) -> bytes:
    """One request body; readings carry the send time as `ts`, so the store can tell end-to-end latency."""
    readings = [
        {"seq": seq + i, "ts": now_ms, "metrics": {"temperature": 20.0 + (i % 7), "voltage": 3.7}} for i in range(size)
    ]
    return _encoder.encode({"readings": readings})


async def device_loop(
    session: aiohttp.ClientSession,
    url: str,
    token: str,
    batch: int,
    interval: float,
    result: LoadResult,
    warmup_end: float,
    stop: asyncio.Event,
) -> None:
    """Send batches until `stop`; a failed batch is re-sent until it is acknowledged (at-least-once)."""
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    seq = 1
    next_send = time.monotonic()
    while not stop.is_set():
        body = batch_body(seq, batch, int(time.time() * 1000))
        await _send_until_acknowledged(session, url, headers, body, batch, result, warmup_end)
        seq += batch
        if interval > 0:
            next_send += interval
            delay = next_send - time.monotonic()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)


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
            result.acknowledged += batch
            if b'"duplicate":true' in answer:
                result.duplicate_answers += 1
            if started >= warmup_end:
                result.measured_acknowledged += batch
                result.latencies.append(time.monotonic() - started)
            return
        if status not in (0, 429, 503):
            result.rejected += batch
            return
        await asyncio.sleep(min(1.0, 0.05 * 2**attempt))
    result.rejected += batch


async def run_load(
    gateway: str,
    fleet: str,
    tokens: dict[str, str],
    batch: int,
    rate: float | None,
    warmup: float,
    duration: float,
) -> LoadResult:
    """Drive one coroutine per device for warmup + duration seconds."""
    result = LoadResult()
    stop = asyncio.Event()
    interval = len(tokens) * batch / rate if rate else 0.0
    start = time.monotonic()
    result.measure_start = start + warmup
    connector = aiohttp.TCPConnector(limit=len(tokens) + 10)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        tasks = [
            asyncio.create_task(
                device_loop(
                    session,
                    f"{gateway}/v1/fleets/{fleet}/devices/{device}/telemetry",
                    token,
                    batch,
                    interval,
                    result,
                    result.measure_start,
                    stop,
                )
            )
            for device, token in tokens.items()
        ]
        await asyncio.sleep(warmup + duration)
        result.measure_end = time.monotonic()
        stop.set()
        await asyncio.gather(*tasks)
    return result
