"""Pipelines type-check their CEL at load: what users obviously mean runs, what can never evaluate is refused
with the step, the position and the reason."""

from typing import Any

import pytest

from fleetflow.processor.compiler import PipelineCompileError
from tests.unit.processor.builders import NOW, batch, compiled, engine


def derived(expression: str, **metrics: float) -> float | None:
    e = engine([{"name": "calc", "derive": {"metrics": {"out": expression}}}])
    [processed] = e.process(batch("box-1", (1, 0, metrics)), NOW).readings
    return processed.readings[0].metrics.get("out")


def kept(condition: str, **metrics: float) -> bool:
    e = engine([{"name": "keep", "filter": {"condition": condition}}], [{"match": "^box-", "labels": {"site": "a"}}])
    return bool(e.process(batch("box-1", (1, 0, metrics)), NOW).readings)


def problem(step: dict[str, Any]) -> str:
    with pytest.raises(PipelineCompileError) as caught:
        compiled([step])
    [found] = caught.value.problems
    return found


@pytest.mark.parametrize(
    ("expression", "value"),
    [
        ("metrics.temp_c * 9 / 5 + 32", 41.0),  # integer literals with a double are doubles: 1.8x + 32
        ("9 / 5 * metrics.temp_c + 32", 41.0),  # never integer division (9 / 5 == 1)
        ("(metrics.temp_c - 32) * 5 / 9", -15.0),
        ("-metrics.temp_c * 2 + 0x10", 6.0),
        ("9 / 5", 1.8),  # a derived metric is a double, even from literals alone
        ("metrics.temp_c > 4 ? metrics.temp_c : 0", 5.0),
        ("double(ts - ts) + metrics.temp_c", 5.0),
    ],
)
def test_numbers_mean_what_they_obviously_mean(expression: str, value: float) -> None:
    assert derived(expression, temp_c=5.0) == value


def test_comparisons_and_int_arithmetic_keep_working() -> None:
    assert kept("metrics.temp_c > 8 && ts - 60000 > 0 && seq % 2 == 1", temp_c=9.0)
    assert not kept("metrics.temp_c > 8", temp_c=7.0)
    assert kept("size(labels) == 1 && labels.site == 'a' && device.startsWith('box-')", temp_c=1.0)
    assert kept("metrics.exists(k, metrics[k] > 4) && [1, 2].map(x, x * 2).size() == 2", temp_c=5.0)


@pytest.mark.parametrize(
    ("step", "message"),
    [
        (
            {"derive": {"metrics": {"x": "metrics.temp_c + labels.site"}}},
            "spec.steps[0].derive.metrics.x: 'metrics.temp_c + labels.site' at 1:16: '+' is not defined for double "
            "and string: metrics.temp_c is a double and labels.site is a string",
        ),
        (
            {"derive": {"metrics": {"x": "metrics.temp_c * true"}}},
            "spec.steps[0].derive.metrics.x: 'metrics.temp_c * true' at 1:16: '*' is not defined for double and "
            "bool: metrics.temp_c is a double and true is a bool",
        ),
        (
            {"derive": {"metrics": {"x": "ts / 1000.0"}}},
            "spec.steps[0].derive.metrics.x: 'ts / 1000.0' at 1:4: '/' cannot mix int and double (ts is an int and "
            "1000.0 is a double); CEL does not convert numbers: write double(ts)",
        ),
        (
            {"derive": {"metrics": {"x": "metrics.temp_c > 8.0"}}},
            "spec.steps[0].derive.metrics.x: 'metrics.temp_c > 8.0' at 1:1: gives bool, but this field needs a number",
        ),
        (
            {"filter": {"condition": "metrics.temp_c"}},
            "spec.steps[0].filter.condition: 'metrics.temp_c' at 1:1: gives double, but this field needs true or false",
        ),
        (
            {"filter": {"condition": "has(metrics.t) &&\n  metrics.t % 2 == 0"}},
            "spec.steps[0].filter.condition: 'has(metrics.t) &&\\n  metrics.t % 2 == 0' at 2:13: '%' needs ints, "
            "but metrics.t is a double and 2 is an int; a double has no remainder in CEL",
        ),
        (
            {"alert": {"condition": "metrics.t > 8.0 && metrics.door"}},
            "spec.steps[0].alert.condition: 'metrics.t > 8.0 && metrics.door' at 1:20: '&&' needs true or false on "
            "both sides, but metrics.door is a double",
        ),
        (
            {"alert": {"condition": "labels.site == 3"}},
            "spec.steps[0].alert.condition: 'labels.site == 3' at 1:13: '==' cannot compare string with int: "
            "labels.site is a string and 3 is an int",
        ),
        (
            {"command": {"condition": "device.site == 'a'", "command": "cool"}},
            "spec.steps[0].command.condition: \"device.site == 'a'\" at 1:1: device is a string: it has no field 'site'",
        ),
        (
            {"command": {"condition": "metrics.t > 8.0", "command": "cool", "target": "metrics.t"}},
            "spec.steps[0].command.target: 'metrics.t' at 1:1: gives double, but this field needs a string (a "
            "device id)",
        ),
    ],
)
def test_an_expression_that_can_never_evaluate_is_refused_with_position_and_reason(
    step: dict[str, Any], message: str
) -> None:
    assert problem({"name": "s", **step}) == message


def test_the_library_gaps_are_refused_at_load_not_per_reading() -> None:
    assert "matches() is a method of a string" in problem(
        {"name": "f", "filter": {"condition": "matches(device, 'b')"}}
    )
    assert "timestamp() converts string, but ts is an int" in problem(
        {"name": "f", "filter": {"condition": "timestamp(ts).getHours() > 3"}}
    )


def test_dyn_opts_out_and_fails_per_reading_instead() -> None:
    e = engine([{"name": "f", "filter": {"condition": "dyn(labels) + 1 > 0"}}])
    out = e.process(batch("box-1", (1, 0, {"t": 1.0})), NOW)
    assert out.readings == [] and out.errors[("f", "type_mismatch")] == 1
