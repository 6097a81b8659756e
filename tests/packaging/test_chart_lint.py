"""Helm's own lint engine accepts the chart, and values.schema.json refuses bad values with a clear message."""

from pathlib import Path
from typing import Any

import pytest

from tests.packaging import chart

FULL_VALUES = Path(__file__).with_name("full-values.yaml")
DEV_VALUES = chart.REPO / "examples" / "dev-values.yaml"


def _explain(findings: list[chart.Finding]) -> str:
    return "\n".join(map(str, findings)) + "\nrender the chart (tests/packaging/chart.py: render) to see the output"


def test_lint_passes_with_default_values() -> None:
    findings = chart.problems(chart.lint())
    assert not findings, _explain(findings)


def test_lint_passes_with_every_value_set() -> None:
    findings = chart.problems(chart.lint(chart.load_values(FULL_VALUES)))
    assert not findings, _explain(findings)


def test_lint_passes_with_the_development_values_skaffold_uses() -> None:
    findings = chart.problems(chart.lint(chart.load_values(DEV_VALUES)))
    assert not findings, _explain(findings)


def test_full_values_file_sets_every_value_the_chart_has() -> None:
    """Otherwise a value added to values.yaml would escape the lint and render tests above."""

    def keys(tree: dict[str, Any], prefix: str = "") -> set[str]:
        found = set()
        for key, value in tree.items():
            found.add(prefix + key)
            if (
                isinstance(value, dict)
                and value
                and not key.endswith(("labels", "Labels", "annotations", "Annotations"))
            ):
                found |= keys(value, f"{prefix}{key}.")
        return found

    defaults = keys(chart.load_values(chart.CHART / "values.yaml"))
    missing = defaults - keys(chart.load_values(FULL_VALUES))
    assert not missing, f"full-values.yaml does not set {sorted(missing)}"


@pytest.mark.parametrize(
    ("values", "where", "what"),
    [
        ({"logLevel": "verbose"}, "/logLevel", "'debug', 'info', 'warning', 'error'"),
        ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy", "'Always', 'IfNotPresent', 'Never'"),
        ({"image": {"digest": "sha256:abc"}}, "/image/digest", "does not match pattern"),
        ({"operator": {"watchNamespaces": ["Plant_A"]}}, "/operator/watchNamespaces/0", "'Plant_A' does not match"),
        ({"operator": {"resyncSeconds": 0}}, "/operator/resyncSeconds", "minimum: got 0, want 1"),
        ({"networkPolicy": {"natsPort": 70000}}, "/networkPolicy/natsPort", "maximum: got 70,000, want 65,535"),
        ({"otlp": {"endpoint": "otel-collector:4317"}}, "/otlp/endpoint", "does not match pattern"),
        ({"resources": {"requests": {"memory": "lots"}}}, "/resources/requests/memory", "lots"),
        ({"extraVolumeMounts": [{"name": "ca"}]}, "/extraVolumeMounts/0", "missing property 'mountPath'"),
        ({"replicaCount": 2}, "", "additional properties 'replicaCount' not allowed"),
        ({"podMonitor": {"enabled": True}, "serviceMonitor": {"enabled": True}}, "/serviceMonitor/enabled", "false"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_bad_values_fail_naming_the_value_and_what_is_accepted(values: dict[str, Any], where: str, what: str) -> None:
    errors = [f for f in chart.lint(values) if f.severity == 3 and f.path == "values.yaml"]
    assert errors, f"values {values} passed the schema"
    message = errors[0].error
    assert f"at '{where}'" in message and what in message, message
