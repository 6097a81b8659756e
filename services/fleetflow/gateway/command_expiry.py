"""The gateway's command expiry: queued commands become `expired` when their TTL passes."""

import asyncio

import nats.errors
import structlog
from nats.js import JetStreamContext

from fleetflow.runtime.codec import Command
from fleetflow.runtime.commands import QUEUED, CommandStore, follow_commands, now_ms

log = structlog.get_logger(__name__)


class CommandExpirer:
    """Moves queued commands to `expired` when their TTL passes, whether or not their device ever connects.

    Follows the whole command stream (so it also sees commands the processor published directly), records a
    `queued` state for any command that has none, and keeps a timer per queued command. Idempotent across
    gateway replicas: the transition is compare-and-set."""

    def __init__(self, js: JetStreamContext, store: CommandStore):
        self.js, self.store = js, store
        self._deadlines: dict[tuple[str, str], Command] = {}

    async def run(self, stop: asyncio.Event, tick: float = 0.25) -> None:
        await follow_commands(self.js, self.store.fleet, self._on_command, self._expire_due, stop, tick)

    async def _on_command(self, command: Command) -> None:
        try:
            record = await self.store.ensure_queued(command)
        except (nats.errors.Error, TimeoutError) as exc:
            log.warning("could not record command state; will expire it on time anyway", error=str(exc))
            record = None
        if record is None or record.state == QUEUED:
            self._deadlines[(command.device, command.id)] = command

    async def _expire_due(self) -> None:
        now = now_ms()
        due = [c for c in self._deadlines.values() if c.created_ms + c.ttl_ms <= now]
        for command in due:
            try:
                if await self.store.expire(command):
                    log.info("command expired", command=command.id, device=command.device)
            except (nats.errors.Error, TimeoutError):
                continue  # NATS is away; try again on the next tick
            self._deadlines.pop((command.device, command.id), None)
