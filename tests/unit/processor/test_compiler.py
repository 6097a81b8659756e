"""Every bad CEL expression is reported before anything runs, with its field path, position and reason."""

import pytest

from fleetflow.api import SpecError
from fleetflow.processor.compiler import PipelineCompileError, compile_pipeline
from fleetflow.processor.expressions import fields_named
from tests.unit.processor.builders import NOW, batch, compiled, engine, fleet, pipeline


def problems(steps: list[dict]) -> list[str]:
    with pytest.raises(PipelineCompileError) as caught:
        compiled(steps)
    return caught.value.problems


def test_invalid_filter_condition_names_path_position_and_reason() -> None:
    [problem] = problems([{"name": "keep", "filter": {"condition": "metrics.temperature >"}}])
    assert problem == (
        "spec.steps[0].filter.condition: 'metrics.temperature >' at 1:22: Syntax error: mismatched input "
        "'<EOF>' expecting an operand (a number, string, name, '(', '[' or '{')"
    )


def test_invalid_derive_metric() -> None:
    [problem] = problems([{"name": "power", "derive": {"metrics": {"power_w": "metrics.v ** metrics.i"}}}])
    assert problem.startswith("spec.steps[0].derive.metrics.power_w: 'metrics.v ** metrics.i' at 1:12: ")
    assert "extraneous input '*'" in problem


def test_invalid_alert_condition_and_clear_both_reported() -> None:
    found = problems([{"name": "hot", "alert": {"condition": "metrics.t > 8.0 &&", "clear": "t < 3.0"}}])
    assert found[0].startswith("spec.steps[0].alert.condition: 'metrics.t > 8.0 &&' at 1:19: Syntax error")
    assert found[1] == (
        "spec.steps[0].alert.clear: 't < 3.0' at 1:1: unknown variable 't'; a reading provides device, ts, "
        "seq, metrics, labels (a metric is metrics.t)"
    )


def test_invalid_command_target_and_params() -> None:
    step = {
        "name": "cool",
        "command": {
            "condition": "metrics.t > 8.0",
            "command": "cool",
            "target": "'cooler-",
            "computedParams": {"level": "clamp(metrics.t)"},
        },
    }
    found = problems([step])
    assert found[0].startswith('spec.steps[0].command.target: "\'cooler-" at 1:1: Syntax error: token recognition')
    assert found[1].startswith("spec.steps[0].command.computedParams.level: 'clamp(metrics.t)' at 1:1: ")
    assert "unknown function 'clamp'; available: all, bytes" in found[1]


def test_every_bad_expression_of_every_step_is_listed_at_once() -> None:
    found = problems(
        [
            {"name": "dd", "dedupe": {}},
            {"name": "f", "filter": {"condition": "("}},
            {"name": "w", "window": {"size": "1m"}},
            {"name": "a", "alert": {"condition": "nope > 1.0"}},
            {"name": "c", "command": {"condition": "metrics.t >", "command": "cool"}},
        ]
    )
    assert [p.split(":")[0] for p in found] == [
        "spec.steps[1].filter.condition",
        "spec.steps[3].alert.condition",
        "spec.steps[4].command.condition",
    ]


def test_compile_error_is_a_spec_error_naming_the_pipeline() -> None:
    with pytest.raises(SpecError, match=r"^Pipeline chain: spec.steps\[0\].filter.condition: "):
        compiled([{"name": "f", "filter": {"condition": "1 +"}}])


def test_comprehension_variables_are_not_unknown() -> None:
    result = compiled([{"name": "f", "filter": {"condition": "metrics.all(k, metrics[k] > -100.0)"}}])
    assert result.steps[0].expr("condition").source.startswith("metrics.all")


def test_pipeline_of_another_fleet_is_refused() -> None:
    other = fleet().model_copy(update={"metadata": fleet().metadata.model_copy(update={"name": "warm"})})
    with pytest.raises(PipelineCompileError, match=r"spec\.fleetRef\.name = 'cold'.*another fleet than 'warm'"):
        compile_pipeline(pipeline([]), other)


def test_expressions_read_only_the_metrics_and_labels_they_name() -> None:
    assert fields_named("has(metrics.t) && metrics['door'] > 0.0 && metrics.t > 8.0", "metrics") == ("door", "t")
    assert fields_named("labels.site == 'north'", "labels") == ("site",)
    assert fields_named("metrics.all(k, metrics[k] > 0.0)", "metrics") is None
    assert fields_named("size(metrics) > 2", "metrics") is None


def test_a_subset_context_keeps_has_and_missing_metric_semantics() -> None:
    e = engine([{"name": "f", "filter": {"condition": "has(metrics.door) || metrics.t > 8.0"}}])
    kept = e.process(batch("d", (1, 0, {"t": 9.0}), (2, 1000, {"door": 1.0}), (3, 2000, {"t": 1.0})), NOW)
    assert [r.seq for r in kept.readings[0].readings] == [1, 2]
    missing = e.process(batch("d", (4, 3000, {"v": 1.0})), NOW)
    assert missing.readings == [] and missing.errors[("f", "missing_field")] == 1
