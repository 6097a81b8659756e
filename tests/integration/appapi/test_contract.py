"""The OpenAPI document against the running service: every route documented and served, every documented
query parameter honoured (a bad value is a 400 naming it), every answer valid against its schema; and the
401/403/404 of keys, scopes, fleets and pipelines."""

import asyncio
from typing import Any

import aiohttp
import jsonschema
import pytest
from prometheus_client.parser import text_string_to_metric_families
from referencing import Registry, Resource

from fleetflow.appapi import keys
from fleetflow.appapi.resources import ROUTES
from tests.integration.appapi.conftest import BUSY, FLEET, PIPELINE, RunningApi

VALUES = {"fleet": FLEET, "device": BUSY, "pipeline": PIPELINE, "command": "cmd-1"}
# A value each query parameter refuses; `cursor` gets one no store issued.
BAD = {"from": "yesterday", "to": "1e9", "limit": "0", "cursor": "bm90LWEtY3Vyc29y", "metrics": "temp,9lives",
       "pipeline": "nope", "step": "nope", "group": "no-equals-sign", "device": "bad device", "state": "open",
       "kinds": "alerts,nope"}  # fmt: skip


async def document(api: RunningApi) -> dict[str, Any]:
    status, body = await api.get("/openapi.json", key=None)
    assert status == 200
    return dict(body)


def operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(method.upper(), path, op) for path, ops in doc["paths"].items() for method, op in ops.items()]


def parameters(doc: dict[str, Any], op: dict[str, Any]) -> list[dict[str, Any]]:
    return [doc["components"]["parameters"][p["$ref"].rsplit("/", 1)[1]] for p in op["parameters"]]


def concrete(path: str) -> str:
    for name, value in VALUES.items():
        path = path.replace("{" + name + "}", value)
    return path


def success(op: dict[str, Any]) -> str:
    return next(status for status in op["responses"] if status.startswith("2"))


def is_event_stream(op: dict[str, Any]) -> bool:
    return "text/event-stream" in op["responses"][success(op)]["content"]


async def call(api: RunningApi, method: str, path: str, **query: Any) -> tuple[int, Any]:
    """The operation with an admin key; a POST sends a valid command to BUSY; an event stream (valid query) is
    opened, its first id read, and closed (its events: test_events.py)."""
    if method == "POST":
        return await api.post(concrete(path), {"name": "reboot", "params": {"delay": 1}}, key="admin")
    if path.endswith("/events") and not query:
        headers = {"Authorization": f"Bearer {api.keys['admin']}"}
        async with aiohttp.ClientSession() as session, session.get(api.url + concrete(path),
                                                                   headers=headers) as response:  # fmt: skip
            assert response.content_type == "text/event-stream", await response.text()
            first = await asyncio.wait_for(response.content.readline(), 5)
            return response.status, first.decode()
    return await api.get(concrete(path), key="admin", **query)


async def test_the_document_lists_exactly_the_served_routes(api: RunningApi) -> None:
    doc = await document(api)
    documented = {(method, path) for method, path, _ in operations(doc)}
    assert documented == {(r.method, r.path) for r in ROUTES}
    assert doc["openapi"] == "3.1.0"
    await api.post(f"/v1/fleets/{FLEET}/devices/{BUSY}/commands", {"name": "reboot", "id": "cmd-1"})
    for method, path, op in operations(doc):
        in_path = {p["name"] for p in parameters(doc, op) if p["in"] == "path"}
        assert in_path == {part[1:-1] for part in path.split("/") if part.startswith("{")}, path
        # Served: with the right key, never the router's 404 or 405.
        status, body = await call(api, method, path)
        assert str(status) == success(op), (method, path, body)


async def test_every_answer_matches_its_schema(api: RunningApi) -> None:
    doc = await document(api)
    registry = Registry().with_resource("urn:api", Resource.from_contents({**doc, "$schema":
                                        "https://json-schema.org/draft/2020-12/schema"}))  # fmt: skip
    error_schema = {"$ref": "urn:api#/components/schemas/Error"}
    await api.post(f"/v1/fleets/{FLEET}/devices/{BUSY}/commands", {"name": "reboot", "id": "cmd-1"})
    for method, path, op in operations(doc):
        status, body = await call(api, method, path)
        assert str(status) == success(op), body
        if is_event_stream(op):
            assert body.startswith("retry: ")
            continue
        where = f"{_pointer(path)}/{method.lower()}/responses/{status}"
        schema = f"urn:api#/paths/{where}/content/application~1json/schema"
        jsonschema.Draft202012Validator({"$ref": schema}, registry=registry).validate(body)
    status, body = await api.get(f"/v1/fleets/{FLEET}/devices/nobody")
    assert status == 404
    jsonschema.Draft202012Validator(error_schema, registry=registry).validate(body)


def _pointer(path: str) -> str:
    return path.replace("~", "~0").replace("/", "~1")


async def test_every_documented_query_parameter_refuses_a_bad_value_naming_it(api: RunningApi) -> None:
    doc = await document(api)
    checked = 0
    for method, path, op in operations(doc):
        for param in parameters(doc, op):
            if param["in"] != "query":
                continue
            status, body = await call(api, method, path, **{param["name"]: BAD[param["name"]]})
            assert status == 400, (path, param["name"], body)
            assert body["error"] == "invalid_parameter"
            assert body["detail"].startswith(f"{param['name']}={BAD[param['name']]!r}"), body
            checked += 1
    assert checked >= 25


async def test_ranges_and_limits_out_of_bounds(api: RunningApi) -> None:
    path = f"/v1/fleets/{FLEET}/devices/{BUSY}/readings"
    status, body = await api.get(path, **{"from": "-1h", "to": "-2h"})
    assert status == 400 and "is not before" in body["detail"]
    status, body = await api.get(path, limit="100001")
    assert status == 400 and body["detail"].startswith("limit='100001'")
    status, body = await api.get(path, **{"from": "2026-13-01T00:00:00Z"})
    assert status == 400 and body["detail"].startswith("from='2026-13-01T00:00:00Z'")
    status, body = await api.get(path, **{"from": "99999999999999999"})
    assert status == 400 and "year 9999" in body["detail"]


async def test_unknown_fleet_pipeline_and_path_are_404_json(api: RunningApi) -> None:
    status, body = await api.get("/v1/fleets/other/devices")
    assert (status, body["error"]) == (404, "unknown_fleet")
    status, body = await api.get(f"/v1/fleets/{FLEET}/pipelines/nope/alerts")
    assert (status, body["error"]) == (404, "unknown_pipeline")
    assert PIPELINE in body["detail"]
    status, body = await api.get(f"/v1/fleets/{FLEET}/nothing-here")
    assert (status, body["error"]) == (404, "not_found")


@pytest.mark.parametrize(
    "authorization, reason",
    [(None, "unauthenticated"), ("Basic dXNlcjpwYXNz", "unauthenticated"), ("Bearer ffk_000000000000_guess",
     "invalid_key"), ("Bearer not-a-key", "invalid_key")],
)  # fmt: skip
async def test_a_missing_or_wrong_key_is_401(api: RunningApi, authorization: str | None, reason: str) -> None:
    async with aiohttp.ClientSession() as session:
        headers = {"Authorization": authorization} if authorization else {}
        async with session.get(f"{api.url}/v1/fleets/{FLEET}/devices", headers=headers) as response:
            assert response.status == 401
            assert (await response.json())["error"] == reason
            assert response.headers["WWW-Authenticate"].startswith("Bearer")


async def test_a_key_of_another_fleet_is_401(api: RunningApi, tmp_path: Any) -> None:
    _, other = keys.create_key(api.keys_file, "elsewhere", "admin")
    status, body = await api.get(f"/v1/fleets/{FLEET}/devices", key=f"Bearer {other}")
    assert (status, body["error"]) == (401, "invalid_key")


async def test_each_scope_includes_the_ones_before_it(api: RunningApi) -> None:
    for scope in keys.SCOPES:
        status, _ = await api.get(f"/v1/fleets/{FLEET}/devices", key=scope)
        assert status == 200, scope
    for scope in ("read", "command"):
        status, body = await api.get(f"/v1/fleets/{FLEET}/api-keys", key=scope)
        assert (status, body["error"]) == (403, "insufficient_scope")
        assert f"scope {scope!r}" in body["detail"] and "'admin'" in body["detail"]
    status, body = await api.get(f"/v1/fleets/{FLEET}/api-keys", key="admin")
    assert status == 200
    assert sorted(k["scope"] for k in body["apiKeys"]) == sorted(keys.SCOPES)
    assert all("sha256" not in k for k in body["apiKeys"])


async def test_a_revoked_key_stops_working_at_once(api: RunningApi) -> None:
    status, _ = await api.get(f"/v1/fleets/{FLEET}", key="read")
    assert status == 200
    key_id = api.keys["read"].split("_")[1]
    keys.revoke_key(api.keys_file, key_id)

    status, body = await api.get(f"/v1/fleets/{FLEET}", key="read")
    assert (status, body["error"]) == (401, "revoked_key")
    status, _ = await api.get(f"/v1/fleets/{FLEET}", key="command")
    assert status == 200


async def counters(api: RunningApi) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every fleetflow_appapi_* sample on /metrics (the registry is the process's: compare before and after)."""
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{api.ops_port}/metrics") as answer:
        text = await answer.text()
    return {(s.name, frozenset((k, v) for k, v in s.labels.items() if not k.startswith("otel_"))): s.value
            for family in text_string_to_metric_families(text) if family.name.startswith("fleetflow_appapi")
            for s in family.samples}  # fmt: skip


async def test_requests_and_refusals_are_counted_on_metrics(api: RunningApi) -> None:
    before = await counters(api)
    await api.get(f"/v1/fleets/{FLEET}/devices", key=None)
    await api.get(f"/v1/fleets/{FLEET}/devices", limit="0")
    after = await counters(api)

    def added(name: str, **labels: str) -> float:
        """The growth of the series of `name` that carry `labels` (fleet and component are on every series too)."""
        wanted = set(labels.items())

        def total(samples: dict[tuple[str, frozenset[tuple[str, str]]], float]) -> float:
            return sum(v for (n, have), v in samples.items() if n == name and wanted <= have)

        return total(after) - total(before)

    assert added("fleetflow_appapi_refusals_total", reason="unauthenticated") == 1
    assert added("fleetflow_appapi_refusals_total", reason="invalid_parameter") == 1
    assert added("fleetflow_appapi_requests_total", operation="listDevices", status="400") == 1
    assert added("fleetflow_appapi_request_duration_seconds_count", operation="listDevices") == 2
