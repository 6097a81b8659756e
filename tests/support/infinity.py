"""What Grafana and its Infinity data source plugin (yesoreyeram-infinity-datasource) make of a dashboard's
targets, as far as the chart's device-data dashboard uses them, so a test can send each panel's request to a
running application API and read the answer into the rows and columns the panel would show.

The subset: template variables as `${name}` or `$name` (Grafana's `glob` format, which leaves a single value as it
is) in a target's `url` and `url_options.params` values, the only places Infinity interpolates them for a JSON
query; `${__from}` and `${__to}` as epoch milliseconds; the data source's base URL prefixed to the target's `url`
and each param added to the query string (Infinity's GetQueryURL); a dotted `root_selector` (an object it selects
is one row) and dotted column selectors, which JSONata, gjson and lodash (the backend and frontend parsers) all
read alike. Anything else a target uses is refused, so the dashboard cannot drift outside what is checked."""

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

DATASOURCE_TYPE = "yesoreyeram-infinity-datasource"
_VARIABLE = re.compile(r"\$\{([^}]*)\}|\$(\w+)")
_GRAFANA_TIME = re.compile(r"^now(?:-([0-9]+)([smhdw]))?$")
_UNIT_MS = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
COLUMN_TYPES = ("string", "number", "timestamp_epoch")


class PanelError(AssertionError):
    """A panel would show an error or nothing: the message names the panel and what is wrong."""


@dataclass(frozen=True)
class Request:
    path: str  # the target's url after interpolation, appended to the data source's base URL
    params: list[tuple[str, str]]


def grafana_time(text: str, now_ms: int) -> int:
    """Epoch ms of a dashboard time such as `now` or `now-6h`."""
    match = _GRAFANA_TIME.match(text)
    if match is None:
        raise PanelError(f"dashboard time {text!r} is not one this check reads: use now or now-<n><s|m|h|d|w>")
    count, unit = match.groups()
    return now_ms - (int(count) * _UNIT_MS[unit] if count else 0)


def interpolate(text: str, variables: Mapping[str, str]) -> str:
    """`text` with each template variable replaced by its value; an unknown one, or a format or field suffix
    (`${name:csv}`, `${name.text}`), is an error rather than a text Grafana would send unreplaced."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1) if match.group(1) is not None else match.group(2)
        if name not in variables:
            raise PanelError(f"{text!r} uses ${{{name}}}, which is not a variable here; known: {sorted(variables)}")
        return variables[name]

    return _VARIABLE.sub(value, text)


def request(target: Mapping[str, Any], variables: Mapping[str, str]) -> Request:
    """The GET the Infinity data source sends for a JSON-over-URL target."""
    kind = (target.get("type"), target.get("source"), target.get("parser"))
    if kind != ("json", "url", "backend"):
        raise PanelError(f"target {target.get('refId')!r} is (type, source, parser) {kind}; this check reads "
                         "('json', 'url', 'backend')")  # fmt: skip
    options = target.get("url_options", {})
    if options.get("method") != "GET" or options.get("headers") or options.get("data"):
        raise PanelError(f"target {target.get('refId')!r}: url_options {options} send more than a plain GET")
    params = [(p["key"], interpolate(p["value"], variables)) for p in options.get("params", [])]
    return Request(interpolate(target["url"], variables), params)


def select(document: Any, selector: str) -> Any:
    """The value at a dotted path (`devices`, `latest.metrics`); the whole document for an empty selector."""
    value = document
    for name in selector.split(".") if selector else []:
        if not isinstance(value, dict) or name not in value:
            raise KeyError(selector)
        value = value[name]
    return value


def _cell(value: Any, column: Mapping[str, Any]) -> Any:
    kind = column["type"]
    if kind == "string":  # Infinity shows any other JSON value (object, list, true, 1.5) as its JSON text
        return value if isinstance(value, str) else json.dumps(value)
    if kind == "timestamp_epoch" and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind == "number" and (value is None or (isinstance(value, int | float) and not isinstance(value, bool))):
        return value
    raise PanelError(f"column {column['text']!r} ({column['selector']}) is {kind}, but the API answered {value!r}")


def rows(document: Any, target: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The table the target makes of the API's answer: one row per item its root selector selects (an object is
    one row), one cell per column, named by the column's text."""
    try:
        selected = select(document, target.get("root_selector", ""))
    except KeyError:
        raise PanelError(f"root selector {target['root_selector']!r} selects nothing in the answer "
                         f"{json.dumps(document)[:300]}") from None  # fmt: skip
    items = [selected] if isinstance(selected, dict) else selected
    if not isinstance(items, list):
        raise PanelError(f"root selector {target.get('root_selector')!r} selects {selected!r}, not rows")
    columns = target.get("columns", [])
    if not columns:
        raise PanelError(f"target {target.get('refId')!r} names no columns, so nothing holds its shape")
    table = []
    for item in items:
        row = {}
        for column in columns:
            if column["type"] not in COLUMN_TYPES:
                raise PanelError(f"column {column['text']!r} has type {column['type']!r}; checked: {COLUMN_TYPES}")
            try:
                row[column["text"]] = _cell(select(item, column["selector"]), column)
            except KeyError:
                raise PanelError(f"column {column['text']!r}: {column['selector']!r} is not in the item "
                                 f"{json.dumps(item)[:300]}") from None  # fmt: skip
        table.append(row)
    return table


def panels(dashboard: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every panel, those inside rows included."""
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found
