"""The batch engine adds a batch's readings to a window a metric at a time. Nothing may show it: a window that
closes in the middle of a batch holds exactly the readings before the one that closed it, a metric no reading of
a window carries gets no aggregate, and the checkpoint is the reference's byte for byte."""

import pytest

from fleetflow.processor.batchengine import BatchEngine
from fleetflow.processor.engine import Engine
from tests.unit.processor.builders import NOW, T0, batch, compiled

WINDOWS = {
    "listed": {"name": "w", "window": {"size": "10s", "metrics": ["t", "v"], "watermarkDelay": "0s"}},
    "all": {"name": "w", "window": {"size": "10s", "watermarkDelay": "0s"}},
    "hopping": {"name": "w", "window": {"size": "10s", "hop": "5s", "metrics": ["t", "v"], "watermarkDelay": "0s"}},
}


@pytest.mark.parametrize("window", WINDOWS)
def test_windows_aggregate_what_one_reading_at_a_time_gives(window: str) -> None:
    pipeline = compiled([WINDOWS[window]])
    reference, columns = Engine(pipeline, now_ms=NOW), BatchEngine(pipeline, now_ms=NOW)
    first = batch("box-1", (1, 1_000, {"v": 3.5}), (2, 2_000, {"t": 4.0, "v": 3.4}), (3, 3_000, {"t": 5.0}),
                  (4, 12_000, {"v": 3.3}),  # closes [0, 10 s) in the middle of the batch
                  (5, 13_000, {"v": 3.2}), (6, 9_000, {"t": 1.0}))  # fmt: skip
    closing = batch("box-1", (7, 31_000, {"t": 7.0, "v": 3.1}))
    emitted, late = [], []
    for readings in (first, closing):
        got, want = columns.process(readings, NOW), reference.process(readings, NOW)
        assert [(a.window_start_ms, a.metric, a.count, a.sum, a.last) for a in got.aggregates] == [
            (a.window_start_ms, a.metric, a.count, a.sum, a.last) for a in want.aggregates
        ]
        assert got.late == want.late
        emitted += got.aggregates
        late += [r.seq for readings in got.late.values() for r in readings]
    assert late == [6]  # for the window seq 4 closed
    if window != "hopping":
        assert [(a.window_start_ms - T0, a.metric, a.count) for a in emitted] == [
            (0, "t", 2), (0, "v", 2), (10_000, "v", 2)]  # fmt: skip
    assert columns.snapshot() == reference.snapshot()


def test_last_is_the_later_of_readings_with_the_same_time_and_seq() -> None:
    """Without a dedupe step one (ts, seq) can arrive twice with other values; as Accumulator.add does, the later
    one is `last`, within a batch (box-1) and across batches (box-2), and an older reading does not win."""
    pipeline = compiled([WINDOWS["listed"]])
    reference, columns = Engine(pipeline, now_ms=NOW), BatchEngine(pipeline, now_ms=NOW)
    batches = [
        batch(
            "box-1",
            (5, 2_000, {"t": 1.0}),
            (3, 4_000, {"t": 2.0}),
            (3, 4_000, {"t": 3.0}),
            (1, 4_000, {"t": 8.5}),
            (2, 1_000, {"t": 9.0}),
        ),
        batch("box-1", (1, 4_000, {"t": 8.0})),
        batch("box-2", (7, 4_000, {"t": 5.0})),
        batch("box-2", (7, 4_000, {"t": 6.0})),
        batch("box-1", (9, 31_000, {"t": 7.0})),  # closes [0, 10 s)
        batch("box-2", (9, 31_000, {"t": 7.0})),
    ]
    emitted = []
    for readings in batches:
        got, want = columns.process(readings, NOW), reference.process(readings, NOW)
        assert [(a.group, a.count, a.last) for a in got.aggregates] == [
            (a.group, a.count, a.last) for a in want.aggregates
        ]
        emitted += got.aggregates
    assert [(a.group, a.metric, a.count, a.last) for a in emitted] == [
        ("device=box-1", "t", 6, 3.0), ("device=box-2", "t", 2, 6.0)]  # fmt: skip
    assert columns.snapshot() == reference.snapshot()
