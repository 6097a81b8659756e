"""The engine end to end on readings: filter, derive, dedupe, and restoring a snapshot mid-window."""

import random

from fleetflow.processor.engine import Engine, Outputs
from tests.unit.processor.builders import NOW, T0, batch, compiled, engine

SOLAR = [
    {"name": "once", "dedupe": {}},
    {"name": "sane", "filter": {"condition": "metrics.voltage > 0.0 && metrics.voltage < 60.0"}},
    {
        "name": "power",
        "derive": {
            "metrics": {"power_w": "metrics.voltage * metrics.current", "temp_f": "metrics.temp * 9.0 / 5.0 + 32.0"},
            "rename": {"temp": "temp_c"},
            "drop": ["current"],
        },
    },
    {"name": "health", "window": {"size": "10s", "hop": "5s", "metrics": ["voltage", "power_w"]}},
    {"name": "hot", "alert": {"condition": "metrics.temp_c > 45.0", "clear": "metrics.temp_c < 40.0", "for": "3s"}},
    {
        "name": "fan",
        "command": {"condition": "metrics.temp_c > 45.0", "command": "fan_on", "cooldown": "20s", "ttl": "5m"},
    },
]


def test_filter_derive_rename_drop_and_dedupe() -> None:
    e = engine(SOLAR)
    out = e.process(
        batch(
            "box-1",
            (1, 0, {"voltage": 12.5, "current": 2.0, "temp": 30.0}),
            (2, 1000, {"voltage": -1.0, "current": 2.0, "temp": 30.0}),
            (1, 0, {"voltage": 12.5, "current": 2.0, "temp": 30.0}),
            (3, 2000, {"voltage": 13.0, "temp": 30.0}),
        ),
        NOW,
    )
    [processed] = out.readings
    assert [(r.seq, r.metrics) for r in processed.readings] == [
        (1, {"voltage": 12.5, "power_w": 25.0, "temp_f": 86.0, "temp_c": 30.0}),
        (3, {"voltage": 13.0, "temp_f": 86.0, "temp_c": 30.0}),  # no current: no power_w, the rest is kept
    ]
    assert out.counts[("once", "duplicate")] == 1
    assert out.counts[("sane", "dropped")] == 1
    assert out.errors[("power", "missing_field")] == 1


def test_a_dyn_filter_that_does_not_give_a_boolean_drops_and_counts() -> None:
    e = engine([{"name": "f", "filter": {"condition": "dyn(metrics.t)"}}])
    out = e.process(batch("d", (1, 0, {"t": 1.0})), NOW)
    assert out.readings == [] and out.errors[("f", "not_boolean")] == 1


def run(e: Engine, batches: list, now: int) -> Outputs:
    total = Outputs()
    for b in batches:
        out = e.process(b, now)
        total.readings += out.readings
        total.aggregates += out.aggregates
        total.alerts += out.alerts
        total.commands += out.commands
    return total


def test_restoring_a_snapshot_mid_window_gives_the_uninterrupted_results() -> None:
    rng = random.Random(7)
    batches = []
    for second in range(0, 120, 2):
        for device in ("box-1", "box-2"):
            temp = 50.0 if 30 <= second < 70 else 30.0
            jitter = rng.randint(-1500, 0)  # mildly out of order within a window
            metrics = {"voltage": 12.0 + rng.random(), "current": rng.random(), "temp": temp}
            batches.append(batch(device, (second, second * 1000 + jitter, metrics)))
    now = T0 + 130_000
    whole = run(engine(SOLAR), batches, now)
    assert whole.aggregates and len(whole.alerts) == 4 and len(whole.commands) == 4

    first = engine(SOLAR)
    part1 = run(first, batches[:37], now)
    restored = Engine.restore(compiled(SOLAR), first.snapshot(), now)
    part2 = run(restored, batches[37:], now)
    assert part1.aggregates + part2.aggregates == whole.aggregates
    assert part1.alerts + part2.alerts == whole.alerts
    assert part1.commands + part2.commands == whole.commands
    assert part1.readings + part2.readings == whole.readings
