"""Generated device readings for benchmarks, shaped like a real fleet's and cheap to produce.

Device ids follow the fleet's label rules (as `fleetflow simulate` picks them), so label groups, targets and
windows see what real devices of the fleet would give them. Metrics come from the simulator's cold-chain
sensor model (temp_c, humidity_pct, battery_v, battery_a); one box in ten has a failed cooling unit (above
8 °C: alerts and commands) and one reading in 200 is a disconnected probe (-127 °C: a filter drops it). Each
device cycles through a precomputed list of metric sets, so the load generator spends its CPU on sending."""

import random

import msgspec

from fleetflow.api import DeviceFleet
from fleetflow.device.simulator import SensorModel, simulated_device_ids
from fleetflow.runtime.codec import Reading, ReadingBatch

CYCLE = 1000  # metric sets per device before they repeat
READING_INTERVAL_MS = 100  # a 100-reading batch is 10 s: windows close and alerts fire within a short run
DISCONNECTED_PROBE_EVERY = 200
FAILING_EVERY = 10

_encoder = msgspec.json.Encoder()


class DeviceReadings:
    """One generated device: its id and the metric sets it cycles through."""

    def __init__(self, device: str, rng: random.Random, failing: bool, start_ms: int):
        model = SensorModel(rng, failing)
        if failing:
            model.failed_at_ms = start_ms
        self.device = device
        self.metrics: list[dict[str, float]] = []
        for i in range(CYCLE):
            metrics = model.metrics(start_ms + i * READING_INTERVAL_MS)
            if i % DISCONNECTED_PROBE_EVERY == DISCONNECTED_PROBE_EVERY - 1:
                metrics["temp_c"] = -127.0
            self.metrics.append(metrics)
        self._metrics_json = [_encoder.encode(m) for m in self.metrics]  # encoded once, not per body

    def readings(
        self, seq: int, ts_ms: int, count: int, interval_ms: int = READING_INTERVAL_MS
    ) -> list[tuple[int, int, dict[str, float]]]:
        """`count` readings from `seq` on, `interval_ms` apart, the last at `ts_ms`."""
        first = ts_ms - (count - 1) * interval_ms
        return [(seq + i, first + i * interval_ms, self.metrics[(seq + i) % CYCLE]) for i in range(count)]

    def body(self, seq: int, ts_ms: int, count: int, interval_ms: int = READING_INTERVAL_MS) -> bytes:
        """A telemetry request body, as a device sends it."""
        first, encoded = ts_ms - (count - 1) * interval_ms, self._metrics_json
        readings = [b'{"seq":%d,"ts":%d,"metrics":%b}' % (s, first + i * interval_ms, encoded[s % CYCLE])
                    for i, s in enumerate(range(seq, seq + count))]  # fmt: skip
        return b'{"readings":[' + b",".join(readings) + b"]}"

    def batch(self, fleet: str, seq: int, ts_ms: int, count: int) -> ReadingBatch:
        """The same readings as the gateway hands them to the processor."""
        readings = [Reading(s, ts, dict(metrics)) for s, ts, metrics in self.readings(seq, ts_ms, count)]
        return ReadingBatch(fleet=fleet, device=self.device, readings=readings, received_ms=ts_ms)


def generated_devices(fleet: DeviceFleet, count: int, start_ms: int, seed: int = 1) -> list[DeviceReadings]:
    rng = random.Random(seed)
    ids = simulated_device_ids(fleet, count)
    return [DeviceReadings(device, rng, i % FAILING_EVERY == 0, start_ms) for i, device in enumerate(ids)]


def device_rounds(
    devices: list[DeviceReadings], fleet: str, batch: int, rounds: int, start_ms: int
) -> list[list[ReadingBatch]]:
    """`rounds` rounds of one batch per device, as the processor receives them: device after device, each
    round `batch` readings later. Every 20th round a device re-sends its previous batch too (a retry with a
    lost answer), so dedupe has work."""
    out: list[list[ReadingBatch]] = []
    for r in range(rounds):
        ts_ms = start_ms + (r + 1) * batch * READING_INTERVAL_MS
        this_round = []
        for d, device in enumerate(devices):
            this_round.append(device.batch(fleet, 1 + r * batch, ts_ms, batch))
            if r and (r + d) % 20 == 0:
                this_round.append(device.batch(fleet, 1 + (r - 1) * batch, ts_ms - batch * READING_INTERVAL_MS, batch))
        out.append(this_round)
    return out
