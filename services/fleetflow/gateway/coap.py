"""The device API over CoAP (RFC 7252, aiocoap) on UDP `coap_port`: an adapter onto the intake (intake.py).

  POST coap://<gateway>/v1/fleets/{fleet}/devices/{device}/telemetry?token=<device token>
       the HTTP JSON body (content-format 50, or none) or the same as CBOR (60) -> 2.04 with the HTTP answer
  GET  .../devices/{device}/commands?token=...   with Observe: the device's outstanding commands
  POST .../devices/{device}/commands/{id}/result?token=...   {"status": "succeeded", "detail": "..."}

The token rides in a Uri-Query option: every CoAP client can send one (aiocoap-client, libcoap's coap-client,
Zephyr, Contiki) without support for a custom option number, and CoAP has no Authorization header.

A confirmable request is answered only after JetStream (or the outage buffer) has the batch: aiocoap sends the
empty ACK at once and the response separately once it exists. A retransmission of the same message id is
answered from aiocoap's message deduplication; a new request with the same readings is a JetStream duplicate
("duplicate": true). A refusal is the 4.xx/5.xx code of the HTTP status (4.00, 4.01, 4.04, 4.13, 4.15, 4.29,
5.03) with the HTTP refusal's JSON as payload; 4.29 and 5.03 carry Max-Age, the seconds to wait (RFC 8516).
Responses are JSON, or CBOR when the request's Accept option asks for 60.

Block-wise (RFC 7959): aiocoap reassembles Block1 bodies; this adapter refuses a transfer with 4.13 (Size1 =
maxBodyBytes) as soon as its blocks pass the body limit, so no device can make the gateway hold more.

Commands use Observe (RFC 7641): the observed state is the list of commands handed to the device and not yet
reported, `{"commands": [...]}`, oldest first, at most OUTSTANDING of them (the next one waits until the device
reports one: backpressure). A notification may be lost on the way, as Observe allows; the next one carries
every outstanding command again, so none is missed. Notifications are confirmable: a device gone silent fails
their retransmissions, which ends its observation; a notification is sent at least every `observe_check`
seconds for that. A device has one observation (sessions.py): a newer one ends the older with 5.03.

No DTLS: aiocoap's DTLS server (tinydtls_server, PSK only, "highly experimental" in its own docs) needs the
DTLSSocket extension, which has no wheel for this platform and does not build without autotools. So CoAP here is
plain UDP: the token proves which device sends (a wrong one gets 4.01), but it travels in clear text and
nothing protects the readings from being read or altered on the way (see docs/devices.md)."""

import asyncio
import contextlib
import math
import socket
from typing import Any

import cbor2
import msgspec
import nats.errors
import structlog
from aiocoap import Code, Context, Message, error, resource
from aiocoap.blockwise import Block1Spool
from aiocoap.numbers.constants import COAP_PORT
from aiocoap.numbers.contentformat import ContentFormat
from aiocoap.util import hostportsplit, socknumbers
from opentelemetry.metrics import Counter

from fleetflow.gateway.command_push import push_commands
from fleetflow.gateway.command_sessions import CommandSessions
from fleetflow.gateway.errors import Rejection
from fleetflow.gateway.intake import DeviceIntake, Peer
from fleetflow.gateway.sessions import DeviceSessions
from fleetflow.runtime import cancellation
from fleetflow.runtime.commands import CommandError, CommandStore

log = structlog.get_logger(__name__)
PROTOCOL = "coap"
JSON, CBOR = ContentFormat.JSON, ContentFormat.CBOR
OUTSTANDING = 16  # commands handed over and not yet reported, per device
OBSERVE_CHECK_S = 60.0
_json = msgspec.json.Encoder().encode


class ResultBody(msgspec.Struct, forbid_unknown_fields=True):
    status: str
    detail: str = ""


def coap_code(status: int) -> Code:
    """The CoAP code of an HTTP status (RFC 8075 keeps the digits: 404 -> 4.04, 429 -> 4.29)."""
    return Code(((status // 100) << 5) | (status % 100))


def answer(code: Code, body: dict[str, Any], request: Message, max_age: int | None = None) -> Message:
    """A response in the format the request's Accept asks for: CBOR for 60, JSON otherwise."""
    cbor = request.opt.accept == CBOR
    message = Message(code=code, payload=cbor2.dumps(body) if cbor else _json(body),
                      content_format=CBOR if cbor else JSON)  # fmt: skip
    if max_age is not None:
        message.opt.max_age = max_age
    return message


def refusal(rejection: Rejection, request: Message, max_body: int) -> Message:
    retry = rejection.headers.get("Retry-After")
    message = answer(coap_code(rejection.status), rejection.body(), request, int(retry) if retry else None)
    if rejection.reason == "body_too_large":
        message.opt.size1 = max_body  # RFC 7959: the largest body the server takes
    return message


def json_body(payload: bytes, content_format: int | None, max_body: int) -> bytes:
    """The request payload as the HTTP JSON body (CBOR converted); a payload over `max_body` is passed as it is,
    for the intake to refuse by its size without decoding it."""
    if content_format in (None, JSON) or len(payload) > max_body:
        return payload
    if content_format != CBOR:
        raise Rejection(415, "unsupported_content_format", f"content-format {content_format} is not accepted; send "
                        "JSON (50) or CBOR (60)")  # fmt: skip
    try:
        value = _cbor_value(payload)
        body = _json(value)
    except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError, msgspec.EncodeError) as exc:
        raise Rejection(400, "malformed_body", f"the CBOR payload does not decode to the JSON body: {exc}") from None
    # JSON has no NaN or infinity: the encoder writes them as null, which the intake would call a wrong type.
    if b"null" in body and _non_finite(value):
        raise Rejection(400, "non_finite_number", "the CBOR payload holds NaN or an infinity; metric values must be "
                        "finite numbers")  # fmt: skip
    return body


def _cbor_value(payload: bytes) -> Any:
    """The decoded payload; a map with a key twice is refused as JSON's are (cbor2 would keep the last value, so a
    second "readings" would stand in for the first, acknowledged and never stored)."""
    try:
        return cbor2.loads(payload, allow_duplicate_keys=False)
    except cbor2.CBORDecodeError as exc:
        cbor2.loads(payload)  # raises again if the payload is malformed for another reason than a key twice
        raise Rejection(400, "duplicate_key", f"a map of the CBOR payload holds a key twice ({exc}); send each "
                        "key once") from None  # fmt: skip


def _non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_non_finite(item) for item in value.values())
    if isinstance(value, list):
        return any(_non_finite(item) for item in value)
    return False


def _token(request: Message) -> str | None:
    for query in request.opt.uri_query:
        name, _, value = query.partition("=")
        if name == "token" and value:
            return f"Bearer {value}"
    return None


class _TooLarge(error.RenderableError):
    def __init__(self, rejection: Rejection, max_body: int):
        self.rejection, self.max_body = rejection, max_body

    def to_message(self) -> Message:
        message = Message(code=coap_code(413), payload=_json(self.rejection.body()), content_format=JSON)
        message.opt.size1 = self.max_body
        return message


class _BoundedBlock1Spool(Block1Spool):
    """aiocoap's Block1 reassembly, refusing a transfer as soon as its blocks pass the body limit."""

    def __init__(self, intake: DeviceIntake):
        super().__init__()
        self.intake = intake

    def feed_and_take(self, req: Message) -> Message:
        block1, max_body = req.opt.block1, self.intake.max_body
        announced = req.opt.size1 or 0
        if block1 is not None and max(block1.start + len(req.payload), announced) > max_body:
            size = max(block1.start + len(req.payload), announced)
            detail = f"the block-wise body reaches {size} bytes; at most {max_body} bytes (spec.gateway.maxBodyBytes)"
            rejection = Rejection(413, "body_too_large", detail + " are accepted: split the batch")
            path = req.opt.uri_path
            self.intake.refused(PROTOCOL, rejection, path[4] if len(path) > 4 else "")
            raise _TooLarge(rejection, max_body)
        return super().feed_and_take(req)


class _Observation:
    """One device's command observation: the outstanding commands, and the push that fills them."""

    def __init__(self, device: str, servobs: Any):
        self.device, self.servobs = device, servobs
        self.outstanding: dict[str, dict[str, Any]] = {}
        self.room = asyncio.Event()
        self.stopped = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def deliver(self, view: dict[str, Any]) -> None:
        while len(self.outstanding) >= OUTSTANDING:
            self.room.clear()
            await self.room.wait()
        self.outstanding[view["id"]] = view
        self.servobs.trigger()

    def reported(self, command_id: str) -> None:
        if self.outstanding.pop(command_id, None) is not None:
            self.room.set()
            self.servobs.trigger()

    async def keep_checking(self, interval: float) -> None:
        """A confirmable notification now and then: a device gone silent fails it, which ends the observation."""
        while not self.stopped.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopped.wait(), interval)
            if not self.stopped.is_set():
                self.servobs.trigger()

    async def stop(self) -> None:
        self.stopped.set()
        if self.task is not None and self.task is not asyncio.current_task():
            await cancellation.cancel_and_wait(self.task)

    async def replaced(self) -> None:
        await self.stop()
        ended = Rejection(503, "replaced", f"a newer observation of device {self.device!r} replaced this one")
        self.servobs.trigger(Message(code=coap_code(503), payload=_json(ended.body()), content_format=JSON),
                             is_last=True)  # fmt: skip


class CoapDeviceApi(resource.ObservableResource, resource.PathCapable):
    def __init__(self, intake: DeviceIntake, sessions: DeviceSessions, commands: CommandSessions,
                 store: CommandStore, commands_delivered: Counter, observe_check: float = OBSERVE_CHECK_S):  # fmt: skip
        super().__init__()
        self._block1 = _BoundedBlock1Spool(intake)
        self.intake, self.sessions, self.commands, self.store = intake, sessions, commands, store
        self.commands_delivered = commands_delivered
        self.observe_check = observe_check
        self._observations: dict[str, _Observation] = {}

    async def render(self, request: Message) -> Message:
        try:
            fleet, device, action = _route(request)
            self._admit(fleet, device, request)
            if action == ("telemetry",) and request.code == Code.POST:
                return await self._telemetry(device, request)
            if action == ("commands",) and request.code == Code.GET:
                return self._commands(device, request)
            if len(action) >= 3 and action[0] == "commands" and action[-1] == "result" and request.code == Code.POST:
                return await self._result(device, "/".join(action[1:-1]), request)
            raise Rejection(405, "method_not_allowed", f"{request.code} is not allowed on {'/'.join(action)!r}: "
                            "POST telemetry, GET (observe) commands, POST commands/{id}/result")  # fmt: skip
        except Rejection as rejection:
            return refusal(rejection, request, self.intake.max_body)

    def _admit(self, fleet: str, device: str, request: Message) -> None:
        try:
            self.intake.admit(PROTOCOL, fleet, device, _token(request))
        except Rejection as rejection:
            if rejection.reason != "missing_token":
                raise
            raise Rejection(401, "missing_token", "no device token: add the query parameter token=<device token> "
                            "(a Uri-Query option)") from None  # fmt: skip

    async def _telemetry(self, device: str, request: Message) -> Message:
        with self.intake.server_span(PROTOCOL, "CoAP POST telemetry", peer_of(request), device):
            payload = request.payload
            with self.intake.counted(PROTOCOL, device):
                body = json_body(payload, request.opt.content_format, self.intake.max_body)
            accepted = await self.intake.ingest(PROTOCOL, device, body, received_bytes=len(payload))
        return answer(Code.CHANGED, accepted.to_json(), request)

    def _commands(self, device: str, request: Message) -> Message:
        observation = self._observations.get(device)
        commands = list(observation.outstanding.values()) if observation else []
        return answer(Code.CONTENT, {"commands": commands}, request)

    async def _result(self, device: str, command_id: str, request: Message) -> Message:
        try:
            with self.intake.counted(PROTOCOL, device):
                body = json_body(request.payload, request.opt.content_format, self.intake.max_body)
            result = msgspec.json.decode(body, type=ResultBody)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            shape = '{"status": ..., "detail": ...}'
            raise Rejection(400, "invalid_request", f"a result is {shape}: {exc}") from None
        try:
            record = await self.store.report(device, command_id, result.status, result.detail)
        except CommandError as exc:
            raise Rejection(exc.status, exc.reason, exc.detail) from None
        except (nats.errors.Error, TimeoutError) as exc:
            raise Rejection(503, "unavailable", f"the command state is unreachable ({type(exc).__name__}); report "
                            "again", {"Retry-After": "1"}) from None  # fmt: skip
        observation = self._observations.get(device)
        if observation is not None:
            observation.reported(command_id)
        return answer(Code.CHANGED, {"id": command_id, "state": record.state}, request)

    async def add_observation(self, request: Message, servobs: Any) -> None:
        """Accept an observation of a device's commands (render refuses the others, which ends them)."""
        try:
            fleet, device, action = _route(request)
            if action != ("commands",):
                return
            self._admit(fleet, device, request)
        except Rejection:
            return
        observation = _Observation(device, servobs)
        self._observations[device] = observation
        observation.task = asyncio.create_task(self._observe(observation))

        def ended() -> None:
            observation.stopped.set()
            if observation.task is not None:
                observation.task.cancel()
            if self._observations.get(device) is observation:
                del self._observations[device]

        servobs.accept(ended)

    async def _observe(self, observation: _Observation) -> None:
        device = observation.device
        async with self.sessions.open(PROTOCOL, device, observation.replaced):
            log.info("device observes its commands", device=device, protocol=PROTOCOL)
            try:
                await asyncio.gather(
                    push_commands(self.commands, device, PROTOCOL, observation.deliver,
                                  self.commands_delivered, observation.stopped),
                    observation.keep_checking(self.observe_check),
                )  # fmt: skip
            finally:
                log.info("device observation ended", device=device, protocol=PROTOCOL)

    async def close(self) -> None:
        for observation in list(self._observations.values()):
            await observation.stop()


def peer_of(request: Message) -> Peer:
    """The datagram's two ends: the device's address and port, and the host it addressed (its Uri-Host option, else
    the address it was sent to) with our port. aiocoap leaves out the default port 5683."""
    client_address, client_port = hostportsplit(request.remote.hostinfo)
    try:
        local_address, local_port = hostportsplit(request.remote.hostinfo_local)
    except (ValueError, error.AnonymousHost):  # the socket's local side is not known: leave it out
        local_address, local_port = "", None
    return Peer(transport="udp", protocol="coap", server_address=request.opt.uri_host or local_address,
                server_port=local_port or COAP_PORT, client_address=client_address,
                client_port=client_port or COAP_PORT)  # fmt: skip


def _route(request: Message) -> tuple[str, str, tuple[str, ...]]:
    path = tuple(request.opt.uri_path)
    if len(path) < 6 or path[:2] != ("v1", "fleets") or path[3] != "devices":
        raise Rejection(404, "not_found", f"no resource at {'/' + '/'.join(path)!r}; the device API is "
                        "/v1/fleets/{fleet}/devices/{device}/telemetry|commands (see docs/devices.md)")  # fmt: skip
    return path[2], path[4], path[5:]


async def start_server(api: CoapDeviceApi, host: str, port: int) -> tuple[Context, int]:
    """Serve `api` on UDP host:port (0 picks a free port); returns the context and the port bound."""
    port = port or _free_udp_port(host)
    context = await Context.create_server_context(api, bind=(host, port), transports=["udp6"])
    _ignore_icmp_errors(context)
    return context, port


def _ignore_icmp_errors(context: Context) -> None:
    """Turn off the ICMP error queue (RECVERR) that aiocoap's udp6 transport asks for. On uvloop, every service's
    loop, the first error queued (a port-unreachable for a notification to a device that vanished while observing
    its commands) stops the socket from being read, and the gateway goes deaf to every CoAP device. Without it a
    vanished device's notification fails by its retransmissions instead. (aiocoap's simplesocketserver transport
    ignores ICMP too, but cannot bind the any-address a pod listens on.)"""
    if not socknumbers.HAS_RECVERR:  # not Linux: aiocoap never asked for it
        return
    sockets = [
        interface.token_interface.message_interface.transport.get_extra_info("socket")
        for interface in context.request_interfaces
        if hasattr(getattr(interface.token_interface, "message_interface", None), "transport")
    ]
    if not sockets:
        raise RuntimeError("aiocoap's udp6 transport has no socket where fleetflow expects it; its ICMP error queue "
                           "cannot be turned off (see gateway/coap.py)")  # fmt: skip
    for sock in sockets:
        sock.setsockopt(socket.IPPROTO_IPV6, socknumbers.IPV6_RECVERR, 0)
        sock.setsockopt(socket.IPPROTO_IP, socknumbers.IP_RECVERR, 0)


def _free_udp_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
