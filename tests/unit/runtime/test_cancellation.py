"""cancellation.cancel_and_wait ends a task for sure, and never at the price of its caller's own cancellation."""

import asyncio

from fleetflow.runtime.cancellation import cancel_and_wait

BOUND_S = 5  # far above what each case takes: only a hang reaches it


async def started(coro: object) -> asyncio.Task[None]:
    task: asyncio.Task[None] = asyncio.create_task(coro)  # type: ignore[arg-type]
    await asyncio.sleep(0)  # it runs up to its first wait
    return task


async def ended(task: asyncio.Task[None]) -> asyncio.Task[None]:
    """`task` once it has ended; fails if it has not within BOUND_S (asyncio.wait_for's own cancellation could be
    swallowed by the code under test, and make it look as if it had ended)."""
    done, _ = await asyncio.wait({task}, timeout=BOUND_S)
    if not done:
        task.cancel()
        raise AssertionError(f"{task!r} did not end within {BOUND_S} s")
    return task


async def test_a_caller_cancelled_while_it_waits_is_cancelled_not_returned() -> None:
    cleanup = asyncio.Event()

    async def slow_to_end() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            await cleanup.wait()  # e.g. unsubscribing, on a busy connection

    task = await started(slow_to_end())
    caller = await started(cancel_and_wait(task))
    caller.cancel()  # e.g. nats-py ending a subscription whose callback is ending a task
    cleanup.set()
    assert (await ended(caller)).cancelled()
    assert (await ended(task)).cancelled()


async def test_a_cancellation_the_task_lost_is_repeated_until_it_ends() -> None:
    answer: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def waits_for_an_answer_then_for_ever() -> None:
        await asyncio.wait_for(answer, 60)  # as nats-py's requests and next_msg wait
        await asyncio.Event().wait()

    task = await started(waits_for_an_answer_then_for_ever())
    answer.set_result(None)  # arrives in the iteration of the cancel: Python 3.11's wait_for drops the cancel
    await ended(asyncio.create_task(cancel_and_wait(task, recancel_s=0.01)))
    assert task.cancelled()


async def test_a_task_that_fails_while_ending_is_ended_without_raising_here() -> None:
    async def fails_when_cancelled() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise ConnectionError("the connection closed under it") from None

    task = await started(fails_when_cancelled())
    await ended(asyncio.create_task(cancel_and_wait(task)))
    assert isinstance(task.exception(), ConnectionError)


async def test_a_task_that_already_ended_is_left_as_it_ended() -> None:
    async def returns() -> None:
        return None

    task = await started(returns())
    await asyncio.sleep(0)
    await cancel_and_wait(task)
    assert task.done() and not task.cancelled()
