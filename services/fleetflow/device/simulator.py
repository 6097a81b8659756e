"""Simulated devices: realistic metrics, batches, and the retries real devices make after a timeout."""

import asyncio
import contextlib
import math
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from fleetflow.api import DeviceFleet
from fleetflow.device.http import HttpDevice, SendResult

_LITERAL_PREFIX = re.compile(r"\^([A-Za-z0-9_-]+)")
# One simulated box in this many has a failed cooling unit, so that even a one-minute run shows the
# over-temperature alert and the closed-loop command of examples/cold-chain.
FAILING_EVERY = 3


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


def simulated_device_ids(fleet: DeviceFleet, count: int) -> list[str]:
    """Ids a real device of `fleet` could have, so simulated devices get the labels real ones would: the
    literal prefixes of the fleet's label rules (`^box-a` and `^box-b`, not the broader `^box-`), taken in
    turn and numbered (box-a-0000, box-b-0000, box-a-0001, ...); sim-0000, ... when no rule has one or an id
    would not match the fleet's idPattern."""
    prefixes = [m.group(1) for rule in fleet.spec.devices.labels if (m := _LITERAL_PREFIX.fullmatch(rule.match))]
    specific = [p for p in dict.fromkeys(prefixes) if not any(o != p and o.startswith(p) for o in prefixes)]
    if specific:
        ids = [_numbered(specific[i % len(specific)], i // len(specific)) for i in range(count)]
        if all(re.search(fleet.spec.devices.id_pattern, device) for device in ids):
            return ids
    return [f"sim-{i:04d}" for i in range(count)]


def _numbered(prefix: str, number: int) -> str:
    return f"{prefix}{'' if prefix[-1] in '-_' else '-'}{number:04d}"


class SensorModel:
    """A cold-chain sensor: temperature drifting around a set point, humidity, a slowly draining battery.

    A box whose cooling failed (`failing`) is at 8.5 °C when the simulation starts and warms towards the
    ambient 20 °C (about 2.3 °C in the first minute), so it stays above 8 °C."""

    def __init__(self, rng: random.Random, failing: bool = False):
        self.rng = rng
        self.setpoint = rng.uniform(2.0, 8.0)
        self.battery = rng.uniform(3.6, 4.2)
        self.failed_at_ms: int | None = None if not failing else int(time.time() * 1000)

    def temperature(self, ts_ms: int) -> float:
        if self.failed_at_ms is not None:
            warmed = 20.0 - 11.5 * math.exp(-max(0, ts_ms - self.failed_at_ms) / 300_000)
            return round(warmed + self.rng.gauss(0, 0.1), 3)
        wave = math.sin(ts_ms / 60000.0 * 2 * math.pi)
        return round(self.setpoint + 1.5 * wave + self.rng.gauss(0, 0.2), 3)

    def metrics(self, ts_ms: int) -> dict[str, float]:
        """Named as examples/cold-chain expects them: temp_c, humidity_pct, battery_v, battery_a."""
        wave = math.sin(ts_ms / 60000.0 * 2 * math.pi)
        self.battery = max(3.0, self.battery - self.rng.uniform(0, 0.00001))
        return {
            "temp_c": self.temperature(ts_ms),
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
            SimulatedDevice(
                HttpDevice(session, url, fleet, device, token),
                SensorModel(rng, failing=index % FAILING_EVERY == 0),
                initial_seq(),
            )
            for index, (device, token) in enumerate(tokens.items())
        ]
        await asyncio.gather(
            *(
                run_device(d, report, stop, batch_size, interval, retry_fraction, random.Random(rng.random()))
                for d in devices
            )
        )
    return report
