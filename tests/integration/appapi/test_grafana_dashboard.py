"""The chart's device-data dashboard against a running application API: each variable and each panel's request
as Grafana's Infinity data source sends it (the data source's read key as bearer token), read into the rows and
columns the panel shows. A panel that would show an error, nothing, or a column the API does not answer fails."""

import copy
import json
import time
from typing import Any

import aiohttp

from tests.integration.appapi.conftest import DEVICES, FLEET, PIPELINE, STEP, RunningApi
from tests.packaging.chart import CHART
from tests.support import infinity

DASHBOARD = CHART / "dashboards" / "api" / "device-data.json"
# What a user types into the dashboard's text box variables for the store the fixture fills.
TEXTBOXES = {"fleet": FLEET, "pipeline": PIPELINE}


async def answer(session: aiohttp.ClientSession, api: RunningApi, target: dict[str, Any],
                 variables: dict[str, str], where: str) -> list[dict[str, Any]]:  # fmt: skip
    """The rows `target` gets from the API, as the panel or variable `where` would show them."""
    sent = infinity.request(target, variables)
    headers = {"Authorization": f"Bearer {api.keys['read']}"}
    async with session.get(api.url + sent.path, params=sent.params, headers=headers) as response:
        body = await response.json(content_type=None)
        if response.status != 200:
            raise infinity.PanelError(f"{where}: GET {sent.path} {sent.params} answered {response.status} {body}")
    try:
        table = infinity.rows(body, target)
    except infinity.PanelError as exc:
        raise infinity.PanelError(f"{where}: {exc}") from None
    if not table:
        raise infinity.PanelError(f"{where}: GET {sent.path} {sent.params} answered no rows: {body}")
    return table


async def resolve_variables(session: aiohttp.ClientSession, api: RunningApi, dashboard: dict[str, Any],
                            now_ms: int) -> tuple[dict[str, str], dict[str, list[str]]]:  # fmt: skip
    """Each variable's value as Grafana sets it on opening the dashboard (a query variable: its first option),
    in dashboard order, and each query variable's options."""
    time_range = dashboard["time"]
    values = {"__from": str(infinity.grafana_time(time_range["from"], now_ms)),
              "__to": str(infinity.grafana_time(time_range["to"], now_ms))}  # fmt: skip
    options: dict[str, list[str]] = {}
    for variable in dashboard["templating"]["list"]:
        name, kind = variable["name"], variable["type"]
        if kind == "datasource":  # the data source is the API itself, with its key
            assert variable["query"] == infinity.DATASOURCE_TYPE
        elif kind == "textbox":
            values[name] = TEXTBOXES[name]
        elif kind == "query":
            query = variable["query"]
            assert query["queryType"] == "infinity", f"variable {name}: {query}"
            # Infinity takes one column as both text and value (two would be text, value): this check reads one.
            assert len(query["infinityQuery"]["columns"]) == 1, f"variable {name}: {query}"
            table = await answer(session, api, query["infinityQuery"], values, f"variable {name}")
            options[name] = sorted(str(next(iter(row.values()))) for row in table)  # sort 1: alphabetical
            values[name] = options[name][0]
        else:
            raise AssertionError(f"variable {name} is of type {kind!r}, which this check does not read")
    return values, options


async def evaluate(api: RunningApi, dashboard: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Each panel's rows, by panel title."""
    async with aiohttp.ClientSession() as session:
        variables, options = await resolve_variables(session, api, dashboard, int(time.time() * 1000))
        assert options["device"] == DEVICES, "the device variable lists the fleet's registry"
        shown = {}
        for panel in infinity.panels(dashboard):
            for target in panel.get("targets", []):
                where = f"panel {panel['title']!r} target {target['refId']}"
                shown[f"{panel['title']}/{target['refId']}"] = await answer(session, api, target, variables, where)
        return shown


async def test_every_panel_of_the_device_data_dashboard_gets_its_columns_from_the_api(api: RunningApi) -> None:
    dashboard = json.loads(DASHBOARD.read_text())

    shown = await evaluate(api, dashboard)

    assert len(shown) == sum(len(p.get("targets", [])) for p in infinity.panels(dashboard)) >= 7
    (counts,) = shown["Devices/A"]
    assert (counts["total"], counts["online"], counts["offline"]) == (len(DEVICES), len(DEVICES) - 1, 1)
    assert [row["device"] for row in shown["Devices and their latest values/A"]] == DEVICES
    readings = shown["Readings of ${device}/A"]  # the first device: one reading, temp 20.0
    assert [json.loads(row["metrics"]) for row in readings] == [{"temp": 20.0, "rh": 40.0}]
    windows = shown["Window aggregates of ${device}/A"]
    assert {(row["step"], row["metric"]) for row in windows} == {(STEP, "temp")}
    assert [row["device"] for row in shown["Alerts firing now/A"]] == ["d-001"]
    assert len(shown["Alert history/A"]) == 3


async def test_a_column_the_api_does_not_answer_fails_the_check(api: RunningApi) -> None:
    """Guards the check itself: a dashboard that drifted from the API's shape must not pass."""
    dashboard = json.loads(DASHBOARD.read_text())
    drifted = copy.deepcopy(dashboard)
    readings = next(p for p in drifted["panels"] if p["title"].startswith("Readings"))
    readings["targets"][0]["columns"][0]["selector"] = "timestamp"

    try:
        await evaluate(api, drifted)
    except infinity.PanelError as exc:
        assert "'timestamp' is not in the item" in str(exc) and "Readings" in str(exc)
    else:
        raise AssertionError("a column the API does not answer went unnoticed")
