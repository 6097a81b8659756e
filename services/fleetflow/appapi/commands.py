"""Commands through the application API: send one to a device (scope `command`), list the fleet's commands and
show one with its state history (scope `read`). They go through the fleet's command stream and state bucket
(fleetflow.runtime.commands), exactly as the gateways deliver them and `fleetflow command` sends them; a command
sent here is recorded with the id of the API key that sent it (`source` is `api-key/<id>`)."""

import re
from collections.abc import Awaitable
from typing import TypeVar

import msgspec
import nats.errors
from aiohttp import web
from nats.aio.client import Client
from nats.js import JetStreamContext

from fleetflow.api import DeviceFleet
from fleetflow.api.identifiers import check_device_id
from fleetflow.appapi import params
from fleetflow.appapi.keys import API_KEY
from fleetflow.appapi.resources import Handler, check_fleet, json_response
from fleetflow.runtime.commands import (
    MAX_PARAMS_DEPTH,
    STATES,
    CommandError,
    CommandRecord,
    CommandStore,
    SendRequest,
    send_command,
)
from fleetflow.runtime.httpserver import HttpRefusal
from fleetflow.writer.stores.paging import decode_token, encode_token

T = TypeVar("T")
SOURCE_PREFIX = "api-key/"  # + the key id: who sent a command through this API


def source_of(key_id: str) -> str:
    return SOURCE_PREFIX + key_id


class CommandLink:
    """The fleet's command stream and state bucket, from the moment NATS first answered. Until then the read
    resources serve as usual and the command ones answer 503."""

    def __init__(self, fleet: str):
        self.fleet = fleet
        self.nc: Client | None = None  # set on connecting; js and store once the bucket is open
        self.js: JetStreamContext | None = None
        self.store: CommandStore | None = None

    async def attach(self, nc: Client) -> None:
        js = nc.jetstream()
        self.store = await CommandStore.open(js, self.fleet)
        self.js = js

    def require(self) -> tuple[JetStreamContext, CommandStore]:
        if self.nc is None or self.js is None or self.store is None:
            raise unavailable("not connected to NATS yet")
        if not self.nc.is_connected:  # answer now, not after a publish's timeout: NATS is reconnecting
            raise unavailable("the connection to NATS is down; reconnecting")
        return self.js, self.store


def unavailable(why: str) -> HttpRefusal:
    return HttpRefusal(503, "commands_unavailable", f"the fleet's command stream cannot be reached ({why}); retry",
                       {"Retry-After": "1"})  # fmt: skip


async def nats_answer(call: Awaitable[T]) -> T:
    """A command stream or state bucket call: its CommandError as the refusal it describes, an outage as a 503."""
    try:
        return await call
    except CommandError as exc:
        raise HttpRefusal(exc.status, exc.reason, exc.detail) from None
    except (nats.errors.Error, TimeoutError) as exc:
        raise unavailable(type(exc).__name__) from None


class FleetCommands:
    def __init__(self, fleet: DeviceFleet, link: CommandLink):
        self.fleet, self.link = fleet, link
        self.id_pattern = re.compile(fleet.spec.devices.id_pattern)

    def handlers(self) -> dict[str, Handler]:
        return {"sendCommand": self.send, "listCommands": self.list, "getCommand": self.show}

    async def send(self, request: web.Request) -> web.Response:
        """Queue a command for the device: 202 with its record; the device gets it when (next) connected."""
        check_fleet(request, self.fleet.name)
        device = self._device(request.match_info["device"])
        body = _send_request(await request.read())
        js, store = self.link.require()
        try:
            command = body.to_command(self.fleet.name, device, source=source_of(request[API_KEY].id))
        except CommandError as exc:
            raise HttpRefusal(exc.status, exc.reason, exc.detail) from None
        record = await nats_answer(send_command(js, store, command))
        return json_response(record.to_json(), status=202)

    async def list(self, request: web.Request) -> web.Response:
        """The fleet's commands still in the state bucket, oldest first; one device's, or those in one state."""
        check_fleet(request, self.fleet.name)
        q = request.query
        device = params.identifier(q, "device", check_device_id)
        state = params.choice(q, "state", STATES)
        limit = params.limit(q, 100)
        after = _after(q.get("cursor"))
        _, store = self.link.require()
        records = [r for r in await nats_answer(store.list(device, state)) if _position(r) > after]
        page = records[:limit]
        cursor = encode_token(list(_position(page[-1]))) if len(records) > limit else None
        return json_response({"fleet": self.fleet.name, "commands": [r.to_json() for r in page],
                              "nextCursor": cursor})  # fmt: skip

    async def show(self, request: web.Request) -> web.Response:
        """One command with its state history, by id alone."""
        check_fleet(request, self.fleet.name)
        command_id = request.match_info["command"]
        _, store = self.link.require()
        record = await nats_answer(store.find(command_id))
        if record is None:
            raise HttpRefusal(404, "unknown_command", f"no command with id {command_id!r} in fleet "
                              f"{self.fleet.name!r} (its state may have expired from NATS)")  # fmt: skip
        return json_response(record.to_json())

    def _device(self, device: str) -> str:
        try:
            check_device_id(device)
        except ValueError as exc:
            raise HttpRefusal(400, "invalid_device", f"device {device!r} is not valid: {exc}") from None
        if not self.id_pattern.search(device):
            raise HttpRefusal(400, "invalid_device", f"device {device!r} does not match fleet {self.fleet.name!r}'s "
                              f"idPattern {self.id_pattern.pattern!r}")  # fmt: skip
        return device


def _position(record: CommandRecord) -> tuple[int, str]:
    """Where a record sits in the list's order (CommandStore.list's: created, then id)."""
    return record.command.created_ms, record.command.id


def _after(cursor: str | None) -> tuple[int, str]:
    if cursor is None:
        return -1, ""
    accepted = "the nextCursor of the previous page of the same request, or omit it to start over"
    try:
        created_ms, command_id = decode_token(cursor, 2)
    except ValueError:
        raise params.refuse("cursor", cursor, accepted) from None
    if not isinstance(created_ms, int) or not isinstance(command_id, str):
        raise params.refuse("cursor", cursor, accepted)
    return created_ms, command_id


def _send_request(body: bytes) -> SendRequest:
    try:
        return msgspec.json.decode(body, type=SendRequest)
    except msgspec.ValidationError as exc:
        raise HttpRefusal(
            400,
            "invalid_command",
            f"the command is not valid: {exc}; send "
            '{"name": ..., "params": {...}, "ttlSeconds": ..., "id": ...} (only name is required)',
        ) from None
    except msgspec.DecodeError as exc:
        raise HttpRefusal(400, "malformed_json", f"the body is not valid JSON: {exc}") from None
    except RecursionError:
        raise HttpRefusal(400, "invalid_command", f"the body is nested too deeply; params may nest at most "
                          f"{MAX_PARAMS_DEPTH} levels") from None  # fmt: skip
