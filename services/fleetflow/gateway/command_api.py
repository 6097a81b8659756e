"""The command HTTP API.

Applications (with the fleet's application token):
  POST /v1/fleets/{fleet}/devices/{device}/commands        send a command  -> 202 with its record
  GET  /v1/fleets/{fleet}/commands[?device=&state=]         list commands with their state history
  GET  /v1/fleets/{fleet}/commands/{id}                     one command with its state history
Devices (with their own device token):
  GET  /v1/fleets/{fleet}/devices/{device}/commands?wait=N  long-poll: commands queued for the device
  POST /v1/fleets/{fleet}/devices/{device}/commands/{id}/result   {"status": "succeeded", "detail": "..."}
"""

import re
from typing import Any

import msgspec
import nats.errors
import structlog
from aiohttp import web
from nats.js import JetStreamContext
from opentelemetry.metrics import Meter

from fleetflow.api import DeviceFleet
from fleetflow.gateway.auth import DeviceAuthenticator, certified_device
from fleetflow.gateway.command_sessions import CommandSessions, SessionReplaced
from fleetflow.gateway.errors import Rejection
from fleetflow.gateway.ingest import check_device_id
from fleetflow.runtime import credentials, httpserver
from fleetflow.runtime.commands import (
    MAX_PARAMS_DEPTH,
    STATES,
    CommandError,
    CommandStore,
    SendRequest,
    device_view,
    send_command,
)

log = structlog.get_logger(__name__)

APPLICATIONS = "@applications"  # not a valid device id, so no device token can equal the application token
MAX_WAIT_S = 60.0


def application_token(fleet_secret: bytes, fleet: str) -> str:
    """The token applications (and `fleetflow command`) present to send and inspect commands."""
    return credentials.device_token(fleet_secret, fleet, APPLICATIONS)


class ResultRequest(msgspec.Struct, forbid_unknown_fields=True):
    status: str
    detail: str = ""


class CommandApi:
    def __init__(self, fleet: DeviceFleet, fleet_secret: bytes, js: JetStreamContext, store: CommandStore,
                 sessions: CommandSessions, meter: Meter, previous_secret: bytes | None = None):  # fmt: skip
        self.fleet = fleet
        self.id_pattern = re.compile(fleet.spec.devices.id_pattern)
        self.devices = DeviceAuthenticator(fleet.name, fleet_secret, previous_secret)
        self.applications = DeviceAuthenticator(fleet.name, fleet_secret, previous_secret)
        self.js, self.store, self.sessions = js, store, sessions
        self.commands_sent = meter.create_counter(
            "fleetflow_gateway_commands_sent", unit="1", description="Commands accepted from applications"
        )
        self.commands_delivered = meter.create_counter(
            "fleetflow_gateway_commands_delivered", unit="1", description="Commands handed to devices, by protocol"
        )
        self.commands_sent.add(0)  # exported at 0, so that increase() sees the first one
        self.commands_delivered.add(0, {"protocol": "http"})

    def add_routes(self, app: web.Application) -> None:
        base = "/v1/fleets/{fleet}"
        app.router.add_post(base + "/devices/{device}/commands", self.send)
        app.router.add_get(base + "/devices/{device}/commands", self.poll)
        # Ids may hold '/' (the processor's are "<pipeline>/<step>/<device>/<target>/<ts>").
        app.router.add_post(base + "/devices/{device}/commands/{id:.+}/result", self.result)
        app.router.add_get(base + "/commands", self.list)
        app.router.add_get(base + "/commands/{id:.+}", self.show)

    async def send(self, request: web.Request) -> web.Response:
        return await _answer(self._send, request, 202)

    async def poll(self, request: web.Request) -> web.Response:
        return await _answer(self._poll, request, 200)

    async def result(self, request: web.Request) -> web.Response:
        return await _answer(self._result, request, 200)

    async def list(self, request: web.Request) -> web.Response:
        return await _answer(self._list, request, 200)

    async def show(self, request: web.Request) -> web.Response:
        return await _answer(self._show, request, 200)

    async def _send(self, request: web.Request) -> dict[str, Any]:
        device = self._device(request)
        self._application(request)
        body = _decode(SendRequest, await request.read())
        command = body.to_command(self.fleet.name, device, source="api")
        record = await send_command(self.js, self.store, command)
        self.commands_sent.add(1)
        return record.to_json()

    async def _poll(self, request: web.Request) -> dict[str, Any]:
        device = self._device(request)
        self._authenticate_device(device, request)
        wait = _number(request.query.get("wait", "0"), "wait", 0, MAX_WAIT_S)
        try:
            async with self.sessions.open(device, "http") as session:
                records = await session.pending()
                if not records and wait > 0:
                    record = await session.next(timeout=wait)
                    records = [record] if record else []
        except SessionReplaced as exc:
            raise Rejection(409, "session_replaced", str(exc)) from None
        self.commands_delivered.add(len(records), {"protocol": "http"})
        return {"commands": [device_view(r.command) for r in records]}

    async def _result(self, request: web.Request) -> dict[str, Any]:
        device = self._device(request)
        self._authenticate_device(device, request)
        body = _decode(ResultRequest, await request.read())
        record = await self.store.report(device, request.match_info["id"], body.status, body.detail)
        return {"id": record.command.id, "state": record.state}

    def _authenticate_device(self, device: str, request: web.Request) -> None:
        certified = certified_device(httpserver.peer_certificate(request))
        self.devices.authenticate(device, request.headers.get("Authorization"), certified)

    async def _list(self, request: web.Request) -> dict[str, Any]:
        self._fleet(request)
        self._application(request)
        device, state = request.query.get("device"), request.query.get("state")
        if device is not None:
            check_device_id(self.fleet, device, self.id_pattern)
        if state is not None and state not in STATES:
            raise Rejection(400, "invalid_state", f"state {state!r} is not one of {', '.join(STATES)}")
        return {"commands": [r.to_json() for r in await self.store.list(device, state)]}

    async def _show(self, request: web.Request) -> dict[str, Any]:
        self._fleet(request)
        self._application(request)
        record = await self.store.find(request.match_info["id"])
        if record is None:
            raise Rejection(404, "unknown_command", f"no command with id {request.match_info['id']!r} in fleet "
                            f"{self.fleet.name!r}")  # fmt: skip
        return record.to_json()

    def _fleet(self, request: web.Request) -> None:
        fleet = request.match_info["fleet"]
        if fleet != self.fleet.name:
            raise Rejection(404, "unknown_fleet", f"fleet {fleet!r} is not served here; this is fleet "
                            f"{self.fleet.name!r}")  # fmt: skip

    def _device(self, request: web.Request) -> str:
        self._fleet(request)
        device = request.match_info["device"]
        check_device_id(self.fleet, device, self.id_pattern)
        return device

    def _application(self, request: web.Request) -> None:
        try:
            self.applications.authenticate(APPLICATIONS, request.headers.get("Authorization"))
        except Rejection as exc:
            raise Rejection(
                exc.status,
                exc.reason,
                "commands are sent and listed with the fleet's application "
                "token (`fleetflow token --application`), not a device token",
                exc.headers,
            ) from None


async def _answer(handler: Any, request: web.Request, status: int) -> web.Response:
    try:
        return web.json_response(await handler(request), status=status)
    except Rejection as rejection:
        log.info("command request rejected", reason=rejection.reason, detail=rejection.detail)
        return web.json_response(rejection.body(), status=rejection.status, headers=rejection.headers)
    except CommandError as exc:
        return web.json_response({"error": exc.reason, "detail": exc.detail}, status=exc.status)
    except (nats.errors.Error, TimeoutError) as exc:
        return web.json_response(
            {"error": "unavailable", "detail": f"the command stream is unreachable ({type(exc).__name__}); retry"},
            status=503,
            headers={"Retry-After": "1"},
        )


def _decode(kind: type[Any], body: bytes) -> Any:
    try:
        return msgspec.json.decode(body, type=kind)
    except msgspec.ValidationError as exc:
        raise Rejection(400, "invalid_request", str(exc)) from None
    except msgspec.DecodeError as exc:
        raise Rejection(400, "malformed_json", f"body is not valid JSON: {exc}") from None
    except RecursionError:
        raise Rejection(
            400, "invalid_request", f"the body is nested too deeply; params may nest at most {MAX_PARAMS_DEPTH} levels"
        ) from None


def _number(text: str, name: str, low: float, high: float) -> float:
    try:
        value = float(text)
    except ValueError:
        raise Rejection(400, "invalid_parameter", f"{name}={text!r} is not a number; use {low} to {high}") from None
    if not low <= value <= high:
        raise Rejection(400, "invalid_parameter", f"{name}={value} is out of range; use {low} to {high}")
    return value
