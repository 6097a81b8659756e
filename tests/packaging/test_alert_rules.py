"""The alerting rules: Prometheus accepts them (promtool check rules), each fires on the series of its condition
and stays quiet on healthy ones (promtool test rules), they query only series the services export, each has a
runbook section, and the chart ships exactly this file as a PrometheusRule.

promtool comes with Debian's `prometheus` package (`make observability-tools`); without it the two promtool
tests are reported as skipped, never as passed."""

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.packaging import chart
from tests.packaging.instruments import METRIC, exported_series

RULES = chart.CHART / "rules" / "fleetflow.rules.yaml"
RULE_TESTS = Path(__file__).parent / "rules" / "fleetflow.rules.test.yaml"
RUNBOOKS = chart.REPO / "docs" / "observability.md"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed: make observability-tools")


def alerts() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


@needs_promtool
def test_promtool_accepts_the_rules() -> None:
    result = promtool("check", "rules", str(RULES), cwd=chart.REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in result.stdout


@needs_promtool
def test_every_alert_fires_on_its_condition() -> None:
    result = promtool("test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_unit_test_in_which_it_fires() -> None:
    cases = [case for test in yaml.safe_load(RULE_TESTS.read_text())["tests"] for case in test["alert_rule_test"]]
    firing = {case["alertname"] for case in cases if case.get("exp_alerts")}
    assert {rule["alert"] for rule in alerts()} == firing


def test_rules_query_only_series_the_services_export() -> None:
    exported = exported_series() | {"up"}  # `up`: Prometheus's own, per scraped service
    for rule in alerts():
        queried = set(METRIC.findall(rule["expr"])) | ({"up"} if re.search(r"\bup\{", rule["expr"]) else set())
        assert queried, f"{rule['alert']} queries no fleetflow series"
        assert not queried - exported, f"{rule['alert']} queries series no service exports: {queried - exported}"


def test_every_alert_is_paged_with_a_severity_a_summary_and_its_runbook() -> None:
    headings = {
        heading.strip().lower() for heading in re.findall(r"^#{3,4} (\w+)\s*$", RUNBOOKS.read_text(), re.MULTILINE)
    }
    for rule in alerts():
        name = rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
        assert rule["annotations"]["runbook_url"] == f"docs/observability.md#{name.lower()}", name
        assert name.lower() in headings, f"docs/observability.md has no runbook section '### {name}'"


def test_the_chart_ships_the_rules_file_as_a_prometheus_rule() -> None:
    rendered = chart.objects({"prometheusRule": {"enabled": True, "labels": {"release": "kps"}}})
    rule = chart.one(rendered, "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "kps"
    assert rule["spec"] == yaml.safe_load(RULES.read_text())
    assert not [o for o in chart.objects() if o["kind"] == "PrometheusRule"], "off by default"
