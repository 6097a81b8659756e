"""Device sessions on the protocols that hold one open to push commands (a WebSocket, a CoAP observation).

A device has at most one: a new session replaces the device's older one, whichever of these protocols either
uses, as an MQTT client id takes over its older connection. The newer one wins because a device that reconnects
after a silent network loss must not be locked out by its own dead session; and only one may exist because two
sessions would split the device's commands between them (each claims the next command from the same feed)."""

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import structlog
from opentelemetry.metrics import Meter

log = structlog.get_logger(__name__)


@dataclass
class Session:
    device: str
    protocol: str
    # Awaited once, when a newer session of the same device replaces this one: the adapter stops pushing
    # commands (so none is claimed for the older session from then on) and ends its session.
    end: Callable[[], Awaitable[None]]
    replaced: bool = field(default=False)


class DeviceSessions:
    def __init__(self, meter: Meter):
        self._live: dict[str, Session] = {}
        self._open = meter.create_up_down_counter(
            "fleetflow_gateway_device_sessions", unit="1", description="Open device sessions, by protocol"
        )

    @contextlib.asynccontextmanager
    async def open(self, protocol: str, device: str, end: Callable[[], Awaitable[None]]) -> AsyncIterator[Session]:
        """The device's session for as long as the block runs; an older one of the device is ended first."""
        session = Session(device, protocol, end)
        older, self._live[device] = self._live.get(device), session
        if older is not None:
            older.replaced = True
            log.info("device session replaced by a newer one", device=device, protocol=older.protocol,
                     newer=protocol)  # fmt: skip
            await older.end()
        self._open.add(1, {"protocol": protocol})
        try:
            yield session
        finally:
            self._open.add(-1, {"protocol": protocol})
            if self._live.get(device) is session:
                del self._live[device]

    def __len__(self) -> int:
        return len(self._live)
