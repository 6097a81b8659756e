"""Simulated devices: realistic metrics, batches, and the retries real devices make after a timeout."""

import asyncio
import contextlib
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from fleetflow.device.http import HttpDevice, SendResult


@dataclass
class SimulationReport:
    """Counts from the devices' side. `acknowledged` counts each reading once, however often it was sent."""

    sent: int = 0
    acknowledged: int = 0
    retried: int = 0
    duplicates: int = 0
    rejected: int = 0
    rejections: dict[str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)

    def merge_rejection(self, result: SendResult, readings: int) -> None:
        self.rejected += readings
        reason = str(result.body.get("error", result.status))
        self.rejections[reason] = self.rejections.get(reason, 0) + 1


class SensorModel:
    """A cold-chain sensor: temperature drifting around a set point, humidity, a slowly draining battery."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.setpoint = rng.uniform(2.0, 8.0)
        self.battery = rng.uniform(3.6, 4.2)

    def metrics(self, ts_ms: int) -> dict[str, float]:
        """Named as examples/cold-chain expects them: temp_c, humidity_pct, battery_v, battery_a."""
        wave = math.sin(ts_ms / 60000.0 * 2 * math.pi)
        self.battery = max(3.0, self.battery - self.rng.uniform(0, 0.00001))
        return {
            "temp_c": round(self.setpoint + 1.5 * wave + self.rng.gauss(0, 0.2), 3),
            "humidity_pct": round(min(100.0, max(0.0, 60 + 10 * wave + self.rng.gauss(0, 2))), 2),
            "battery_v": round(self.battery, 4),
            "battery_a": round(abs(self.rng.gauss(0.4, 0.05)), 4),
        }


@dataclass
class SimulatedDevice:
    device: HttpDevice
    model: SensorModel
    next_seq: int

    def batch(self, size: int) -> list[dict[str, Any]]:
        now = int(time.time() * 1000)
        readings = []
        for i in range(size):
            ts = now - (size - 1 - i) * 10
            readings.append({"seq": self.next_seq, "ts": ts, "metrics": self.model.metrics(ts)})
            self.next_seq += 1
        return readings


def initial_seq() -> int:
    """Sequence numbers start at the wall clock in microseconds, so a restarted device keeps increasing."""
    return int(time.time() * 1_000_000)


async def run_device(
    sim: SimulatedDevice,
    report: SimulationReport,
    stop: asyncio.Event,
    batch_size: int,
    interval: float,
    retry_fraction: float,
    rng: random.Random,
) -> None:
    """Send batches every `interval` seconds until `stop`; every batch is delivered or counted as rejected."""
    while not stop.is_set():
        started = time.monotonic()
        readings = sim.batch(batch_size)
        await deliver(sim.device, readings, report, stop)
        if rng.random() < retry_fraction:  # as a device does when its ack was lost to a timeout
            report.retried += len(readings)
            result = await sim.device.send(readings)
            if result.acknowledged and result.body.get("duplicate"):
                report.duplicates += len(readings)
        delay = interval - (time.monotonic() - started)
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)


async def deliver(
    device: HttpDevice, readings: list[dict[str, Any]], report: SimulationReport, stop: asyncio.Event
) -> None:
    """Send until acknowledged or refused; retryable failures back off and try again, even after `stop`,
    for at most 30 s, so that readings already generated are not abandoned."""
    backoff, give_up = 0.1, time.monotonic() + 30
    while True:
        started = time.perf_counter()
        result = await device.send(readings)
        report.sent += len(readings)
        if result.acknowledged:
            report.acknowledged += len(readings)
            report.latencies.append(time.perf_counter() - started)
            return
        if not result.retryable or time.monotonic() > give_up:
            report.merge_rejection(result, len(readings))
            return
        await asyncio.sleep(backoff)
        backoff = min(2.0, backoff * 2)


async def simulate(
    url: str,
    fleet: str,
    tokens: dict[str, str],
    stop: asyncio.Event,
    batch_size: int = 10,
    interval: float = 1.0,
    retry_fraction: float = 0.05,
    seed: int | None = None,
    on_start: Callable[[SimulationReport], None] | None = None,
) -> SimulationReport:
    """Run one simulated device per entry of `tokens` (device id → token) until `stop` is set."""
    report = SimulationReport()
    if on_start:
        on_start(report)
    rng = random.Random(seed)
    connector = aiohttp.TCPConnector(limit=max(100, len(tokens)))
    async with aiohttp.ClientSession(connector=connector) as session:
        devices = [
            SimulatedDevice(HttpDevice(session, url, fleet, device, token), SensorModel(rng), initial_seq())
            for device, token in tokens.items()
        ]
        await asyncio.gather(
            *(
                run_device(d, report, stop, batch_size, interval, retry_fraction, random.Random(rng.random()))
                for d in devices
            )
        )
    return report
