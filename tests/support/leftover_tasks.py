"""Tasks a test left running on its event loop that do not end when cancelled.

pytest-asyncio closes a test's event loop by cancelling every task still on it and waiting until all have ended.
A task that swallows its cancellation and waits again (for a message, a future) makes that wait last for ever: a
teardown hung until pytest-timeout's 300 s, with nothing in the report to say which task. `end_leftover_tasks`
does the cancelling first, while the test can still fail naming each such task and where it waits."""

import asyncio
import types
from collections.abc import Iterator

# Stuck tasks taken off their loop stay referenced here: collected, their coroutines would be closed at whatever
# moment the garbage collector runs, on a closed loop, and their clean-up's errors would surface there.
_abandoned: list[asyncio.Task[object]] = []


async def end_leftover_tasks(timeout: float) -> list[asyncio.Task[object]]:
    """Cancel every other task on the running loop; those not ended within `timeout` (then taken off the loop's
    list of tasks, so that closing the loop does not wait for them)."""
    current = asyncio.current_task()
    leftover = [task for task in asyncio.all_tasks() if task is not current]
    if not leftover:
        return []
    for task in leftover:
        task.cancel()
    _, stuck = await asyncio.wait(leftover, timeout=timeout)
    for task in stuck:
        asyncio.tasks._unregister_task(task)  # so that closing the loop does not wait for it
        _abandoned.append(task)
    return sorted(stuck, key=lambda task: task.get_name())


def described(tasks: list[asyncio.Task[object]]) -> str:
    """Each task with the chain of calls it waits in, innermost last."""
    return "\n".join(f"{task!r}\n" + "".join(f"    {place}\n" for place in awaiting(task)) for task in tasks)


def awaiting(task: asyncio.Task[object]) -> Iterator[str]:
    """Where the task's coroutine waits, through every coroutine and async generator it awaits (a task's own
    stack shows only the outermost frame)."""
    awaitable: object = task.get_coro()
    while awaitable is not None:
        frame = getattr(awaitable, "cr_frame", None) or getattr(awaitable, "ag_frame", None)
        if isinstance(frame, types.FrameType):
            yield f"{frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_qualname}"
        awaitable = getattr(awaitable, "cr_await", None) or getattr(awaitable, "ag_await", None)
