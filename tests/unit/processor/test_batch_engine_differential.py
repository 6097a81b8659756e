"""Differential: the batch engine and the per-reading reference engine give the same outputs and state.

Hypothesis picks a pipeline from a pool holding every step kind (several of a kind, too, so outputs of
different steps interleave), expressions the native translation covers and ones it leaves to the library,
and expressions that fail on some readings. It feeds both engines the same batches from several devices
(labelled and not), with duplicate seqs, out-of-order and late event times, metrics that are missing or
ints, wall-clock jumps that close idle windows, and a restart from a snapshot in the middle."""

import functools
import math
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleetflow.local.resources import load_resources
from fleetflow.processor import celnative, dedupe
from fleetflow.processor.batchengine import BatchEngine
from fleetflow.processor.compiler import CompiledPipeline, compile_pipeline
from fleetflow.processor.engine import Engine, Outputs
from fleetflow.runtime.codec import Reading, ReadingBatch, WindowAggregate
from tests.unit.processor.builders import NOW, T0, compiled

LABELS = [
    {"match": "^box-a", "labels": {"site": "depot-a", "cooler": "cooler-a"}},
    {"match": "^box-b", "labels": {"site": "depot-b"}},
]
DEVICES = ["box-a1", "box-a2", "box-b1", "sensor-9"]  # sensor-9 has no labels: ungrouped, no cooler
METRICS = ["t", "v", "a"]

STEPS: list[dict[str, Any]] = [
    {"name": "once", "dedupe": {"horizon": "5s"}},
    {"name": "plausible", "filter": {"condition": "has(metrics.t) && metrics.t > -40.0 && metrics.t < 60.0"}},
    {"name": "warm", "filter": {"condition": "metrics.t > 8 || device.startsWith('box-b')"}},
    {"name": "site-b", "filter": {"condition": "device.endsWith('1') || labels.site == 'depot-b'"}},
    {"name": "even", "filter": {"condition": "ts % 2000 < 1500"}},  # int arithmetic: the library's
    {"name": "shaky", "filter": {"condition": "metrics.t > 0.0 ? dyn(true) : dyn('no')"}},  # not_boolean errors
    {"name": "ratio", "filter": {"condition": "metrics.v / metrics.a > 1.0"}},  # x / 0.0 is an infinity
    {"name": "pick", "filter": {"condition": "!(metrics.t >= 5.0) ? true : metrics.v < 3.0"}},
    {
        "name": "units",
        "derive": {
            "metrics": {
                "w": "metrics.v * metrics.a",
                "f": "metrics.t * 9 / 5 + 32",
                "r": "metrics.v / metrics.a",  # not_a_number when a is 0
                "wf": "metrics.w + metrics.f",  # reads what this step derived just before
                "n": "-metrics.t",
                "s": "double(seq)",  # the library's
            },
            "rename": {"a": "amps"},
            "drop": ["v"],
        },
    },
    {"name": "scale", "derive": {"metrics": {"t": "metrics.t * 2.0 - 1.5", "k": "dyn(metrics.t)"}}},
    {
        "name": "per-box",
        "window": {
            "size": "10s",
            "metrics": ["t", "w"],
            "percentiles": [50, 95],
            "watermarkDelay": "2s",
            "allowedLateness": "3s",
            "idleTimeout": "30s",
        },
    },
    {"name": "per-site", "window": {"size": "10s", "hop": "4s", "groupBy": ["site"], "idleTimeout": "1m"}},
    {"name": "strict", "window": {"size": "5s", "metrics": ["t"], "percentiles": [99.9]}},
    {"name": "hot", "alert": {"condition": "metrics.t > 8.0", "clear": "metrics.t < 6.0", "for": "5s"}},
    {"name": "flicker", "alert": {"condition": "metrics.t > 10", "clearFor": "2s", "severity": "info"}},
    {
        "name": "boost",
        "command": {
            "condition": "metrics.t > 8.0 && has(labels.cooler)",
            "command": "boost",
            "target": "labels.cooler",
            "params": {"mode": "boost"},
            "computedParams": {"c": "metrics.t", "d": "device", "ts": "ts"},
            "ttl": "2m",
            "cooldown": "10s",
        },
    },
    {
        "name": "fan",
        "command": {
            "condition": "metrics.t > 9.0",
            "command": "fan",
            "target": "metrics.t > 12.0 ? 'not a device!' : device",
            "computedParams": {"x": "metrics.q"},
            "ttl": "30s",
            "cooldown": "0s",
        },
    },
]


@functools.cache
def pipeline_of(names: tuple[str, ...]) -> CompiledPipeline:
    by_name = {step["name"]: step for step in STEPS}
    return compiled([by_name[name] for name in names], LABELS)


def pipelines() -> st.SearchStrategy[CompiledPipeline]:
    names = [step["name"] for step in STEPS]
    return st.lists(st.sampled_from(names), min_size=1, max_size=7, unique=True).map(tuple).map(pipeline_of)


metric_values = st.one_of(
    st.sampled_from([0.0, -0.0, 5.5, 7.0, 8.0, 9.5, 11.0, 13.0, -127.0, 1e308]),
    st.floats(-50, 70, allow_nan=False),
    st.integers(-3, 15),  # not a double: CEL will not mix it with one
)
metric_sets = st.dictionaries(st.sampled_from(METRICS), metric_values, max_size=3)


@st.composite
def batches(draw: st.DrawFn) -> ReadingBatch:
    device = draw(st.sampled_from(DEVICES))
    count = draw(st.integers(1, 12))
    # event times mostly move forward a few seconds at a time; some jump back (out of order, late)
    start = draw(st.integers(0, 120)) * 1000
    readings = [
        Reading(draw(st.integers(0, 40)), T0 + start + draw(st.integers(-15, 15)) * 500, draw(metric_sets))
        for _ in range(count)
    ]
    return ReadingBatch(fleet="cold", device=device, readings=readings, received_ms=NOW)


# What happens next: a batch at a wall-clock time, the wall clock moving on (idle windows close), or a
# restart from the engines' own snapshots.
events = st.lists(
    st.one_of(
        st.tuples(st.just("batch"), batches(), st.integers(0, 200_000)),
        st.tuples(st.just("advance"), st.none(), st.integers(0, 400_000)),
        st.tuples(st.just("restart"), st.none(), st.integers(0, 10_000)),
    ),
    min_size=1,
    max_size=25,
)


def assert_same_outputs(got: Outputs, want: Outputs) -> None:
    assert got.readings == want.readings
    assert len(got.aggregates) == len(want.aggregates)
    for mine, theirs in zip(got.aggregates, want.aggregates, strict=True):
        assert_same_aggregate(mine, theirs)
    assert got.alerts == want.alerts
    assert got.commands == want.commands
    assert got.late == want.late
    assert +got.counts == +want.counts
    assert +got.errors == +want.errors
    assert got.error_examples == want.error_examples
    assert (got.device, got.received_ms) == (want.device, want.received_ms)


def assert_same_aggregate(got: WindowAggregate, want: WindowAggregate) -> None:
    floats = ("min", "max", "mean", "sum", "last")
    exact = {f: getattr(got, f) for f in got.__struct_fields__ if f not in (*floats, "percentiles")}
    assert exact == {f: getattr(want, f) for f in exact}
    for name in floats:
        assert math.isclose(getattr(got, name), getattr(want, name), rel_tol=1e-9, abs_tol=1e-9), name
    assert got.percentiles.keys() == want.percentiles.keys()
    for p, value in got.percentiles.items():
        assert math.isclose(value, want.percentiles[p], rel_tol=1e-9, abs_tol=1e-9), p


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(pipeline=pipelines(), script=events)
def test_batch_engine_matches_the_reference(pipeline: CompiledPipeline, script: list[tuple[str, Any, int]]) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(dedupe, "PRUNE_EVERY", 4)  # so a few readings reach the pruning of old seqs
        reference, engine = Engine(pipeline, now_ms=NOW), BatchEngine(pipeline, now_ms=NOW)
        now = NOW
        for what, batch, later in script:
            now += later
            if what == "batch":
                assert_same_outputs(engine.process(batch, now), reference.process(batch, now))
            elif what == "advance":
                assert_same_outputs(engine.advance(now), reference.advance(now))
            else:
                reference = Engine.restore(pipeline, reference.snapshot(), now)
                engine = BatchEngine.restore(pipeline, engine.snapshot(), now)
                assert isinstance(engine, BatchEngine)
            assert msgspec.msgpack.decode(engine.snapshot()) == msgspec.msgpack.decode(reference.snapshot())


def test_the_cold_chain_example_runs_natively() -> None:
    """The example's expressions all translate, so no reading of it goes through a `cel.Context`."""
    resources = load_resources([Path(__file__).parents[3] / "examples" / "cold-chain"])
    [pipeline] = resources.pipelines.values()
    steps = compile_pipeline(pipeline, resources.fleets[pipeline.fleet]).steps
    expressions = [expr for step in steps for expr in step.expressions.values()]
    assert expressions and all(celnative.translates(expr) for expr in expressions)
