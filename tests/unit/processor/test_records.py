"""Where each output goes and under which id."""

from fleetflow.processor import records
from tests.unit.processor.builders import NOW, batch, engine

STEPS = [
    {"name": "w", "window": {"size": "10s", "groupBy": ["site"]}},
    {"name": "hot", "alert": {"condition": "metrics.t > 8.0"}},
    {"name": "fan", "command": {"condition": "metrics.t > 8.0", "command": "fan_on", "ttl": "30d"}},
]
LABELS = [{"match": "^box", "labels": {"site": "north.depot 1"}}]


def test_subjects_ids_and_record_headers() -> None:
    e = engine(STEPS, LABELS)
    e.process(batch("box-1", (1, 0, {"t": 1.0})), NOW)
    out = e.process(batch("box-1", (2, 10000, {"t": 9.0})), NOW)
    found = {(m.record, m.subject, m.msg_id) for m in records.messages("cold", "chain", "cold/box-1/2-2", out)}
    assert found == {
        ("readings", "ff.cold.pl.chain.readings.box-1", "chain/readings/cold/box-1/2-2"),
        ("aggregates", "ff.cold.pl.chain.aggregates.site=north_depot_1",
         f"chain/aggregates/w/site=north.depot 1/t/{out.aggregates[0].window_start_ms}"),
        ("alerts", "ff.cold.pl.chain.alerts.box-1", f"chain/alerts/hot/box-1/{out.alerts[0].ts_ms}/firing"),
        ("alert-events", "ff.cold.alert.box-1", f"chain/alerts/hot/box-1/{out.alerts[0].ts_ms}/firing"),
        ("commands", "ff.cold.cmd.box-1", out.commands[0].id),
    }  # fmt: skip


def test_late_readings_are_their_own_record() -> None:
    e = engine([{"name": "w", "window": {"size": "10s"}}])
    e.process(batch("box-1", (1, 20000, {"t": 1.0})), NOW)
    out = e.process(batch("box-1", (2, 1000, {"t": 2.0})), NOW)
    [late] = [m for m in records.messages("cold", "chain", "in-1", out, {"traceparent": "00-ab-cd-01"}) if
              m.record == "late"]  # fmt: skip
    assert (late.subject, late.msg_id) == ("ff.cold.pl.chain.late.box-1", "chain/late/w/in-1")
    assert late.headers == {"traceparent": "00-ab-cd-01", "Nats-Msg-Id": "chain/late/w/in-1",
                            "Fleetflow-Record": "late"}  # fmt: skip
