"""The OpenAPI 3.1 document served at /openapi.json, built from ROUTES so a route cannot go undocumented.

Parameters and response schemas are written here once; a test checks every route against the running
service: the documented paths are the served ones, each documented query parameter is honoured (a bad value
is a 400 naming it), and answers validate against the schemas."""

from typing import Any

from fleetflow.appapi import params
from fleetflow.appapi.keys import SCOPES
from fleetflow.appapi.resources import ALERT_STATES, ROUTES, Route
from fleetflow.runtime.commands import COMMAND_NAME_RULE, MAX_PARAMS_BYTES, MAX_PARAMS_DEPTH, MAX_TTL_MS, STATES

_STR = {"type": "string"}
_INT = {"type": "integer"}
_NUM = {"type": "number"}
_MS = {"type": "integer", "description": "epoch milliseconds"}
_CURSOR = {"type": ["string", "null"], "description": "pass as `cursor` for the next page; null: no more"}
_METRICS = {"type": "object", "additionalProperties": _NUM}


def _param(name: str, where: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "in": where,
        "required": where == "path",
        "description": description,
        "schema": schema or _STR,
    }


PARAMETERS = {
    "fleet": _param("fleet", "path", "the fleet's name"),
    "device": _param("device", "path", "the device id"),
    "pipeline": _param("pipeline", "path", "the pipeline's name"),
    "pipelineQuery": _param("pipeline", "query", "whose store to read (default: the fleet's first pipeline by name)"),
    "from": _param("from", "query", f"start of the range, inclusive: {params.TIME_RULE}"),
    "to": _param("to", "query", f"end of the range, exclusive (default: now): {params.TIME_RULE}"),
    "limit": _param(
        "limit",
        "query",
        f"items per page, 1 to {params.MAX_LIMIT}",
        {"type": "integer", "minimum": 1, "maximum": params.MAX_LIMIT},
    ),
    "readingsLimit": _param(
        "limit",
        "query",
        f"readings per page, 1 to {params.MAX_READINGS} (default 1000)",
        {"type": "integer", "minimum": 1, "maximum": params.MAX_READINGS},
    ),
    "cursor": _param("cursor", "query", "the nextCursor of the previous page"),
    "metrics": _param(
        "metrics",
        "query",
        "comma-separated metric names to return (default: all); readings with none of them are left out",
    ),
    "step": _param("step", "query", "only the windows of this window step"),
    "group": _param("group", "query", params.GROUP_RULE),
    "deviceQuery": _param("device", "query", "only this device's (for aggregates: group=device=<id>)"),
    "state": _param("state", "query", "only transitions to this state", {"enum": list(ALERT_STATES)}),
    "command": _param("command", "path", "the command's id (a '/' in it sent as %2F)"),
    "commandState": _param("state", "query", "only commands now in this state", {"enum": list(STATES)}),
    "commandDevice": _param("device", "query", "only the commands to this device"),
    "kinds": _param(
        "kinds", "query", "comma-separated event kinds: alerts, commands, aggregates, readings (default: all)"
    ),
    "lastEventId": _param(
        "Last-Event-ID",
        "header",
        "the id of the last event received: continue right after it "
        "(also as the query parameter lastEventId, for clients that cannot set headers)",
    ),
    "eventDevice": _param("device", "query", "only this device's events (aggregates: its group device=<id>)"),
}

_LATEST = {
    "type": "object",
    "required": ["seq", "ts", "metrics"],
    "properties": {"seq": _INT, "ts": _MS, "metrics": _METRICS},
}
_TRANSITION = {
    "type": "object",
    "required": ["state", "atMs", "detail"],
    "properties": {"state": {"enum": list(STATES)}, "atMs": _MS, "detail": _STR},
}
SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error", "detail"],
        "properties": {
            "error": {**_STR, "description": "a short machine-readable reason"},
            "detail": {**_STR, "description": "what is wrong, naming the value, and what is accepted"},
        },
    },
    "Reading": _LATEST,
    "Device": {
        "type": "object",
        "required": ["device", "labels", "online", "lastSeenMs", "latest"],
        "properties": {
            "device": _STR,
            "labels": {"type": "object", "additionalProperties": _STR},
            "online": {"type": "boolean", "description": "its latest reading arrived within the offline threshold"},
            "lastSeenMs": {**_MS, "description": "when its latest reading arrived"},
            "latest": _LATEST,
        },
    },
    "Aggregate": {
        "type": "object",
        "required": [
            "pipeline",
            "step",
            "group",
            "metric",
            "windowStartMs",
            "windowEndMs",
            "count",
            "min",
            "max",
            "mean",
            "sum",
            "last",
            "percentiles",
        ],
        "properties": {
            "pipeline": _STR,
            "step": _STR,
            "group": _STR,
            "metric": _STR,
            "windowStartMs": _MS,
            "windowEndMs": _MS,
            "count": _INT,
            "min": _NUM,
            "max": _NUM,
            "mean": _NUM,
            "sum": _NUM,
            "last": _NUM,
            "percentiles": _METRICS,
        },
    },
    "ApiKey": {
        "type": "object",
        "required": ["id", "fleet", "scope", "name", "createdMs", "revokedMs"],
        "properties": {
            "id": _STR,
            "fleet": _STR,
            "scope": {"enum": list(SCOPES)},
            "name": _STR,
            "createdMs": _MS,
            "revokedMs": {"type": ["integer", "null"]},
        },
    },
    "Command": {
        "type": "object",
        "required": [
            "id",
            "fleet",
            "device",
            "name",
            "params",
            "source",
            "createdMs",
            "ttlMs",
            "expiresMs",
            "state",
            "history",
        ],
        "properties": {
            "id": _STR,
            "fleet": _STR,
            "device": _STR,
            "name": _STR,
            "params": {"type": "object"},
            "source": {
                **_STR,
                "description": "who sent it: api-key/<key id>, api (the gateway's application token), "
                "cli, or pipeline/<name>/<rule>",
            },
            "createdMs": _MS,
            "ttlMs": _INT,
            "expiresMs": _MS,
            "state": {"enum": list(STATES)},
            "history": {
                "type": "array",
                "items": _TRANSITION,
                "description": "every state it went through, oldest first",
            },
        },
    },
    "SendCommand": {
        "type": "object",
        "required": ["name"],
        "additionalProperties": False,
        "properties": {
            "name": {**_STR, "description": COMMAND_NAME_RULE},
            "params": {
                "type": "object",
                "description": f"any JSON values, at most {MAX_PARAMS_DEPTH} levels deep and "
                f"{MAX_PARAMS_BYTES} bytes as JSON",
            },
            "ttlSeconds": {
                "type": "number",
                "minimum": 1,
                "maximum": MAX_TTL_MS // 1000,
                "default": 3600,
                "description": "how long the command waits for its device before it expires",
            },
            "id": {
                **_STR,
                "description": "your id for it (1 to 100 letters, digits, '_', '=' or '-'): sending the "
                "same id again is a duplicate that changes nothing; default: a new one",
            },
        },
    },
    "Alert": {
        "type": "object",
        "required": ["pipeline", "rule", "device", "state", "severity", "tsMs", "values", "message"],
        "properties": {
            "pipeline": _STR,
            "rule": _STR,
            "device": _STR,
            "state": {"enum": list(ALERT_STATES)},
            "severity": _STR,
            "tsMs": _MS,
            "values": _METRICS,
            "message": _STR,
        },
    },
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _list_of(key: str, item: str, *extra: str) -> dict[str, Any]:
    props: dict[str, Any] = {"fleet": _STR, "pipeline": _STR, key: {"type": "array", "items": _ref(item)}}
    props.update({name: _MS if name.endswith("Ms") else _STR for name in extra})
    required = ["fleet", "pipeline", key, *extra]
    if "nextCursor" in extra:
        props["nextCursor"] = _CURSOR
    return {"type": "object", "required": required, "properties": props}


SUMMARY = {
    "type": "object",
    "required": ["fleet", "pipelines", "devices", "lastSeenMs", "openAlerts"],
    "properties": {
        "fleet": _STR,
        "pipelines": {"type": "array", "items": _STR},
        "devices": {
            "type": "object",
            "required": ["total", "online", "offline"],
            "properties": {"total": _INT, "online": _INT, "offline": _INT},
        },
        "lastSeenMs": {"type": ["integer", "null"]},
        "openAlerts": {"type": "object", "additionalProperties": _INT, "description": "firing alerts per pipeline"},
    },
}

EVENT_STREAM = {
    "type": "string",
    "description": "text/event-stream: `id` (pass the last one as Last-Event-ID to resume), `event` (alert, "
    "command, aggregate, readings, or overflow: reconnect), `data` (JSON: an Alert, a Command, an Aggregate, or "
    "{device, readings})",
}

# Per operation: its summary, its parameters (names in PARAMETERS) and the schema of its 200 answer.
OPERATIONS: dict[str, tuple[str, list[str], dict[str, Any]]] = {
    "openapi": ("This document", [], {"type": "object"}),
    "fleetSummary": ("Devices online and offline, pipelines and their open alerts", ["fleet"], SUMMARY),
    "listDevices": (
        "The registry: every device seen, with labels, online state and latest values (no scan of readings)",
        ["fleet", "pipelineQuery", "limit", "cursor"],
        _list_of("devices", "Device", "nextCursor"),
    ),
    "getDevice": (
        "One device with its latest values",
        ["fleet", "device", "pipelineQuery"],
        {"allOf": [_ref("Device"), {"type": "object", "required": ["fleet", "pipeline"]}]},
    ),
    "listReadings": (
        "A device's readings in a time range, newest first (default: the last hour)",
        ["fleet", "device", "pipelineQuery", "from", "to", "metrics", "readingsLimit", "cursor"],
        {
            **_list_of("readings", "Reading", "fromMs", "toMs", "nextCursor"),
            "required": ["fleet", "device", "pipeline", "readings", "fromMs", "toMs", "nextCursor"],
        },
    ),
    "listAggregates": (
        "Closed windows of the pipeline's window steps by window start (default: the last hour)",
        ["fleet", "pipeline", "step", "group", "deviceQuery", "from", "to", "limit", "cursor"],
        _list_of("aggregates", "Aggregate", "fromMs", "toMs", "nextCursor"),
    ),
    "listAlerts": (
        "Alert transitions (the history), oldest first (default: the last 24 hours)",
        ["fleet", "pipeline", "state", "deviceQuery", "from", "to", "limit", "cursor"],
        _list_of("alerts", "Alert", "fromMs", "toMs", "nextCursor"),
    ),
    "listOpenAlerts": (
        "Alerts firing now: each rule and device whose last transition is firing",
        ["fleet", "pipeline", "from", "to"],
        _list_of("alerts", "Alert"),
    ),
    "sendCommand": (
        "Queue a command for the device (202); it is delivered when the device is, or next gets, connected",
        ["fleet", "device"],
        _ref("Command"),
    ),
    "listCommands": (
        "The fleet's commands with their state history, oldest first, while NATS keeps their state",
        ["fleet", "commandDevice", "commandState", "limit", "cursor"],
        {
            "type": "object",
            "required": ["fleet", "commands", "nextCursor"],
            "properties": {
                "fleet": _STR,
                "commands": {"type": "array", "items": _ref("Command")},
                "nextCursor": _CURSOR,
            },
        },
    ),
    "listDeviceCommands": (
        "The device's commands from the store's command log, newest first, each in its latest state (default: the "
        "last 7 days); kept as long as the store keeps data",
        ["fleet", "device", "pipelineQuery", "from", "to", "limit", "cursor"],
        {
            "type": "object",
            "required": ["fleet", "device", "pipeline", "fromMs", "toMs", "commands", "nextCursor"],
            "properties": {
                "fleet": _STR,
                "device": _STR,
                "pipeline": _STR,
                "fromMs": _MS,
                "toMs": _MS,
                "commands": {"type": "array", "items": _ref("Command")},
                "nextCursor": _CURSOR,
            },
        },
    ),
    "getCommand": ("One command with its state history", ["fleet", "command"], _ref("Command")),
    "fleetEvents": (
        "Live updates as Server-Sent Events (alert, command, aggregate, readings); resumable with Last-Event-ID",
        ["fleet", "kinds", "eventDevice", "lastEventId"],
        EVENT_STREAM,
    ),
    "deviceEvents": (
        "One device's live updates as Server-Sent Events; resumable with Last-Event-ID",
        ["fleet", "device", "kinds", "lastEventId"],
        EVENT_STREAM,
    ),
    "listApiKeys": (
        "The fleet's API keys (never their secrets): id, scope, name, created and revoked times",
        ["fleet"],
        {
            "type": "object",
            "required": ["fleet", "apiKeys"],
            "properties": {"fleet": _STR, "apiKeys": {"type": "array", "items": _ref("ApiKey")}},
        },
    ),
}

_ERRORS = {
    "400": "a parameter is not valid; the detail names it and what is accepted",
    "401": "no API key, or one that is unknown, wrong or revoked",
    "403": "the API key's scope does not include the one this needs",
    "404": "no such fleet, device, pipeline or command",
    "503": "the store (or, for commands, the fleet's NATS) cannot answer now; retry",
}


# Operations that take a JSON body, and what they answer with instead of 200.
REQUEST_BODIES = {"sendCommand": "SendCommand"}
SUCCESS = {"sendCommand": ("202", "Accepted: queued for the device")}


def _operation(route: Route) -> dict[str, Any]:
    summary, names, schema = OPERATIONS[route.name]
    status, text = SUCCESS.get(route.name, ("200", "OK"))
    media = "text/event-stream" if schema is EVENT_STREAM else "application/json"
    responses: dict[str, Any] = {status: {"description": text, "content": {media: {"schema": schema}}}}
    for status, text in _ERRORS.items():
        if route.scope is not None:
            responses[status] = {"description": text, "content": {"application/json": {"schema": _ref("Error")}}}
    operation: dict[str, Any] = {
        "operationId": route.name,
        "summary": summary,
        "responses": responses,
        "parameters": [{"$ref": f"#/components/parameters/{n}"} for n in names],
    }
    if route.name in REQUEST_BODIES:
        body = {"application/json": {"schema": _ref(REQUEST_BODIES[route.name])}}
        operation["requestBody"] = {"required": True, "content": body}
    if route.scope is not None:
        operation["security"] = [{"apiKey": [route.scope]}]
        operation["description"] = f"Needs an API key with scope `{route.scope}` or one that includes it."
    else:
        operation["security"] = []
    return operation


def document(fleet: str) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route)
    return {
        "openapi": "3.1.0",
        "info": {"title": f"fleetflow application API of fleet {fleet}", "version": "1"},
        "paths": paths,
        "security": [{"apiKey": []}],
        "components": {
            "parameters": PARAMETERS,
            "schemas": SCHEMAS,
            "securitySchemes": {
                "apiKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": f"`Authorization: Bearer <key>`; scopes {', '.join(SCOPES)}, each including "
                    "the ones before it; keys come from `fleetflow api-key create`",
                }
            },
        },
    }
