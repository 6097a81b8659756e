"""Device-side store-and-forward: readings wait in a bounded queue while the gateway is unreachable and are
resent, oldest first, once it is back — over HTTP, gRPC, MQTT, WebSocket or CoAP alike.

    link = GrpcLink(GrpcDevice(target, fleet, device, token))
    forward = StoreAndForward(link, max_batches=10_000)
    runner = asyncio.create_task(forward.run(stop))
    forward.submit(readings)        # never blocks; False when the queue is full (the batch is not taken)

A resent batch keeps its seqs, so a batch whose ack was lost is recognised by the gateway as a duplicate and
stored once."""

import asyncio
import collections
import contextlib
import enum
from dataclasses import dataclass, field
from typing import Any, Protocol

from fleetflow.device.coap_client import CoapDevice, CoapUnreachable
from fleetflow.device.grpc_client import GrpcDevice, StreamClosed
from fleetflow.device.http import HttpDevice
from fleetflow.device.mqtt_client import MqttDevice
from fleetflow.device.ws_client import SessionClosed, WsDevice

Readings = list[dict[str, Any]]


class Outcome(enum.Enum):
    ACKNOWLEDGED = "acknowledged"
    RETRY = "retry"  # unreachable, overloaded or rate limited: send again later
    REFUSED = "refused"  # the gateway will never take this batch (e.g. invalid): give up on it


@dataclass
class Delivery:
    outcome: Outcome
    duplicate: bool = False
    reason: str = ""


class Link(Protocol):
    async def deliver(self, readings: Readings) -> Delivery: ...

    async def reconnect(self) -> None: ...

    async def close(self) -> None: ...


class HttpLink:
    def __init__(self, device: HttpDevice):
        self.device = device

    async def deliver(self, readings: Readings) -> Delivery:
        result = await self.device.send(readings)
        if result.acknowledged:
            return Delivery(Outcome.ACKNOWLEDGED, duplicate=bool(result.body.get("duplicate")))
        reason = str(result.body.get("error", result.status))
        return Delivery(Outcome.RETRY if result.retryable else Outcome.REFUSED, reason=reason)

    async def reconnect(self) -> None:
        return None  # every request connects anew

    async def close(self) -> None:
        return None


class _Session(Protocol):
    async def connect(self) -> None: ...

    async def close(self) -> None: ...


class _SessionLink:
    """A link over a device session (gRPC stream, WebSocket, CoAP context): reconnecting opens a new one."""

    device: _Session

    async def reconnect(self) -> None:
        await self.device.close()
        await self.device.connect()

    async def close(self) -> None:
        await self.device.close()


class GrpcLink(_SessionLink):
    device: GrpcDevice

    def __init__(self, device: GrpcDevice):
        self.device = device

    async def deliver(self, readings: Readings) -> Delivery:
        if not self.device.connected:
            return Delivery(Outcome.RETRY, reason="not connected")
        try:
            ack = await self.device.send(readings)
        except (StreamClosed, TimeoutError) as exc:
            return Delivery(Outcome.RETRY, reason=str(exc))
        if "error" not in ack:
            return Delivery(Outcome.ACKNOWLEDGED, duplicate=bool(ack["duplicate"]))
        retry = ack["status"] in (429, 503)
        return Delivery(Outcome.RETRY if retry else Outcome.REFUSED, reason=str(ack["error"]))


class WsLink(_SessionLink):
    device: WsDevice

    def __init__(self, device: WsDevice):
        self.device = device

    async def deliver(self, readings: Readings) -> Delivery:
        if not self.device.connected:
            return Delivery(Outcome.RETRY, reason="not connected")
        try:
            answer = await self.device.send(readings)
        except (SessionClosed, TimeoutError) as exc:
            return Delivery(Outcome.RETRY, reason=str(exc))
        return _delivery(answer)


class CoapLink(_SessionLink):
    device: CoapDevice

    def __init__(self, device: CoapDevice):
        self.device = device

    async def deliver(self, readings: Readings) -> Delivery:
        try:
            answer = await self.device.send(readings)
        except CoapUnreachable as exc:
            return Delivery(Outcome.RETRY, reason=str(exc))
        return _delivery(answer)


def _delivery(answer: dict[str, Any]) -> Delivery:
    """A Delivery from an answer in the HTTP shape with its status (202, or the refusal's)."""
    if answer["status"] == 202:
        return Delivery(Outcome.ACKNOWLEDGED, duplicate=bool(answer.get("duplicate")))
    retry = answer["status"] in (429, 503)
    return Delivery(Outcome.RETRY if retry else Outcome.REFUSED, reason=str(answer.get("error", answer["status"])))


class MqttLink:
    """QoS 1: the broker's PUBACK means NATS has the batch; validation happens behind it (bad batches are
    dead-lettered by the gateway, not refused here)."""

    def __init__(self, device: MqttDevice):
        self.device = device
        self.connected = False

    async def deliver(self, readings: Readings) -> Delivery:
        if not self.connected:
            return Delivery(Outcome.RETRY, reason="not connected")
        try:
            await self.device.send(readings)
        except (TimeoutError, ConnectionError) as exc:
            self.connected = False
            return Delivery(Outcome.RETRY, reason=str(exc))
        return Delivery(Outcome.ACKNOWLEDGED)

    async def reconnect(self) -> None:
        with contextlib.suppress(Exception):
            await self.device.close()
        await self.device.connect()
        self.connected = True

    async def close(self) -> None:
        await self.device.close()


@dataclass
class ForwardingStats:
    submitted: int = 0  # readings taken into the queue
    acknowledged: int = 0  # readings
    duplicates: int = 0
    refused: int = 0
    resent: int = 0  # batches sent again after a failure
    dropped: int = 0  # batches not taken because the queue was full
    refusals: dict[str, int] = field(default_factory=dict)


class StoreAndForward:
    def __init__(self, link: Link, max_batches: int = 10_000, max_backoff: float = 5.0):
        self.link = link
        self.max_batches = max_batches
        self.max_backoff = max_backoff
        self.stats = ForwardingStats()
        self._queue: collections.deque[Readings] = collections.deque()
        self._ready = asyncio.Event()
        self.idle = asyncio.Event()
        self.idle.set()

    @property
    def pending(self) -> int:
        return len(self._queue)

    def submit(self, readings: Readings) -> bool:
        """Queue a batch for sending; False (and counted as dropped) when the queue is full."""
        if len(self._queue) >= self.max_batches:
            self.stats.dropped += 1
            return False
        self._queue.append(readings)
        self.stats.submitted += len(readings)
        self.idle.clear()
        self._ready.set()
        return True

    async def run(self, stop: asyncio.Event, drain_timeout: float = 30.0) -> None:
        """Send queued batches in order until `stop`; then keep trying what is queued for `drain_timeout`."""
        await self._send_until(stop)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._send_until(None), drain_timeout)

    async def _send_until(self, stop: asyncio.Event | None) -> None:
        backoff = 0.1
        while stop is None or not stop.is_set():
            if not self._queue:
                self.idle.set()
                if stop is None:
                    return
                self._ready.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._ready.wait(), 0.5)
                continue
            delivery = await self.link.deliver(self._queue[0])
            if delivery.outcome is Outcome.RETRY:
                self.stats.resent += 1
                await asyncio.sleep(backoff)
                backoff = min(self.max_backoff, backoff * 2)
                with contextlib.suppress(Exception):  # still away: the next round tries again
                    await self.link.reconnect()
                continue
            backoff = 0.1
            readings = self._queue.popleft()
            if delivery.outcome is Outcome.ACKNOWLEDGED:
                self.stats.acknowledged += len(readings)
                self.stats.duplicates += len(readings) if delivery.duplicate else 0
            else:
                self.stats.refused += len(readings)
                self.stats.refusals[delivery.reason] = self.stats.refusals.get(delivery.reason, 0) + 1
