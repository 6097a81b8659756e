"""Ending a task that is no longer needed: for sure, and without losing the caller's own cancellation."""

import asyncio
from typing import Any

# Python 3.11's asyncio.wait_for returns the awaited result when a cancellation arrives in the same loop iteration
# as the result (nats-py's requests and `next_msg` wait with it), so one cancel() can be lost and the task goes on.
# The cancellation is repeated this often until the task has ended, as anyio and trio keep cancelling a task
# for as long as its scope is cancelled.
RECANCEL_S = 0.1


async def cancel_and_wait(task: asyncio.Future[Any], recancel_s: float = RECANCEL_S) -> None:
    """Cancel `task` and return once it has ended, however it ended: its failure is its own to report.

    `task.cancel()` then `with suppress(CancelledError): await task` looks the same, but it also swallows a
    cancellation of the caller that arrives while it waits, and the caller goes on as if it had not been
    cancelled. In a nats-py subscription callback that keeps the subscription's message loop waiting for
    messages that never come any more, and the event loop's shutdown, which waits for every task it cancelled,
    waits for ever. `asyncio.wait` lets the caller's cancellation through and leaves the task's outcome alone."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=recancel_s)
    if not task.cancelled():
        task.exception()  # retrieved, so asyncio does not log it as never retrieved
