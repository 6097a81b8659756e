"""Commands to connected devices through one JetStream consumer per gateway process, however many are connected.

A device receives commands through a session: a gRPC Connect stream, an HTTP long-poll, or the time an MQTT
device is online. The registry (`CommandSessions`) follows the fleet's whole command stream with one ordered
consumer that starts at the newest message and hands each new command to the open sessions of its device. What
was queued before a session opened is read from the stream by a batched direct get of the device's subject,
which needs no consumer. A consumer per session ran into nats-server's consumer limit at a thousand connected
devices (or one device opening a thousand streams), after which every other device's connection failed.

A session first registers, then reads its backlog; a new command that arrives meanwhile is in the backlog, or
comes live, or both (the live copy is dropped by its stream sequence), so nothing falls between the two.
Commands are claimed in stream order with the compare-and-set of CommandStore.claim, so each is delivered once
across sessions, protocols and gateway replicas.

A device has at most `spec.gateway.maxStreamsPerDevice` counted sessions (gRPC and HTTP) per gateway replica. A
new one beyond that replaces the device's oldest: a device that reconnects while its old TCP connection is
half-dead must get through, as MQTT does with a client id. MQTT sessions are not counted: the bridge holds one
per online device, and nats-server's MQTT listener already lets one connection per client id live.
"""

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import nats.errors
import structlog
from nats.aio.client import Client
from nats.js.api import DeliverPolicy
from opentelemetry.metrics import Meter

from fleetflow.runtime import directget, subjects
from fleetflow.runtime.codec import Command
from fleetflow.runtime.commands import CommandRecord, CommandStore

log = structlog.get_logger(__name__)
CLAIMS_IN_FLIGHT = 128
_command_decoder = msgspec.json.Decoder(Command)


class SessionReplaced(Exception):
    """A newer session of the same device took this one's place (spec.gateway.maxStreamsPerDevice)."""


class CommandSession:
    """One device's commands for as long as one of its connections is open: those queued before it opened,
    oldest first, then new ones as they arrive, each claimed for delivery exactly once."""

    def __init__(self, registry: "CommandSessions", device: str, protocol: str, counted: bool):
        self.registry, self.device, self.protocol, self.counted = registry, device, protocol, counted
        self._backlog: deque[Command] = deque()
        self._live: asyncio.Queue[tuple[int, Command] | None] = asyncio.Queue()  # None: replaced
        self._backlog_until = 0  # the stream sequence the backlog read covered this device's subject up to
        self.replaced: SessionReplaced | None = None

    async def __aenter__(self) -> "CommandSession":
        self.registry._add(self)
        try:
            subject = subjects.command_subject(self.registry.store.fleet, self.device)
            stored = await directget.messages_on(self.registry.nc, self.registry.stream, subject)
        except BaseException:
            self.registry._remove(self)
            raise
        self._backlog.extend(command for message in stored if (command := _decode(message.data)) is not None)
        self._backlog_until = stored[-1].seq if stored else 0
        return self

    async def __aexit__(self, *_: object) -> None:
        self.registry._remove(self)

    def _offer(self, seq: int, command: Command) -> None:
        self._live.put_nowait((seq, command))

    def _replace(self, detail: str) -> None:
        self.replaced = SessionReplaced(detail)
        self._live.put_nowait(None)

    async def next(self, timeout: float | None = None) -> CommandRecord | None:
        """The next deliverable command (now claimed as delivered), or None when `timeout` passes first.
        SessionReplaced once a newer session of the device has taken this one's place."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            command = await self._next_command(deadline)
            if command is None:
                return None
            async with self.registry.claims:
                claimed = await self.registry.store.claim(command, self.protocol)
            if claimed is not None:
                return claimed

    async def pending(self) -> list[CommandRecord]:
        """Every command deliverable right now, claimed, in order. Commands claimed before a replacement are
        returned (they are delivered); SessionReplaced only when there are none."""
        claimed: list[CommandRecord] = []
        try:
            while (record := await self.next(timeout=0)) is not None:
                claimed.append(record)
        except SessionReplaced:
            if not claimed:
                raise
        return claimed

    async def __aiter__(self) -> AsyncIterator[CommandRecord]:
        while True:
            record = await self.next()
            if record is not None:
                yield record

    async def _next_command(self, deadline: float | None) -> Command | None:
        if self.replaced is not None:
            raise self.replaced
        if self._backlog:
            return self._backlog.popleft()
        loop = asyncio.get_running_loop()
        while True:
            if self._live.empty() and deadline is not None and deadline <= loop.time():
                return None
            try:
                item = await asyncio.wait_for(self._live.get(), None if deadline is None else deadline - loop.time())
            except TimeoutError:
                return None
            if item is None:
                assert self.replaced is not None
                raise self.replaced
            seq, command = item
            if seq > self._backlog_until:  # an older one is in the backlog already
                return command


class CommandSessions:
    """The gateway's open command sessions by device, fed by one ordered consumer on the command stream."""

    def __init__(self, nc: Client, store: CommandStore, max_per_device: int, meter: Meter):
        self.nc, self.store, self.max_per_device = nc, store, max_per_device
        self.stream = subjects.commands_stream(store.fleet)
        self._by_device: dict[str, list[CommandSession]] = {}
        self._sub: Any = None
        # A command to every connected device arrives at every session at once. Unbounded, ten thousand claims
        # put twenty thousand requests in flight: all finished together after seconds, some after their
        # timeout. Bounded, they finish in turn at the rate NATS and this process sustain.
        self.claims = asyncio.Semaphore(CLAIMS_IN_FLIGHT)
        self.sessions_open = meter.create_up_down_counter(
            "fleetflow_gateway_command_sessions", unit="1", description="Open command sessions, by protocol"
        )
        self.sessions_replaced = meter.create_counter(
            "fleetflow_gateway_command_sessions_replaced", unit="1",
            description="Command sessions (gRPC streams, HTTP long-polls) ended because the device opened more than "
            "spec.gateway.maxStreamsPerDevice, by the protocol of the one ended",
        )  # fmt: skip

    async def start(self) -> None:
        """Follow new commands; sessions opened from now on see every command sent after they registered."""
        self._sub = await self.nc.jetstream().subscribe(
            f"ff.{self.store.fleet}.cmd.>", ordered_consumer=True, deliver_policy=DeliverPolicy.NEW,
            cb=self._on_message, stream=self.stream,
        )  # fmt: skip

    async def close(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(nats.errors.Error, TimeoutError):
                await self._sub.unsubscribe()

    def open(self, device: str, protocol: str, counted: bool = True) -> CommandSession:
        """A session for `device` (use it with `async with`); `counted` ones are held to maxStreamsPerDevice."""
        return CommandSession(self, device, protocol, counted)

    def open_count(self, device: str) -> int:
        return len(self._by_device.get(device, ()))

    def _add(self, session: CommandSession) -> None:
        sessions = self._by_device.setdefault(session.device, [])
        counted = [s for s in sessions if s.counted]
        if session.counted and len(counted) >= self.max_per_device:
            oldest = counted[0]
            sessions.remove(oldest)
            self._replaced(oldest, session)
        sessions.append(session)
        self.sessions_open.add(1, {"protocol": session.protocol})

    def _replaced(self, old: CommandSession, new: CommandSession) -> None:
        old._replace(f"replaced by a newer {new.protocol} session of device {old.device!r}: a device may have "
                     f"{self.max_per_device} at a time (spec.gateway.maxStreamsPerDevice)")  # fmt: skip
        self.sessions_open.add(-1, {"protocol": old.protocol})
        self.sessions_replaced.add(1, {"protocol": old.protocol})
        log.info("command session replaced", device=old.device, protocol=old.protocol, by=new.protocol)

    def _remove(self, session: CommandSession) -> None:
        sessions = self._by_device.get(session.device, [])
        if session in sessions:  # a replaced session was taken out already
            sessions.remove(session)
            self.sessions_open.add(-1, {"protocol": session.protocol})
        if not sessions:
            self._by_device.pop(session.device, None)

    async def _on_message(self, msg: Any) -> None:
        sessions = self._by_device.get(msg.subject.rsplit(".", 1)[-1])
        if not sessions:
            return  # nobody connected: the device reads it from the stream when it connects
        command = _decode(msg.data)
        if command is not None:
            for session in sessions:
                session._offer(msg.metadata.sequence.stream, command)


def _decode(data: bytes) -> Command | None:
    try:
        return _command_decoder.decode(data)
    except msgspec.DecodeError:
        log.warning("command message is not a command; skipped")
        return None
