"""The aiohttp application: ROUTES bound to their handlers, each behind its API key scope, with metrics."""

import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from opentelemetry.metrics import Meter

from fleetflow.appapi import openapi
from fleetflow.appapi.commands import FleetCommands
from fleetflow.appapi.events import FleetEvents
from fleetflow.appapi.keys import API_KEY, ApiKeys
from fleetflow.appapi.resources import ROUTES, FleetResources, Handler, Route, json_response, router_path
from fleetflow.runtime import telemetry
from fleetflow.runtime.httpserver import HttpRefusal, device_app

MAX_BODY = 256 * 1024  # command bodies are at most 64 KiB of params


class Instruments:
    def __init__(self, meter: Meter):
        self.requests = meter.create_counter(
            "fleetflow_appapi_requests", unit="1", description="Requests answered, by operation and status"
        )
        self.refusals = meter.create_counter(
            "fleetflow_appapi_refusals", unit="1", description="Requests refused (4xx/5xx), by reason"
        )
        self.duration = telemetry.latency_histogram(
            meter, "fleetflow_appapi_request_duration_seconds", "Time to answer, by operation"
        )


def _guarded(route: Route, handler: Handler, keys: ApiKeys, instruments: Instruments) -> Handler:
    """`handler` behind the route's scope, measured; a refusal is counted by its reason and re-raised for the
    JSON error middleware to answer."""

    async def guarded(request: web.Request) -> web.StreamResponse:
        began = time.perf_counter()
        status = 500
        try:
            if route.scope is not None:
                request[API_KEY] = keys.authenticate(request.headers.get("Authorization"), route.scope)
            response = await handler(request)
            status = response.status
            return response
        except HttpRefusal as refusal:
            status = refusal.status
            instruments.refusals.add(1, {"reason": refusal.reason})
            raise
        finally:
            instruments.requests.add(1, {"operation": route.name, "status": str(status)})
            instruments.duration.record(time.perf_counter() - began, {"operation": route.name})

    return guarded


def build_app(resources: FleetResources, commands: FleetCommands, events: FleetEvents, keys: ApiKeys,
              meter: Meter) -> web.Application:  # fmt: skip
    """Every route of ROUTES; aiohttp's own refusals (unknown path, wrong method) are JSON too."""
    app = device_app(MAX_BODY)
    instruments = Instruments(meter)
    document = openapi.document(resources.fleet.name)

    async def serve_document(_: web.Request) -> web.StreamResponse:
        return json_response(document)

    handlers: dict[str, Callable[[web.Request], Awaitable[web.StreamResponse]]] = {
        "openapi": serve_document,
        **resources.handlers(),
        **commands.handlers(),
        **events.handlers(),
    }
    for route in ROUTES:
        app.router.add_route(route.method, router_path(route), _guarded(route, handlers[route.name], keys, instruments))
    return app
