"""Commands pushed down a device's open session (WebSocket, CoAP Observe): the one place those adapters take
commands from, so a change in how commands are read from the stream is one edit here, not one per protocol."""

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from opentelemetry.metrics import Counter

from fleetflow.gateway.command_sessions import CommandSessions
from fleetflow.runtime.commands import device_view

Deliver = Callable[[dict[str, Any]], Awaitable[None]]


# How often the push checks that its session still stands while no command comes: a cancellation alone can be
# lost (asyncio.wait_for in Python 3.11 drops one that coincides with the awaited result; CommandSession uses it).
STOP_CHECK_S = 0.5


async def push_commands(commands: CommandSessions, device: str, protocol: str, deliver: Deliver,
                        delivered: Counter, stopped: asyncio.Event) -> None:  # fmt: skip
    """Hand each of the device's commands to `deliver` (its device view), oldest first, until `stopped` is set
    (set it, then cancel the task: that also ends a `deliver` waiting for room).

    A command is claimed before it is handed over; one that provably never left the gateway (`deliver` raised
    ConnectionError, or the session ended while `deliver` waited) goes back to `queued` for the next session."""
    store = commands.store
    # Not counted against maxStreamsPerDevice: WebSocket and CoAP sessions replace each other (sessions.py).
    async with commands.open(device, protocol, counted=False) as session:
        while not stopped.is_set():
            record = await session.next(timeout=STOP_CHECK_S)
            if record is None:
                continue
            if stopped.is_set():  # claimed just as the session ended
                await store.requeue(record.command, f"the {protocol} session ended before the command was sent")
                return
            try:
                await deliver(device_view(record.command))
            except (ConnectionError, asyncio.CancelledError):
                detail = f"the {protocol} session ended before the command was sent"
                await asyncio.shield(store.requeue(record.command, detail))
                raise
            delivered.add(1, {"protocol": protocol})
