"""Golden tests of closed-loop commands: cooldown, TTL, targets, parameters and deterministic ids."""

from fleetflow.processor.engine import Engine
from fleetflow.runtime.codec import Command
from tests.unit.processor.builders import T0, batch, engine

LABELS = [{"match": "^box-", "labels": {"site": "depot1"}}]


def rule(**spec: object) -> list[dict]:
    return [
        {
            "name": "cool",
            "command": {
                "condition": "metrics.t > 8.0",
                "command": "set_cooling",
                "target": "'cooler-' + labels.site",
                "params": {"mode": "max"},
                "computedParams": {"excess": "metrics.t - 8.0"},
                "cooldown": "60s",
                "ttl": "30s",
                **spec,
            },
        }
    ]


def feed(e: Engine, *points: tuple[int, float], now_s: int | None = None) -> list[Command]:
    sent = []
    for seq, (second, t) in enumerate(points, start=1):
        now = T0 + (now_s if now_s is not None else second) * 1000
        sent += e.process(batch("box-7", (seq, second * 1000, {"t": t})), now).commands
    return sent


def test_condition_sends_one_command_per_cooldown() -> None:
    e = engine(rule(), LABELS)
    sent = feed(e, (0, 9.0), (10, 9.5), (59, 10.0), (60, 9.0), (100, 7.0), (130, 9.0))
    assert [(c.device, (c.created_ms - T0) // 1000) for c in sent] == [
        ("cooler-depot1", 0),
        ("cooler-depot1", 60),
        ("cooler-depot1", 130),
    ]
    first = sent[0]
    assert first.id == f"chain/cool/box-7/cooler-depot1/{T0}"
    assert (first.name, first.ttl_ms, first.source, first.fleet) == (
        "set_cooling",
        30000,
        "pipeline/chain/cool",
        "cold",
    )
    assert first.params == {"mode": "max", "excess": 1.0}


def test_cooldown_is_per_triggering_device_and_target() -> None:
    e = engine(rule(), LABELS)
    a = e.process(batch("box-1", (1, 0, {"t": 9.0})), T0).commands
    b = e.process(batch("box-2", (1, 1000, {"t": 9.0})), T0 + 1000).commands
    again = e.process(batch("box-1", (2, 2000, {"t": 9.0})), T0 + 2000).commands
    assert [(c.device, c.id) for c in a + b + again] == [
        ("cooler-depot1", f"chain/cool/box-1/cooler-depot1/{T0}"),
        ("cooler-depot1", f"chain/cool/box-2/cooler-depot1/{T0 + 1000}"),
    ]


def test_readings_older_than_the_ttl_trigger_nothing() -> None:
    e = engine(rule(), LABELS)
    out = e.process(batch("box-7", (1, 0, {"t": 9.0})), T0 + 30_001)
    assert out.commands == [] and out.counts[("cool", "command_expired")] == 1
    # an expired trigger does not start a cooldown: a fresh reading still acts
    assert len(feed(e, (40, 9.0))) == 1


def test_replaying_the_same_readings_gives_the_same_command_ids() -> None:
    first = feed(engine(rule(), LABELS), (0, 9.0), (70, 9.0))
    again = feed(engine(rule(), LABELS), (0, 9.0), (70, 9.0))
    ids = [f"chain/cool/box-7/cooler-depot1/{T0 + s}" for s in (0, 70000)]
    assert [c.id for c in first] == [c.id for c in again] == ids


def test_a_target_that_is_not_a_device_id_is_counted() -> None:
    e = engine(rule(target="'no such/device'"), LABELS)
    out = e.process(batch("box-7", (1, 0, {"t": 9.0})), T0)
    assert out.commands == [] and out.errors[("cool", "bad_target")] == 1


def test_fixed_params_may_be_nested_json() -> None:
    schedule = {"slots": [{"from": "06:00", "setpoint": 4}], "limits": {"max": 9.5}}
    e = engine(rule(params={"schedule": schedule}), LABELS)
    (sent,) = feed(e, (0, 9.0))
    assert sent.params == {"schedule": schedule, "excess": 1.0}
