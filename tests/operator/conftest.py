"""Fixtures: the KMock-based API server on a real port, and the real operator in its own thread."""

import asyncio
import contextlib
import sys
import threading
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import kmock
import pytest
from kubernetes import client as k8s_client

from fleetflow.api.crds import all_crds
from fleetflow.operator.main import kopf_settings, operate
from fleetflow.operator.options import OperatorOptions
from tests.operator.apiserver import ApiServerEmulator

OperatorStarter = Callable[..., Any]


@pytest.fixture
async def apiserver() -> AsyncIterator[tuple[ApiServerEmulator, str]]:
    emulator = ApiServerEmulator()
    emulator.register_builtins()
    for crd in all_crds().values():
        emulator.register_crd(crd)
    emulator.namespaces.update({"ns1", "ns2"})
    async with emulator, kmock.Server(emulator, host="127.0.0.1") as server:
        yield emulator, str(server.url).rstrip("/")


@asynccontextmanager
async def running_operator(url: str, namespaces: list[str] | None, **kwargs: Any) -> AsyncIterator[None]:
    """`operate()` in a thread with its own event loop: stopping kopf cancels tasks of its loop, which must
    not be pytest's."""
    configuration = k8s_client.Configuration(host=url)
    stop, ready = threading.Event(), threading.Event()
    failure: list[BaseException] = []
    options = kwargs.pop("options", OperatorOptions(image="fleetflow:test", resync_seconds=0.5))
    # A standby replica (leader election) never gets ready while another leads.
    wait_ready = kwargs.pop("wait_ready", True)
    settings = kopf_settings()
    # The tests start and stop an operator each.
    settings.queueing.exit_timeout = 0.1

    async def until_stopped() -> None:
        # Cancelling (as kopf's own signal handling ends in) stops its timers at once; a stop flag waits 5 s.
        task = asyncio.create_task(operate(namespaces, options=options, configuration=configuration,
                                           retry_delay=0.5, ready_flag=ready, settings=settings, **kwargs))  # fmt: skip
        while not stop.is_set() and not task.done():
            await asyncio.sleep(0.02)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    def main() -> None:
        try:
            asyncio.run(until_stopped())
        except BaseException as exc:  # reported to the test below
            failure.append(exc)

    thread = threading.Thread(target=main, name="operator", daemon=True)
    thread.start()
    try:
        if wait_ready:
            await wait_until(lambda: ready.is_set() or bool(failure), timeout=10, what="the operator to start")
        assert not failure, f"the operator failed to start: {failure!r}"
        yield
    finally:
        stop.set()
        await asyncio.to_thread(thread.join, 10)
        if thread.is_alive():
            frame = sys._current_frames().get(thread.ident or 0)
            where = "".join(traceback.format_stack(frame)) if frame else "?"
            raise AssertionError(f"the operator did not stop within 10 s; its thread is at:\n{where}")


async def wait_until(predicate: Callable[[], Any], timeout: float = 5.0, what: str = "a condition") -> Any:
    """Poll `predicate` (sync or async) until it returns something truthy."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = predicate()
        if isinstance(value, Awaitable):
            value = await value
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


@pytest.fixture
def start_operator(apiserver: tuple[ApiServerEmulator, str]) -> OperatorStarter:
    _, url = apiserver

    def start(namespaces: list[str] | None = None, **kwargs: Any) -> Any:
        return running_operator(url, ["ns1", "ns2"] if namespaces is None else namespaces, **kwargs)

    return start
