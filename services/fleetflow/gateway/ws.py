"""The device API over a WebSocket: GET /v1/fleets/{fleet}/devices/{device}/ws on the gateway's HTTP port.

An adapter onto the intake (intake.py). The device is admitted before the upgrade (a refusal is the HTTP
status with the JSON body), with its token in the Authorization header or, for browsers, which cannot set
headers on a WebSocket, as the subprotocol `bearer.<token>` beside `fleetflow.v1`. Not in the query string:
URLs end up in proxy logs and browser history. The session then carries JSON text frames:

  device -> gateway  {"type": "telemetry", "readings": [...], "id": any}     the HTTP body, plus type (and id)
                     {"type": "result", "id": "<command id>", "status": "succeeded", "detail": "..."}
  gateway -> device  {"type": "ack", "accepted": 10, "duplicate": false, "firstSeq": 1, "lastSeq": 10}
                     {"type": "reported", "id": "<command id>", "state": "succeeded"}
                     {"type": "error", "status": 400, "error": "<reason>", "detail": "...", "retryAfter": 1}
                     {"type": "command", "id": ..., "name": ..., "params": ..., "createdMs": ..., "expiresMs": ...}

Each message is answered in the order it came (an `ack` once JetStream has the batch, `reported`, or an `error`
that carries the HTTP refusal's status, reason and detail; the session stays open), echoing its "id" if it had
one. Commands are pushed as they come due. Backpressure: the next message is read only after the previous one
was answered, so a device that outruns JetStream fills its TCP window instead of the gateway's memory."""

import asyncio
from dataclasses import dataclass
from typing import Any

import msgspec
import nats.errors
import structlog
from aiohttp import WSCloseCode, WSMsgType, web
from opentelemetry.context import Context
from opentelemetry.metrics import Counter

from fleetflow.gateway.auth import certified_device
from fleetflow.gateway.command_push import push_commands
from fleetflow.gateway.command_sessions import CommandSessions
from fleetflow.gateway.errors import Rejection
from fleetflow.gateway.http import peer_of
from fleetflow.gateway.intake import DeviceIntake, Peer, mark_refused
from fleetflow.gateway.sessions import DeviceSessions
from fleetflow.runtime import cancellation, codec, httpserver, telemetry
from fleetflow.runtime.commands import CommandError, CommandStore

log = structlog.get_logger(__name__)
PROTOCOL = "ws"
ROUTE = "/v1/fleets/{fleet}/devices/{device}/ws"
SUBPROTOCOL = "fleetflow.v1"
TOKEN_SUBPROTOCOL = "bearer."
REPLACED = 4001  # close code (the private range 4000-4999) of a session a newer one of the device replaced


class TelemetryMessage(msgspec.Struct, tag="telemetry", tag_field="type", forbid_unknown_fields=True):
    readings: msgspec.Raw  # handed to the intake as the HTTP body, undecoded
    id: Any = None


class ResultMessage(msgspec.Struct, tag="result", tag_field="type", forbid_unknown_fields=True):
    id: str
    status: str
    detail: str = ""


_decode = msgspec.json.Decoder(TelemetryMessage | ResultMessage).decode
_encode = msgspec.json.Encoder().encode


class WebSocketApi:
    def __init__(self, intake: DeviceIntake, sessions: DeviceSessions, commands: CommandSessions,
                 store: CommandStore, commands_delivered: Counter, heartbeat: float):  # fmt: skip
        self.intake, self.sessions, self.commands, self.store = intake, sessions, commands, store
        self.commands_delivered = commands_delivered
        self.heartbeat = heartbeat
        # A frame up to twice maxBodyBytes is read, so the intake can refuse it with its reason while the
        # session goes on; aiohttp closes the session on anything larger (1009), so no device can make it buffer more.
        self.max_frame = 2 * intake.max_body
        self._open: set[web.WebSocketResponse] = set()

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get(ROUTE, self.session)
        app.on_shutdown.append(self._going_away)

    async def _going_away(self, _app: web.Application) -> None:
        """On SIGTERM: end every session (1001), after the answer it is writing; devices reconnect elsewhere."""
        await asyncio.gather(*(ws.close(code=WSCloseCode.GOING_AWAY, message=b"gateway stopping")
                               for ws in list(self._open)), return_exceptions=True)  # fmt: skip

    async def session(self, request: web.Request) -> web.StreamResponse:
        device = request.match_info["device"]
        try:
            certified = certified_device(httpserver.peer_certificate(request))
            admit(self.intake, request.match_info["fleet"], device, request.headers, certified)
        except Rejection as rejection:
            return web.json_response(rejection.body(), status=rejection.status, headers=rejection.headers)
        # heartbeat: a ping every `heartbeat` s; a peer that answers none within half of it is closed.
        ws = web.WebSocketResponse(protocols=(SUBPROTOCOL,), heartbeat=self.heartbeat, max_msg_size=self.max_frame)
        await ws.prepare(request)
        log.info("device connected", device=device, protocol=PROTOCOL)
        session = _WsSession(ws)
        self._open.add(ws)
        try:
            async with self.sessions.open(PROTOCOL, device, session.replaced):
                session.pusher = asyncio.create_task(
                    push_commands(
                        self.commands, device, PROTOCOL, session.command, self.commands_delivered, session.stopped
                    )
                )
                try:
                    origin = _Origin(peer_of(request, "websocket"), telemetry.extract(request.headers))
                    await self._read(device, ws, session, origin)
                finally:
                    await session.stop_pushing()
        finally:
            self._open.discard(ws)
        log.info("device disconnected", device=device, protocol=PROTOCOL, close_code=ws.close_code)
        return ws

    async def _read(self, device: str, ws: web.WebSocketResponse, session: "_WsSession",
                    origin: "_Origin") -> None:  # fmt: skip
        async for message in ws:
            if message.type is WSMsgType.TEXT:
                answer = await self._answer(device, message.data.encode(), origin)
            elif message.type is WSMsgType.BINARY:
                binary = Rejection(400, "invalid_message", "binary frames are not accepted; send each message as a "
                                   "JSON text frame")  # fmt: skip
                self.intake.refused(PROTOCOL, binary, device)
                answer = error_frame(binary)
            else:  # ERROR (e.g. a frame over the size limit): aiohttp closes the session
                break
            await session.send(answer)

    async def _answer(self, device: str, data: bytes, origin: "_Origin") -> dict[str, Any]:
        try:
            with self.intake.counted(PROTOCOL, device):
                message = decode_message(data)
        except Rejection as rejection:
            return error_frame(rejection)
        if isinstance(message, ResultMessage):
            return await self._report(device, message)
        return await self._telemetry(device, message, len(data), origin)

    async def _telemetry(self, device: str, message: TelemetryMessage, size: int,
                         origin: "_Origin") -> dict[str, Any]:  # fmt: skip
        with self.intake.server_span(PROTOCOL, "WS telemetry", origin.peer, device, origin.trace_context) as span:
            body = b'{"readings":' + bytes(message.readings) + b"}"
            try:
                accepted = await self.intake.ingest(PROTOCOL, device, body, received_bytes=size)
            except Rejection as rejection:
                mark_refused(span, rejection)
                return _with_id(error_frame(rejection), message.id)
        return _with_id({"type": "ack", **accepted.to_json()}, message.id)

    async def _report(self, device: str, message: ResultMessage) -> dict[str, Any]:
        try:
            record = await self.store.report(device, message.id, message.status, message.detail)
        except CommandError as exc:
            return _with_id(error_frame(Rejection(exc.status, exc.reason, exc.detail)), message.id)
        except (nats.errors.Error, TimeoutError) as exc:
            unavailable = Rejection(503, "unavailable", f"the command state is unreachable ({type(exc).__name__}); "
                                    "report the result again", {"Retry-After": "1"})  # fmt: skip
            return _with_id(error_frame(unavailable), message.id)
        return {"type": "reported", "id": message.id, "state": record.state}


def admit(intake: DeviceIntake, fleet: str, device: str, headers: Any, certified: str | None = None) -> None:
    """The intake's admission, with the token from the Authorization header or the `bearer.` subprotocol, or the
    device's verified client certificate (`certified`: its device id)."""
    try:
        intake.admit(PROTOCOL, fleet, device, authorization(headers), certified)
    except Rejection as rejection:
        if rejection.reason != "missing_token":
            raise
        raise Rejection(401, "missing_token", "no device token: send 'Authorization: Bearer <device token>', or "
                        f"(from a browser) the subprotocols {SUBPROTOCOL!r} and '{TOKEN_SUBPROTOCOL}<device token>'",
                        rejection.headers) from None  # fmt: skip


def authorization(headers: Any) -> str | None:
    if headers.get("Authorization"):
        return str(headers["Authorization"])
    offered = (p.strip() for p in headers.get("Sec-WebSocket-Protocol", "").split(","))
    token = next((p.removeprefix(TOKEN_SUBPROTOCOL) for p in offered if p.startswith(TOKEN_SUBPROTOCOL)), None)
    return f"Bearer {token}" if token else None


def decode_message(data: bytes) -> TelemetryMessage | ResultMessage:
    try:
        message = _decode(data)
    except msgspec.ValidationError as exc:
        raise Rejection(400, "invalid_message", f"{exc}; a message is {{\"type\": \"telemetry\", \"readings\": "
                        "[...]} or {\"type\": \"result\", \"id\": ..., \"status\": ...}") from None  # fmt: skip
    except msgspec.DecodeError as exc:
        raise Rejection(400, "malformed_json", f"the message is not valid JSON: {exc}") from None
    if not _no_key_twice_in_envelope(data, message):
        try:
            codec.refuse_duplicate_keys(data)
        except codec.CodecError as exc:
            raise Rejection(400, exc.reason, exc.detail) from None
    return message


def _no_key_twice_in_envelope(data: bytes, message: TelemetryMessage | ResultMessage) -> bool:
    """True when counting proves the envelope holds no key twice; False when only the exact check can tell.

    msgspec keeps the last of two equal keys, so {"readings": [A], "readings": [B]} would have B stored and the
    message acknowledged as if A were in it. Every key is followed by one ':', so an envelope with its 2 keys
    (3 with an id) has that many colons besides those in its readings, and a key twice would add at least one. The
    count is exact only when the id's colons are known: none, as in a number or a string without ':'."""
    if not isinstance(message, TelemetryMessage):
        return False  # a result is a few bytes: the exact check costs nothing
    if message.id is None:
        envelope = 2
    elif isinstance(message.id, int | float) or (isinstance(message.id, str) and ":" not in message.id):
        envelope = 3
    else:
        return False
    return data.count(b":") == envelope + bytes(message.readings).count(b":")


def error_frame(rejection: Rejection) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "error", "status": rejection.status, **rejection.body()}
    if "Retry-After" in rejection.headers:
        frame["retryAfter"] = int(rejection.headers["Retry-After"])
    return frame


def _with_id(frame: dict[str, Any], message_id: Any) -> dict[str, Any]:
    return frame if message_id is None else {**frame, "id": message_id}


@dataclass(frozen=True)
class _Origin:
    """Where a session's messages come from: its connection, and the trace its upgrade request continued."""

    peer: Peer
    trace_context: Context


class _WsSession:
    """One device's session: writes frames one at a time (answers and pushed commands come from two tasks)."""

    def __init__(self, ws: web.WebSocketResponse):
        self.ws = ws
        self.stopped = asyncio.Event()
        self.pusher: asyncio.Task[None] | None = None
        self._closing: asyncio.Task[bool] | None = None
        self._lock = asyncio.Lock()

    async def send(self, frame: dict[str, Any]) -> None:
        async with self._lock:
            await self.ws.send_str(_encode(frame).decode())

    async def command(self, view: dict[str, Any]) -> None:
        if self.ws.closed:
            raise ConnectionResetError("the WebSocket is closed")
        await self.send({"type": "command", **view})

    async def stop_pushing(self) -> None:
        self.stopped.set()
        if self.pusher is not None:
            await cancellation.cancel_and_wait(self.pusher)

    async def replaced(self) -> None:
        await self.stop_pushing()
        # Not awaited: the close handshake waits for the peer, which may be the dead one the device left behind.
        self._closing = asyncio.get_running_loop().create_task(
            self.ws.close(code=REPLACED, message=b"replaced by a newer session of the same device")
        )
