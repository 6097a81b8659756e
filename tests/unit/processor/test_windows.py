"""Golden tests of event-time windows: ordering, lateness, empty and single-reading windows, hopping, groups."""

import pytest

from fleetflow.processor.windows import percentile, window_starts
from fleetflow.runtime.codec import WindowAggregate
from tests.unit.processor.builders import NOW, T0, batch, engine


def window(**spec: object) -> list[dict]:
    return [{"name": "w", "window": {"size": "10s", "percentiles": [50, 95], **spec}}]


def summary(aggregates: list[WindowAggregate]) -> list[tuple]:
    return [
        (a.group, a.metric, a.window_start_ms - T0, a.window_end_ms - T0, a.count, a.min, a.max, a.mean, a.sum, a.last)
        for a in aggregates
    ]


def test_out_of_order_readings_inside_a_window_aggregate_by_event_time() -> None:
    e = engine(window())
    out = e.process(batch("d1", (1, 0, {"t": 4.0}), (2, 5000, {"t": 8.0}), (3, 2000, {"t": 2.0})), NOW)
    assert out.aggregates == []
    out = e.process(batch("d1", (4, 9000, {"t": 6.0}), (5, 10000, {"t": 100.0})), NOW)
    assert summary(out.aggregates) == [("device=d1", "t", 0, 10000, 4, 2.0, 8.0, 5.0, 20.0, 6.0)]
    # last is the newest by event time (seq 4 at 9 s), not the last to arrive; p50 of [2, 4, 6, 8] is 5
    assert out.aggregates[0].percentiles == {"p50": 5.0, "p95": pytest.approx(7.7)}
    assert out.late == {}


def test_late_readings_on_both_sides_of_the_allowed_lateness() -> None:
    e = engine(window(allowedLateness="5s"))
    e.process(batch("d1", (1, 1000, {"t": 1.0}), (2, 14999, {"t": 2.0})), NOW)
    # watermark 14.999 s: [0, 10) waits until 15 s, so a reading at 5 s still counts
    on_time = e.process(batch("d1", (3, 5000, {"t": 3.0})), NOW)
    assert on_time.late == {} and on_time.counts[("w", "windowed")] == 1
    closing = e.process(batch("d1", (4, 15000, {"t": 4.0})), NOW)
    assert summary(closing.aggregates) == [("device=d1", "t", 0, 10000, 2, 1.0, 3.0, 2.0, 4.0, 3.0)]
    late = e.process(batch("d1", (5, 6000, {"t": 5.0})), NOW)
    assert late.counts[("w", "late")] == 1
    assert [(r.seq, r.ts - T0) for r in late.late["w"]] == [(5, 6000)]
    # a late reading is still a processed reading: it is stored, only the window missed it
    assert [r.seq for r in late.readings[0].readings] == [5]
    assert late.aggregates == []


def test_empty_windows_emit_nothing_and_a_single_reading_window_is_exact() -> None:
    e = engine(window())
    e.process(batch("d1", (1, 3000, {"t": 7.5})), NOW)
    out = e.process(batch("d1", (2, 35000, {"t": 1.0})), NOW)
    assert summary(out.aggregates) == [("device=d1", "t", 0, 10000, 1, 7.5, 7.5, 7.5, 7.5, 7.5)]
    assert out.aggregates[0].percentiles == {"p50": 7.5, "p95": 7.5}


def test_hopping_windows_overlap() -> None:
    assert window_starts(T0 + 7000, 10000, 5000) == [T0, T0 + 5000]
    e = engine(window(hop="5s"))
    first = e.process(batch("d1", (1, 2000, {"t": 1.0}), (2, 7000, {"t": 2.0}), (3, 12000, {"t": 3.0})), NOW)
    then = e.process(batch("d1", (4, 20000, {"t": 4.0})), NOW)
    assert summary(first.aggregates + then.aggregates) == [
        ("device=d1", "t", -5000, 5000, 1, 1.0, 1.0, 1.0, 1.0, 1.0),
        ("device=d1", "t", 0, 10000, 2, 1.0, 2.0, 1.5, 3.0, 2.0),
        ("device=d1", "t", 5000, 15000, 2, 2.0, 3.0, 2.5, 5.0, 3.0),
        ("device=d1", "t", 10000, 20000, 1, 3.0, 3.0, 3.0, 3.0, 3.0),
    ]


def test_windows_per_label_group_and_devices_without_the_label() -> None:
    labels = [{"match": "^truck-a", "labels": {"site": "north"}}, {"match": "^truck-b", "labels": {"site": "north"}}]
    e = engine(window(groupBy=["site"], metrics=["t"]), labels)
    e.process(batch("truck-a1", (1, 1000, {"t": 2.0, "v": 1.0})), NOW)
    e.process(batch("truck-b1", (1, 2000, {"t": 4.0})), NOW)
    lone = e.process(batch("van-1", (1, 2000, {"t": 9.0})), NOW)
    assert lone.counts[("w", "ungrouped")] == 1
    out = e.process(batch("truck-b1", (2, 10000, {"t": 1.0})), NOW)
    assert summary(out.aggregates) == [("site=north", "t", 0, 10000, 2, 2.0, 4.0, 3.0, 6.0, 4.0)]


def test_watermark_delay_holds_windows_open() -> None:
    e = engine(window(watermarkDelay="3s"))
    e.process(batch("d1", (1, 1000, {"t": 1.0})), NOW)
    assert e.process(batch("d1", (2, 12000, {"t": 2.0})), NOW).aggregates == []
    assert e.process(batch("d1", (3, 9000, {"t": 3.0})), NOW).late == {}
    assert [a.count for a in e.process(batch("d1", (4, 13000, {"t": 4.0})), NOW).aggregates] == [2]


def test_devices_have_their_own_watermarks() -> None:
    e = engine(window())
    e.process(batch("slow", (1, 1000, {"t": 1.0})), NOW)
    assert e.process(batch("fast", (1, 60000, {"t": 1.0})), NOW).aggregates == []
    assert e.process(batch("slow", (2, 2000, {"t": 2.0})), NOW).late == {}


def test_idle_devices_have_their_windows_closed_by_the_wall_clock() -> None:
    e = engine(window(idleTimeout="30s"))
    e.process(batch("d1", (1, 1000, {"t": 1.0})), NOW)
    assert e.advance(NOW + 29_999).aggregates == []
    assert summary(e.advance(NOW + 30_000).aggregates) == [("device=d1", "t", 0, 10000, 1, 1.0, 1.0, 1.0, 1.0, 1.0)]
    assert e.process(batch("d1", (2, 2000, {"t": 2.0})), NOW + 31_000).counts[("w", "late")] == 1


def test_percentile_interpolates_linearly() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([1.0, 2.0, 3.0, 4.0], 100) == 4.0
    assert percentile([10.0], 95) == 10.0
