"""The resources of the application API: a fleet's devices with their latest values, readings, aggregates,
alerts and summary, read from the pipelines' stores. Every route is in ROUTES, which the OpenAPI document
(openapi.py) describes and a test holds the two together."""

import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec
from aiohttp import web

from fleetflow.api import DeviceFleet, Pipeline
from fleetflow.api.identifiers import check_device_id
from fleetflow.appapi import params, views
from fleetflow.appapi.keys import ApiKeys
from fleetflow.runtime.codec import AlertEvent
from fleetflow.runtime.httpserver import HttpRefusal
from fleetflow.writer.stores import (
    AggregateQuery,
    AlertQuery,
    CommandQuery,
    DeviceQuery,
    Page,
    ReadingQuery,
    StoredReading,
    StoreUnavailable,
    TelemetryStore,
)

T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ALERT_STATES = ("firing", "resolved")
OPEN_ALERTS_PAGE = 5000
_encode = msgspec.json.Encoder().encode


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    name: str  # the OpenAPI operationId and the metrics label
    scope: str | None  # the API key scope it needs; None: open to anyone


ROUTES = (
    Route("GET", "/openapi.json", "openapi", None),
    Route("GET", "/v1/fleets/{fleet}", "fleetSummary", "read"),
    Route("GET", "/v1/fleets/{fleet}/devices", "listDevices", "read"),
    Route("GET", "/v1/fleets/{fleet}/devices/{device}", "getDevice", "read"),
    Route("GET", "/v1/fleets/{fleet}/devices/{device}/readings", "listReadings", "read"),
    Route("GET", "/v1/fleets/{fleet}/pipelines/{pipeline}/aggregates", "listAggregates", "read"),
    Route("GET", "/v1/fleets/{fleet}/pipelines/{pipeline}/alerts", "listAlerts", "read"),
    Route("GET", "/v1/fleets/{fleet}/pipelines/{pipeline}/alerts/open", "listOpenAlerts", "read"),
    Route("GET", "/v1/fleets/{fleet}/api-keys", "listApiKeys", "admin"),
    Route("POST", "/v1/fleets/{fleet}/devices/{device}/commands", "sendCommand", "command"),
    Route("GET", "/v1/fleets/{fleet}/commands", "listCommands", "read"),
    Route("GET", "/v1/fleets/{fleet}/devices/{device}/commands", "listDeviceCommands", "read"),
    Route("GET", "/v1/fleets/{fleet}/commands/{command}", "getCommand", "read"),
    Route("GET", "/v1/fleets/{fleet}/events", "fleetEvents", "read"),
    Route("GET", "/v1/fleets/{fleet}/devices/{device}/events", "deviceEvents", "read"),
)
# How the router matches a path parameter where it is not one plain segment: command ids may hold '/' (the
# processor's are "<pipeline>/<step>/<device>/<target>/<ts>"), which a client sends as %2F.
PATH_PATTERNS = {"{command}": "{command:.+}"}


def router_path(route: Route) -> str:
    path = route.path
    for plain, pattern in PATH_PATTERNS.items():
        path = path.replace(plain, pattern)
    return path


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=_encode(body), status=status, content_type="application/json")


class FleetResources:
    """The read resources of one fleet. `stores` holds each pipeline's opened store."""

    def __init__(self, fleet: DeviceFleet, pipelines: Mapping[str, Pipeline], stores: Mapping[str, TelemetryStore],
                 keys: ApiKeys, offline_after_s: float, clock: Callable[[], float] = time.time):  # fmt: skip
        self.fleet, self.pipelines, self.stores, self.keys = fleet, dict(pipelines), dict(stores), keys
        self.offline_after_ms = int(offline_after_s * 1000)
        self.clock = clock
        # Devices and readings come from one pipeline's store; by default the first by name, so it is stable.
        self.default_pipeline = min(self.pipelines) if self.pipelines else None

    def handlers(self) -> dict[str, Handler]:
        return {
            "fleetSummary": self.summary,
            "listDevices": self.devices,
            "getDevice": self.device,
            "listReadings": self.readings,
            "listAggregates": self.aggregates,
            "listAlerts": self.alerts,
            "listOpenAlerts": self.open_alerts,
            "listApiKeys": self.api_keys,
            "listDeviceCommands": self.device_commands,
        }

    # Resources

    async def summary(self, request: web.Request) -> web.Response:
        self._fleet(request)
        now = self._now()
        total = online = 0
        last_seen: int | None = None
        if self.default_pipeline is not None:
            async for item in self._all_devices(self.default_pipeline):
                total += 1
                online += self._online(item, now)
                last_seen = max(last_seen or 0, item.stored_ms)
        open_alerts = {name: len(await self._open_alerts(name, 0, now + 1)) for name in sorted(self.pipelines)}
        return json_response({
            "fleet": self.fleet.name,
            "pipelines": sorted(self.pipelines),
            "devices": {"total": total, "online": online, "offline": total - online},
            "lastSeenMs": last_seen,
            "openAlerts": open_alerts,
        })  # fmt: skip

    async def devices(self, request: web.Request) -> web.Response:
        self._fleet(request)
        name, store = self._pipeline_store(request.query.get("pipeline"), "pipeline")
        query = DeviceQuery(self.fleet.name, params.limit(request.query, 100), request.query.get("cursor"))
        page = await store_answer(store.latest_page(query), query.page_token)
        now = self._now()
        items = [views.device(item, self.fleet.spec.devices.labels_of(item.device), self._online(item, now))
                 for item in page.items]  # fmt: skip
        return json_response({"fleet": self.fleet.name, "pipeline": name, "devices": items,
                              "nextCursor": page.next_page_token})  # fmt: skip

    async def device(self, request: web.Request) -> web.Response:
        self._fleet(request)
        name, store = self._pipeline_store(request.query.get("pipeline"), "pipeline")
        latest = await self._known_device(store, request.match_info["device"])
        labels = self.fleet.spec.devices.labels_of(latest.device)
        return json_response({"fleet": self.fleet.name, "pipeline": name,
                              **views.device(latest, labels, self._online(latest, self._now()))})  # fmt: skip

    async def readings(self, request: web.Request) -> web.Response:
        self._fleet(request)
        q = request.query
        name, store = self._pipeline_store(q.get("pipeline"), "pipeline")
        since, until = params.time_range(q, "-1h", self.clock)
        keep, limit = params.metrics(q), params.limit(q, 1000, params.MAX_READINGS)
        device = (await self._known_device(store, request.match_info["device"])).device
        query = ReadingQuery(self.fleet.name, device, since, until, limit, q.get("cursor"))
        page = await store_answer(store.readings(query), query.page_token)
        items = [view for item in page.items if (view := views.reading(item, keep)) is not None]
        return json_response({"fleet": self.fleet.name, "device": device, "pipeline": name, "fromMs": since,
                              "toMs": until, "readings": items, "nextCursor": page.next_page_token})  # fmt: skip

    async def aggregates(self, request: web.Request) -> web.Response:
        self._fleet(request)
        q = request.query
        name, store = self._pipeline_store(request.match_info["pipeline"], None)
        since, until = params.time_range(q, "-1h", self.clock)
        step = params.choice(q, "step", self._window_steps(name))
        device = params.identifier(q, "device", check_device_id)
        group = params.group(q)
        if device is not None and group is not None:
            raise HttpRefusal(400, "invalid_parameter", f"group={group!r} and device={device!r} were both given: "
                              "device=<id> is short for group=device=<id>; give one")  # fmt: skip
        group = f"device={device}" if device is not None else group
        query = AggregateQuery(self.fleet.name, name, group, since, until, params.limit(q, 500), q.get("cursor"), step)
        page = await store_answer(store.aggregate_page(query), query.page_token)
        return json_response({"fleet": self.fleet.name, "pipeline": name, "fromMs": since, "toMs": until,
                              "aggregates": [views.aggregate(a) for a in page.items],
                              "nextCursor": page.next_page_token})  # fmt: skip

    async def alerts(self, request: web.Request) -> web.Response:
        """Alert transitions (the history), oldest first; `state` keeps only firing or resolved ones."""
        self._fleet(request)
        q = request.query
        name, store = self._pipeline_store(request.match_info["pipeline"], None)
        since, until = params.time_range(q, "-24h", self.clock)
        state = params.choice(q, "state", ALERT_STATES)
        device = params.identifier(q, "device", check_device_id)
        query = AlertQuery(self.fleet.name, name, device, since, until, params.limit(q, 500), q.get("cursor"))
        page = await store_answer(store.alert_page(query), query.page_token)
        items = [views.alert(e) for e in page.items if state is None or e.state == state]
        return json_response({"fleet": self.fleet.name, "pipeline": name, "fromMs": since, "toMs": until,
                              "alerts": items, "nextCursor": page.next_page_token})  # fmt: skip

    async def open_alerts(self, request: web.Request) -> web.Response:
        """Alerts firing now: each (rule, device) whose last transition in the store is `firing`."""
        self._fleet(request)
        name, _ = self._pipeline_store(request.match_info["pipeline"], None)
        since, until = params.time_range(request.query, "0", self.clock)
        events = await self._open_alerts(name, since, until)
        return json_response({"fleet": self.fleet.name, "pipeline": name, "alerts": [views.alert(e) for e in events]})

    async def device_commands(self, request: web.Request) -> web.Response:
        """The device's commands from the store's command log (kept as long as the sink keeps data, where the
        state bucket forgets them with the command stream's retention), newest first."""
        self._fleet(request)
        q = request.query
        name, store = self._pipeline_store(q.get("pipeline"), "pipeline")
        since, until = params.time_range(q, "-7d", self.clock)
        device = params.path_identifier(request.match_info["device"], "device", check_device_id)
        query = CommandQuery(self.fleet.name, device, since, until, params.limit(q, 100), q.get("cursor"))
        page = await store_answer(store.command_page(query), query.page_token)
        return json_response({"fleet": self.fleet.name, "device": device, "pipeline": name, "fromMs": since,
                              "toMs": until, "commands": [r.to_json() for r in page.items],
                              "nextCursor": page.next_page_token})  # fmt: skip

    async def api_keys(self, request: web.Request) -> web.Response:
        """The fleet's keys without their hashes: who has access, with which scope, since and until when."""
        self._fleet(request)
        return json_response({"fleet": self.fleet.name, "apiKeys": [k.summary() for k in self.keys.all()]})

    # Helpers

    def _now(self) -> int:
        return int(self.clock() * 1000)

    def _online(self, item: StoredReading, now: int) -> bool:
        return now - item.stored_ms <= self.offline_after_ms

    def _fleet(self, request: web.Request) -> None:
        check_fleet(request, self.fleet.name)

    def _pipeline_store(self, name: str | None, parameter: str | None) -> tuple[str, TelemetryStore]:
        """The pipeline named by a path segment (`parameter` None) or a query parameter, or the default one."""
        chosen = name if name is not None else self.default_pipeline
        if chosen is None:
            raise HttpRefusal(404, "no_pipeline", f"fleet {self.fleet.name!r} has no pipeline, so nothing is stored")
        if chosen not in self.pipelines:
            where = f"{parameter}={chosen!r}" if parameter else f"pipeline {chosen!r}"
            status, reason = (400, "invalid_parameter") if parameter else (404, "unknown_pipeline")
            raise HttpRefusal(status, reason, f"{where} is not a pipeline of fleet {self.fleet.name!r}; known: "
                              f"{', '.join(sorted(self.pipelines))}")  # fmt: skip
        return chosen, self.stores[chosen]

    def _window_steps(self, pipeline: str) -> tuple[str, ...]:
        return tuple(step.name for step in self.pipelines[pipeline].spec.steps if step.window is not None)

    async def _known_device(self, store: TelemetryStore, device: str) -> StoredReading:
        try:
            check_device_id(device)
        except ValueError as exc:
            raise HttpRefusal(400, "invalid_device", f"device {device!r} is not valid: {exc}") from None
        latest = await store_answer(store.latest(self.fleet.name, device))
        if latest is None:
            raise HttpRefusal(404, "unknown_device", f"device {device!r} of fleet {self.fleet.name!r} has no stored "
                              "readings (never seen, or its data expired)")  # fmt: skip
        return latest

    async def _all_devices(self, pipeline: str) -> Any:
        store, token = self.stores[pipeline], None
        while True:
            page = await store_answer(store.latest_page(DeviceQuery(self.fleet.name, 1000, token)))
            for item in page.items:
                yield item
            if page.next_page_token is None:
                return
            token = page.next_page_token

    async def _open_alerts(self, pipeline: str, since: int, until: int) -> list[AlertEvent]:
        store, token = self.stores[pipeline], None
        last: dict[tuple[str, str], AlertEvent] = {}
        while True:
            query = AlertQuery(self.fleet.name, pipeline, None, since, until, OPEN_ALERTS_PAGE, token)
            page: Page[AlertEvent] = await store_answer(store.alert_page(query))
            for event in page.items:  # oldest first: the last one seen is the current state
                last[(event.rule, event.device)] = event
            if page.next_page_token is None:
                break
            token = page.next_page_token
        return [e for e in last.values() if e.state == "firing"]


def check_fleet(request: web.Request, served: str) -> None:
    """404 unless the path's fleet is the one this API serves."""
    fleet = request.match_info["fleet"]
    if fleet != served:
        raise HttpRefusal(404, "unknown_fleet", f"fleet {fleet!r} is not served here; this API serves fleet "
                          f"{served!r}")  # fmt: skip


async def store_answer(call: Awaitable[T], cursor: str | None = None) -> T:
    """A store call: a cursor the store did not issue is a 400 naming it; an outage is a 503 to retry."""
    try:
        return await call
    except ValueError:  # the stores raise it for a page token only
        raise HttpRefusal(400, "invalid_parameter", f"cursor={cursor!r} is not valid: use the nextCursor of the "
                          "previous page of the same request, or omit it to start over") from None  # fmt: skip
    except StoreUnavailable as exc:
        raise HttpRefusal(503, "store_unavailable", f"the store cannot answer now ({exc}); retry",
                          {"Retry-After": "1"}) from None  # fmt: skip


__all__ = ["ROUTES", "FleetResources", "Route", "check_fleet", "json_response", "router_path", "store_answer"]
