"""The Pipeline's step models validate shape and explain what is wrong."""

import pydantic
import pytest

from fleetflow.api.crds import pipeline_crd
from fleetflow.api.errors import describe
from tests.unit.processor.builders import pipeline


def errors(steps: list[dict], replicas: int = 1) -> list[str]:
    with pytest.raises(pydantic.ValidationError) as caught:
        pipeline(steps, replicas)
    return describe(caught.value)


def test_a_step_needs_exactly_one_kind() -> None:
    [problem] = errors([{"name": "x", "filter": {"condition": "true"}, "alert": {"condition": "true"}}])
    assert "step 'x' must have exactly one of filter, derive, window, alert, command, dedupe; found filter, alert" in (
        problem
    )
    [problem] = errors([{"name": "y"}])
    assert "found none" in problem


def test_step_names_are_unique() -> None:
    [problem] = errors([{"name": "a", "dedupe": {}}, {"name": "a", "dedupe": {}}])
    assert "steps[1].name 'a' is used twice" in problem


def test_window_hop_and_percentiles_are_checked() -> None:
    [problem] = errors([{"name": "w", "window": {"size": "1m", "hop": "2m"}}])
    assert "window hop '2m' must be between 1ms and the size '1m'" in problem
    [problem] = errors([{"name": "w", "window": {"size": "1m", "percentiles": [0]}}])
    assert "percentile 0.0 must be in (0, 100]" in problem


def test_unknown_field_in_a_step_is_named() -> None:
    [problem] = errors([{"name": "f", "filter": {"condition": "true", "when": "x"}}])
    assert problem == "spec.steps[0].filter.when: unknown field (check its spelling and indentation)"


def test_label_groups_need_one_processor_replica() -> None:
    [problem] = errors([{"name": "w", "window": {"size": "1m", "groupBy": ["site"]}}], replicas=2)
    assert "groups windows by labels ['site'], which needs processor.replicas 1 (got 2)" in problem


def test_derive_metric_names_are_checked() -> None:
    [problem] = errors([{"name": "d", "derive": {"metrics": {"bad name": "1.0"}}}])
    assert "metric name 'bad name' is not valid" in problem


def test_alert_for_is_spelled_for_in_yaml() -> None:
    spec = pipeline([{"name": "a", "alert": {"condition": "true", "for": "30s"}}]).spec
    assert spec.steps[0].alert is not None and spec.steps[0].alert.for_ms == 30_000
    assert spec.steps[0].to_k8s()["alert"]["for"] == "30s"


def test_crd_schema_of_steps_is_structural_with_one_kind_rule() -> None:
    schema = pipeline_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    items = schema["properties"]["spec"]["properties"]["steps"]["items"]
    assert set(items["properties"]) == {"name", "filter", "derive", "window", "alert", "command", "dedupe"}
    assert "has(self.dedupe)].filter(x, x).size() == 1" in items["x-kubernetes-validations"][0]["rule"]
    assert items["properties"]["derive"]["properties"]["metrics"]["additionalProperties"] == {
        "type": "string",
        "minLength": 1,
    }
    assert items["properties"]["alert"]["properties"]["for"]["type"] == "string"
