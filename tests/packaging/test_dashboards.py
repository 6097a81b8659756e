"""The Grafana dashboards query only metrics the services (or the NATS exporter) really export, filtered by fleet
and pipeline."""

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.packaging import chart
from tests.packaging.instruments import METRIC, exported_series

DASHBOARDS = sorted((chart.CHART / "dashboards").glob("*.json"))
NATS_METRIC = re.compile(r"\b(?:gnatsd|jetstream)_\w+")
# What prometheus-nats-exporter 0.20 serves with the sidecar's flags (-varz -healthz -jsz=all), as its source
# names them: `gnatsd_varz_<key of nats-server's /varz>`, `gnatsd_healthz_status` and the collector/jsz.go
# descriptors. Every series is a gauge, counters of the server included.
NATS_EXPORTER_SERIES = {
    *(f"gnatsd_varz_{key}" for key in ("connections", "in_msgs", "out_msgs", "in_bytes", "out_bytes",
                                        "slow_consumers", "subscriptions", "mem", "cpu")),
    "gnatsd_healthz_status",
    *(f"jetstream_server_{name}" for name in ("total_streams", "total_consumers", "total_messages",
                                               "total_message_bytes", "max_memory", "max_storage")),
    *(f"jetstream_stream_{name}" for name in ("total_messages", "total_bytes", "limit_bytes", "limit_messages",
                                               "consumer_count")),
    *(f"jetstream_consumer_{name}" for name in ("num_pending", "num_ack_pending", "num_redelivered", "num_waiting")),
}  # fmt: skip
NATS_DASHBOARD = "nats.json"
EDGE_DASHBOARD = "edge-sites.json"  # the hub's edge sites, per site: no pipeline in its series


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def expressions(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in panels(dashboard) for t in p.get("targets", [])]


def test_there_are_fleet_pipeline_operator_and_nats_dashboards() -> None:
    assert {"fleet-overview.json", "pipeline.json", "operator.json", NATS_DASHBOARD} <= {p.name for p in DASHBOARDS}


def test_instrument_scan_finds_the_services_metrics() -> None:
    """Guards the scan below: if instruments moved to another form, the check would pass vacuously."""
    series = exported_series()
    assert "fleetflow_gateway_readings_accepted_total" in series
    assert "fleetflow_writer_write_duration_seconds_bucket" in series


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_every_queried_metric_is_exported_by_a_service(path: Path) -> None:
    dashboard = json.loads(path.read_text())
    texts = [*expressions(dashboard), json.dumps(dashboard["templating"])]
    pattern, exported = (
        (NATS_METRIC, NATS_EXPORTER_SERIES) if path.name == NATS_DASHBOARD else (METRIC, exported_series())
    )
    queried = {m for text in texts for m in pattern.findall(text)}
    assert queried, f"no {pattern.pattern} metric queried at all"
    assert not queried - exported, f"{path.name} queries metrics nothing exports: {sorted(queried - exported)}"


def test_the_nats_dashboard_reads_the_exporter_the_operator_runs() -> None:
    from fleetflow.operator.builders import nats

    args = nats.exporter_container("exporter", "IfNotPresent")["args"]
    assert {"-varz", "-healthz", "-jsz=all"} <= set(args), "the series NATS_EXPORTER_SERIES lists need these flags"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_panels_use_the_datasource_variable_and_filter_by_fleet(path: Path) -> None:
    dashboard = json.loads(path.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    if path.name == "operator.json":  # the operator serves every fleet: its dashboard filters by kind
        assert all('kind=~"$kind"' in t["expr"] for p in panels(dashboard) for t in p["targets"])
        return
    assert variables["fleet"]["type"] == "query" and variables["fleet"]["includeAll"]
    if path.name not in (NATS_DASHBOARD, EDGE_DASHBOARD):  # they serve the fleet: no pipeline filter
        assert variables["pipeline"]["type"] == "query"
    for panel in panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert 'fleet=~"$fleet"' in target["expr"], f"{panel['title']}: {target['expr']}"
            if "fleetflow_processor" in target["expr"] or "fleetflow_writer" in target["expr"]:
                assert 'pipeline=~"$pipeline"' in target["expr"], f"{panel['title']}: {target['expr']}"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_is_well_formed_for_grafana(path: Path) -> None:
    dashboard = json.loads(path.read_text())
    assert dashboard["uid"].startswith("fleetflow-") and len(dashboard["uid"]) <= 40
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels(dashboard):
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, f"{panel['title']} overflows the 24-column grid"
        if panel["type"] != "row":
            assert panel.get("description"), f"{panel['title']} has no description"


PER_SECOND_UNITS = {"reqps", "cps", "ops", "rps", "wps", "Bps", "binBps"}


def target_unit(panel: dict[str, Any], target: dict[str, Any]) -> str:
    """The unit Grafana shows a target's series in: an override matching its legend, else the panel's."""
    legend = target.get("legendFormat", "")
    for override in panel["fieldConfig"].get("overrides", []):
        matcher = override["matcher"]
        matches = (matcher["id"] == "byName" and matcher["options"] == legend) or (
            matcher["id"] == "byRegexp" and re.fullmatch(matcher["options"], legend)
        )
        units = [p["value"] for p in override["properties"] if p["id"] == "unit"]
        if matches and units:
            return str(units[0])
    return str(panel["fieldConfig"]["defaults"].get("unit", ""))


def expected_unit(expr: str) -> str | None:
    """What a query's values are measured in, where its shape says so: a latency quantile or a seconds gauge in
    seconds, a byte size in bytes, a plain rate per second; None where the query leaves it open (ratios)."""
    if re.search(r"histogram_quantile\(.*_seconds_bucket", expr) or re.search(r"\bfleetflow_\w+_seconds\{", expr):
        return "s"
    if re.search(r"fleetflow_\w+_bytes(_sum)?\b", expr):
        return "bytes"
    if "rate(" in expr and " / " not in expr and "histogram_quantile" not in expr:
        return "per second"
    return None


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_every_series_is_shown_in_the_unit_of_what_it_measures(path: Path) -> None:
    """No rate shown as a bare count, and no seconds and bytes sharing one axis."""
    checked = 0
    for panel in panels(json.loads(path.read_text())):
        for target in panel.get("targets", []):
            expected, unit = expected_unit(target["expr"]), target_unit(panel, target)
            if expected is None:
                continue
            checked += 1
            what = f"{path.name} / {panel['title']} / {target.get('legendFormat')}: unit {unit!r}"
            if expected == "per second":
                assert unit.endswith("/s") or unit in PER_SECOND_UNITS, f"{what}, but it plots a rate"
            else:
                assert unit == expected, f"{what}, but it plots {expected}"
    assert checked, "no target's unit checked"
