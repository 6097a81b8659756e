"""Keeping the local platform's children running, as Kubernetes would: every child, nats-server included, is
restarted when it exits; one that keeps crashing is restarted more and more slowly, one that ran a while is
restarted at once again."""

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any, Protocol

import structlog

log = structlog.get_logger(__name__)

FIRST_DELAY = 0.2  # seconds before the first restart after a crash
MAX_DELAY = 5.0
STABLE_AFTER = 10.0  # a child that ran this long before it crashed counts as healthy: its back-off starts over
READY_TIMEOUT = 30.0
POLL = 0.1


class Child(Protocol):
    name: str
    restarts: int
    started_at: float

    def spawn(self) -> None: ...

    async def wait_ready(self, timeout: float = ...) -> Any: ...

    def crashed(self) -> bool: ...

    @property
    def exit_code(self) -> int | None: ...

    @property
    def stopping(self) -> bool: ...


def restart_delay(crashes: int) -> float:
    """0.2 s, 0.4 s, 0.8 s ... 5 s for the 1st, 2nd, 3rd ... crash in a row."""
    return float(min(MAX_DELAY, FIRST_DELAY * 2 ** max(0, crashes - 1)))


class CrashCount:
    """Crashes in a row: reset by a run of at least `stable_after` seconds."""

    def __init__(self, stable_after: float = STABLE_AFTER):
        self.stable_after = stable_after
        self.in_a_row = 0

    def crashed_after(self, ran: float) -> int:
        self.in_a_row = 1 if ran >= self.stable_after else self.in_a_row + 1
        return self.in_a_row


class Supervisor:
    def __init__(self, children: list[Child], clock: Callable[[], float] = time.monotonic):
        self.children = children
        self.clock = clock

    async def run(self, stop: asyncio.Event) -> None:
        """Watch every child until `stop`."""
        await asyncio.gather(*(self._watch(child, stop) for child in self.children))

    async def _watch(self, child: Child, stop: asyncio.Event) -> None:
        crashes = CrashCount()
        while not stop.is_set():
            if not child.crashed():
                await _wait(stop, POLL)
                continue
            delay = restart_delay(crashes.crashed_after(self.clock() - child.started_at))
            log.warning("child exited; restarting", child=child.name, code=child.exit_code, restart_in=delay)
            if await _wait(stop, delay) or child.stopping:
                return
            await self._restart(child)

    async def _restart(self, child: Child) -> None:
        began = self.clock()
        child.restarts += 1
        child.spawn()
        try:
            await child.wait_ready(READY_TIMEOUT)
        except (RuntimeError, TimeoutError) as exc:  # it exited again, or hangs: the next round deals with it
            log.warning("restarted child is not ready", child=child.name, error=str(exc).splitlines()[0])
            return
        log.info("child restarted and ready", child=child.name, restarts=child.restarts,
                 seconds=round(self.clock() - began, 2))  # fmt: skip


async def _wait(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep `seconds` unless `stop` comes first; True if it did."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()
