"""Live updates as Server-Sent Events: a fleet's (or one device's) alerts, command state changes, closed windows and
readings, read from the JetStream streams that carry them, so a dashboard that reconnects misses nothing the
streams still hold.

Each event's id is the position reached in every stream the connection follows (the last stream sequence seen
in each, opaque to clients). A client that reconnects with it as `Last-Event-ID` (browsers' EventSource does so by
itself) continues in each stream right after that position. The connection starts by sending an id alone (no
event) and repeats it with every keep-alive, so even a client that saw no event yet resumes where it left off.

A connection follows each stream with an ordered consumer of its own, and its events wait in a queue of bounded
length. While the queue is full the consumer waits, and JetStream's flow control holds the stream back, so a
client catching up on a long backlog gets it at the pace it reads. A client that takes in nothing for
`event_patience_seconds` while events wait (gone, or stuck) gets an `overflow` event and the connection ends; it
reconnects from its last id: nothing is dropped, nothing piles up in the API.
The number of connections is bounded too (`max_event_streams`); all of them end when the service stops."""

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
import nats.errors
import structlog
from aiohttp import web
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from fleetflow.api import DeviceFleet, Pipeline
from fleetflow.api.identifiers import check_device_id
from fleetflow.appapi import params, views
from fleetflow.appapi.commands import CommandLink, unavailable
from fleetflow.appapi.resources import Handler, check_fleet
from fleetflow.runtime import subjects
from fleetflow.runtime.codec import AlertEvent, ReadingBatch, WindowAggregate
from fleetflow.runtime.commands import CommandRecord
from fleetflow.runtime.httpserver import HttpRefusal
from fleetflow.writer.stores.paging import decode_token, encode_token

log = structlog.get_logger(__name__)
KINDS = ("alerts", "commands", "aggregates", "readings")
LAST_EVENT_ID = "Last-Event-ID"
View = Callable[[bytes], dict[str, Any] | None]  # a message as the event's data; None: not for this connection
_encode = msgspec.json.Encoder().encode


@dataclass(frozen=True)
class Feed:
    """One stream (and subject filter) a connection follows, and how its messages become events."""

    kind: str
    event: str  # the SSE event name
    stream: str
    subject: str
    view: View


def _alert(data: bytes) -> dict[str, Any] | None:
    return views.alert(msgspec.json.decode(data, type=AlertEvent))


def _command(data: bytes) -> dict[str, Any] | None:
    if not data:  # a delete or purge marker of the state bucket
        return None
    return msgspec.json.decode(data, type=CommandRecord).to_json()


def _readings(data: bytes) -> dict[str, Any] | None:
    batch = msgspec.json.decode(data, type=ReadingBatch)
    return {"device": batch.device, "readings": [{"seq": r.seq, "ts": r.ts, "metrics": r.metrics}
                                                 for r in batch.readings]}  # fmt: skip


def _aggregates(device: str | None) -> View:
    def view(data: bytes) -> dict[str, Any] | None:
        aggregate = msgspec.json.decode(data, type=WindowAggregate)
        if device is not None and aggregate.group != f"device={device}":
            return None
        return views.aggregate(aggregate)

    return view


def feeds(fleet: str, pipelines: list[str], kinds: tuple[str, ...], device: str | None) -> list[Feed]:
    """The streams behind `kinds`, filtered to `device` where their subjects name it."""
    one = device or "*"
    found: list[Feed] = []
    if "alerts" in kinds:
        found.append(Feed("alerts", "alert", subjects.alerts_stream(fleet), subjects.alert_subject(fleet, one), _alert))
    if "commands" in kinds:
        changes = subjects.command_state_changes(fleet).removesuffix(">") + f"{one}.*"
        found.append(Feed("commands", "command", subjects.command_state_stream(fleet), changes, _command))
    if "aggregates" in kinds:  # the subject names the window's group, not always a device: filtered in the view
        found += [Feed("aggregates", "aggregate", subjects.pipeline_stream(fleet, p),
                       subjects.pipeline_subject(fleet, p, "aggregates", "*"), _aggregates(device))
                  for p in pipelines]  # fmt: skip
    if "readings" in kinds:
        found.append(Feed("readings", "readings", subjects.telemetry_stream(fleet),
                          f"ff.{fleet}.{subjects.TELEMETRY}.*.{one}", _readings))  # fmt: skip
    return found


def parse_positions(text: str | None) -> dict[str, int]:
    """The stream positions in a Last-Event-ID this API sent; 400 naming it otherwise."""
    if text is None:
        return {}
    accepted = "the id of the last event this API sent on this stream, or omit it to start with new events"
    try:
        pairs = decode_token(text, 1)[0]
    except ValueError:
        raise params.refuse(LAST_EVENT_ID, text, accepted) from None
    if not isinstance(pairs, list) or not all(
        isinstance(p, list) and len(p) == 2 and isinstance(p[0], str) and isinstance(p[1], int) and p[1] >= 0
        for p in pairs
    ):
        raise params.refuse(LAST_EVENT_ID, text, accepted)
    return {stream: seq for stream, seq in pairs}


def event_id(positions: dict[str, int]) -> str:
    return encode_token([sorted([stream, seq] for stream, seq in positions.items())])


class Overflow(Exception):
    """The client reads slower than its events arrive."""


class Ended(Exception):
    """The service is stopping."""


class EventConnection:
    """One client's event stream: a queue fed by one ordered consumer per feed."""

    def __init__(self, feeds: list[Feed], positions: dict[str, int], queue_size: int, patience_s: float):
        self.feeds = feeds
        self.positions = {f.stream: positions[f.stream] for f in feeds if f.stream in positions}
        self.queue: asyncio.Queue[tuple[Feed, int, bytes]] = asyncio.Queue(queue_size)
        self.patience_s = patience_s
        self.overflowed, self.ended = False, asyncio.Event()  # ended: overflowed, or the service is stopping
        self._subscriptions: list[Any] = []

    async def subscribe(self, js: JetStreamContext) -> None:
        """Follow every feed from its position, or from its end now (which becomes its position)."""
        for feed in self.feeds:
            if feed.stream not in self.positions:
                try:
                    self.positions[feed.stream] = (await js.stream_info(feed.stream)).state.last_seq
                except NotFoundError:
                    raise HttpRefusal(
                        503,
                        "stream_missing",
                        f"stream {feed.stream!r} of the {feed.kind} does not "
                        "exist (yet): is the platform still starting? retry",
                        {"Retry-After": "1"},
                    ) from None
            config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                                    opt_start_seq=self.positions[feed.stream] + 1)  # fmt: skip
            sub = await js.subscribe(feed.subject, stream=feed.stream, ordered_consumer=True, config=config,
                                     cb=self._receiver(feed))  # fmt: skip
            self._subscriptions.append(sub)

    def _receiver(self, feed: Feed) -> Callable[[Msg], Any]:
        async def receive(msg: Msg) -> None:
            if self.ended.is_set():
                return
            try:
                await asyncio.wait_for(self.queue.put((feed, msg.metadata.sequence.stream, msg.data)), self.patience_s)
            except TimeoutError:
                self.overflowed = True
                self.ended.set()

        return receive

    async def next(self, timeout: float) -> tuple[Feed, int, bytes] | None:
        """The next message of any feed; None after `timeout` seconds without one. Overflow when the queue filled,
        Ended when the service stops (at once, not after the timeout)."""
        if self.ended.is_set():
            raise Overflow if self.overflowed else Ended
        getter = asyncio.ensure_future(self.queue.get())
        ending = asyncio.ensure_future(self.ended.wait())
        done, _ = await asyncio.wait({getter, ending}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        ending.cancel()
        if getter in done:
            return getter.result()
        getter.cancel()
        if self.ended.is_set():
            raise Overflow if self.overflowed else Ended
        return None

    async def close(self) -> None:
        for sub in self._subscriptions:
            with contextlib.suppress(nats.errors.Error, TimeoutError):
                await sub.unsubscribe()


@dataclass(frozen=True)
class EventLimits:
    max_streams: int  # connections at once
    queue: int  # events waiting per connection
    patience_s: float  # how long a full queue may wait for the client before the connection ends
    keepalive_s: float  # how often an idle connection gets a keep-alive


class FleetEvents:
    """The event stream resources of one fleet."""

    def __init__(self, fleet: DeviceFleet, pipelines: list[Pipeline], link: CommandLink, limits: EventLimits):
        self.fleet, self.pipelines, self.link, self.limits = fleet, sorted(p.name for p in pipelines), link, limits
        self.stopped = False
        self.connections: set[EventConnection] = set()

    def handlers(self) -> dict[str, Handler]:
        return {"fleetEvents": self.stream, "deviceEvents": self.stream}

    def stop(self) -> None:
        """End every open event stream (the service is stopping)."""
        self.stopped = True
        for connection in self.connections:
            connection.ended.set()

    async def stream(self, request: web.Request) -> web.StreamResponse:
        check_fleet(request, self.fleet.name)
        q = request.query
        kinds = params.choices(q, "kinds", KINDS)
        device = request.match_info.get("device")
        if device is not None:
            params.path_identifier(device, "device", check_device_id)
        else:
            device = params.identifier(q, "device", check_device_id)
        positions = parse_positions(request.headers.get(LAST_EVENT_ID, q.get("lastEventId")))
        if self.link.nc is None or not self.link.nc.is_connected or self.link.js is None:
            raise unavailable("the connection to NATS is down")
        if self.stopped:
            raise HttpRefusal(503, "stopping", "the API is stopping; retry", {"Retry-After": "1"})
        if len(self.connections) >= self.limits.max_streams:
            raise HttpRefusal(503, "too_many_streams", f"this API serves at most {self.limits.max_streams} event "
                              "streams at once (max_event_streams); retry later", {"Retry-After": "5"})  # fmt: skip
        chosen = feeds(self.fleet.name, self.pipelines, kinds, device)
        connection = EventConnection(chosen, positions, self.limits.queue, self.limits.patience_s)
        self.connections.add(connection)
        try:
            try:
                await connection.subscribe(self.link.js)
            except (nats.errors.Error, TimeoutError) as exc:
                raise unavailable(type(exc).__name__) from None
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                                   "X-Accel-Buffering": "no"})  # fmt: skip
            await response.prepare(request)
            with contextlib.suppress(ConnectionResetError):
                await self._relay(connection, response)
            return response
        finally:
            self.connections.discard(connection)
            await connection.close()

    async def _relay(self, connection: EventConnection, response: web.StreamResponse) -> None:
        await response.write(f"retry: 1000\nid: {event_id(connection.positions)}\n\n".encode())
        while True:
            try:
                item = await connection.next(self.limits.keepalive_s)
            except Overflow:
                await response.write(b"event: overflow\ndata: {\"detail\": \"events arrived faster than this client "
                                     b"read them; reconnect with Last-Event-ID to continue\"}\n\n")  # fmt: skip
                return
            except Ended:
                return
            if item is None:
                await response.write(f": keep-alive\nid: {event_id(connection.positions)}\n\n".encode())
                continue
            feed, seq, data = item
            connection.positions[feed.stream] = seq
            try:
                body = feed.view(data)
            except msgspec.DecodeError:
                log.warning("a message is not what its stream holds; skipped", stream=feed.stream, seq=seq)
                continue
            if body is not None:
                text = _encode(body).decode()
                await response.write(f"id: {event_id(connection.positions)}\nevent: {feed.event}\ndata: {text}\n\n"
                                     .encode())  # fmt: skip
