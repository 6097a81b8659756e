"""The device-data dashboards of dashboards/api/: Infinity queries of the application API, shipped by the chart
only when `dashboards.deviceData.enabled` (Grafana needs the plugin). Each panel's request is evaluated against
a running API in tests/integration/appapi/test_grafana_dashboard.py."""

import json
from pathlib import Path

import pytest

from tests.packaging import chart
from tests.support import infinity

API_DASHBOARDS = sorted((chart.CHART / "dashboards" / "api").glob("*.json"))


def test_there_is_a_device_data_dashboard() -> None:
    assert [p.name for p in API_DASHBOARDS] == ["device-data.json"]


@pytest.mark.parametrize("path", API_DASHBOARDS, ids=lambda p: p.name)
def test_every_query_goes_to_the_infinity_data_source_variable(path: Path) -> None:
    dashboard = json.loads(path.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == infinity.DATASOURCE_TYPE
    assert {"fleet", "device"} <= set(variables)
    expected = {"type": infinity.DATASOURCE_TYPE, "uid": "${datasource}"}
    for variable in variables.values():
        if variable["type"] == "query":
            assert variable["datasource"] == expected, variable["name"]
    for panel in infinity.panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == expected, panel["title"]
        assert panel["targets"], f"{panel['title']} has no query"
        for target in panel["targets"]:
            assert target["datasource"] == expected, panel["title"]
            assert target["url"].startswith("/v1/fleets/${fleet}"), "relative to the data source's URL, per fleet"


@pytest.mark.parametrize("path", API_DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_is_well_formed_for_grafana(path: Path) -> None:
    dashboard = json.loads(path.read_text())
    assert dashboard["uid"].startswith("fleetflow-") and len(dashboard["uid"]) <= 40
    found = infinity.panels(dashboard)
    assert len({p["id"] for p in found}) == len(found), "panel ids must be unique"
    assert len({p["title"] for p in found}) == len(found), "panel titles must be unique"
    for panel in found:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, f"{panel['title']} overflows the 24-column grid"
        assert panel.get("description"), f"{panel['title']} has no description"


def test_the_chart_ships_them_only_when_enabled() -> None:
    def names(values: chart.Obj) -> set[str]:
        return {o["metadata"]["name"] for o in chart.objects(values) if o["kind"] == "ConfigMap"}

    metrics_only = names({})
    assert "ff-fleetflow-dashboard-device-data" not in metrics_only
    enabled = {"dashboards": {"deviceData": {"enabled": True}, "namespace": "monitoring"}}
    maps = {o["metadata"]["name"]: o for o in chart.objects(enabled) if o["kind"] == "ConfigMap"}
    assert set(maps) == metrics_only | {"ff-fleetflow-dashboard-device-data"}
    device_data = maps["ff-fleetflow-dashboard-device-data"]
    assert device_data["metadata"]["namespace"] == "monitoring"
    assert device_data["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(device_data["data"]["device-data.json"]) == json.loads(API_DASHBOARDS[0].read_text())
    assert not names({"dashboards": {"enabled": False, "deviceData": {"enabled": True}}})
    assert not chart.problems(chart.lint(enabled))
