"""Golden tests of alert rules: for, clear with hysteresis, clearFor, flapping, out-of-order readings."""

from fleetflow.processor.engine import Engine
from tests.unit.processor.builders import NOW, T0, batch, engine


def rule(**spec: object) -> list[dict]:
    return [{"name": "too-hot", "alert": {"condition": "metrics.t > 8.0", "severity": "critical", **spec}}]


def feed(e: Engine, *points: tuple[int, float], device: str = "d1") -> list[tuple[str, int]]:
    """Readings (seconds after T0, temperature), one per batch; the transitions they caused."""
    events = []
    for seq, (second, t) in enumerate(points, start=1):
        for event in e.process(batch(device, (seq, second * 1000, {"t": t})), NOW).alerts:
            events.append((event.state, (event.ts_ms - T0) // 1000))
    return events


def test_fires_after_holding_for_and_resolves_when_the_condition_drops() -> None:
    e = engine(rule(**{"for": "30s"}))
    assert feed(e, (0, 5.0), (10, 9.0), (20, 9.5), (39, 9.1), (40, 9.2), (50, 9.9), (60, 7.0)) == [
        ("firing", 40),
        ("resolved", 60),
    ]


def test_event_carries_rule_severity_values_and_message() -> None:
    e = engine(rule(message="cargo above 8 °C"))
    [event] = e.process(batch("d1", (1, 0, {"t": 9.0, "door": 1.0})), NOW).alerts
    assert (event.fleet, event.pipeline, event.rule, event.device) == ("cold", "chain", "too-hot", "d1")
    assert (event.state, event.severity, event.ts_ms, event.message) == ("firing", "critical", T0, "cargo above 8 °C")
    assert event.values == {"t": 9.0, "door": 1.0}


def test_flapping_shorter_than_for_never_fires() -> None:
    e = engine(rule(**{"for": "30s"}))
    assert feed(e, (0, 9.0), (10, 7.0), (20, 9.0), (40, 7.9), (45, 9.0), (70, 8.0), (80, 9.0)) == []


def test_hysteresis_keeps_firing_between_thresholds() -> None:
    e = engine(rule(clear="metrics.t < 6.0"))
    assert feed(e, (0, 9.0), (10, 7.0), (20, 9.0), (30, 6.5), (40, 5.9), (50, 7.0), (60, 8.5)) == [
        ("firing", 0),
        ("resolved", 40),
        ("firing", 60),
    ]


def test_clear_for_needs_the_clear_condition_to_hold() -> None:
    e = engine(rule(clearFor="20s"))
    assert feed(e, (0, 9.0), (10, 5.0), (20, 9.0), (30, 5.0), (45, 5.0), (50, 5.0)) == [
        ("firing", 0),
        ("resolved", 50),
    ]


def test_flapping_around_one_threshold_without_for_fires_every_time() -> None:
    e = engine(rule())
    assert feed(e, (0, 9.0), (1, 7.0), (2, 9.0), (3, 7.0)) == [
        ("firing", 0),
        ("resolved", 1),
        ("firing", 2),
        ("resolved", 3),
    ]


def test_older_readings_do_not_move_the_state_and_devices_are_independent() -> None:
    e = engine(rule())
    assert feed(e, (10, 9.0), (5, 1.0)) == [("firing", 10)]
    assert feed(e, (5, 9.0), device="d2") == [("firing", 5)]


def test_evaluation_error_is_counted_and_the_state_is_unchanged() -> None:
    e = engine(rule())
    out = e.process(batch("d1", (1, 0, {"humidity": 50.0})), NOW)
    assert out.alerts == [] and out.errors[("too-hot", "missing_field")] == 1
    assert [r.seq for r in out.readings[0].readings] == [1]
