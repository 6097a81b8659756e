"""The Grafana dashboards query only metrics the services (or the NATS exporter) really export, filtered by fleet
and pipeline."""

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.packaging import chart

DASHBOARDS = sorted((chart.CHART / "dashboards").glob("*.json"))
SOURCES = (chart.REPO / "services" / "fleetflow", chart.REPO / "operator" / "fleetflow")
INSTRUMENT = re.compile(
    r"create_(counter|up_down_counter|histogram|gauge|observable_gauge|observable_counter)\(\s*\"(fleetflow_\w+)\""
)
METRIC = re.compile(r"\bfleetflow_\w+")
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


def exported_series() -> set[str]:
    """Prometheus series names of every OpenTelemetry instrument the services create.

    The Prometheus exporter adds `_total` to counters and `_bucket`, `_sum`, `_count` to histograms;
    the unit is already part of each name (`..._seconds`)."""
    series: set[str] = set()
    for path in (p for source in SOURCES for p in source.rglob("*.py")):
        for kind, name in INSTRUMENT.findall(path.read_text()):
            if kind == "histogram":
                series |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
            elif kind in ("counter", "observable_counter"):
                series.add(f"{name}_total")
            else:
                series.add(name)
    return series


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
