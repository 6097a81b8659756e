"""The guard of tests/conftest.py names a task a test left running that swallows its cancellation, and where it
waits, instead of a teardown that waits for it for ever."""

import asyncio

from tests.support.leftover_tasks import described, end_leftover_tasks


async def test_a_task_that_swallows_its_cancellation_is_named_with_where_it_waits() -> None:
    messages: asyncio.Queue[bytes | None] = asyncio.Queue()

    async def message_loop() -> None:  # as nats-py's loop of a subscription callback that swallowed a cancel
        while True:
            try:
                if await messages.get() is None:
                    return
            except asyncio.CancelledError:
                pass

    async def ends_when_cancelled() -> None:
        await asyncio.Event().wait()

    stuck_one = asyncio.create_task(message_loop(), name="status-callback")
    ending = asyncio.create_task(ends_when_cancelled(), name="fine")
    await asyncio.sleep(0)

    stuck = await end_leftover_tasks(timeout=0.2)

    assert stuck == [stuck_one] and ending.cancelled()
    report = described(stuck)
    assert "status-callback" in report and "<locals>.message_loop\n" in report and "in Queue.get\n" in report, report
    assert stuck_one not in asyncio.all_tasks()  # the loop's close does not wait for it
    messages.put_nowait(None)  # (this test's own clean-up: the task ends)
    await stuck_one


async def test_nothing_left_running_is_nothing_to_report() -> None:
    assert await end_leftover_tasks(timeout=0.2) == []
