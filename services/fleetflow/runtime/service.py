"""The life of a service process: an event loop, signals that start a graceful stop, a ready file."""

import asyncio
import ctypes
import gc
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from fleetflow.runtime import telemetry

SUPERVISOR_ENV = "FLEETFLOW_SUPERVISOR_PID"  # set by `fleetflow up` for the processes it starts
_PR_SET_PDEATHSIG = 1


def use_uvloop() -> None:
    """Have asyncio.run use uvloop where it is installed: its loop and transports cost a fraction of the
    standard library's CPU per event."""
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # uvloop is optional (e.g. on Windows)
        pass


def run(main: Callable[[asyncio.Event], Awaitable[None]]) -> int:
    """Run `main(stop)` on uvloop where available; SIGTERM and SIGINT set `stop` instead of killing."""
    use_uvloop()
    try:
        return asyncio.run(_with_signals(main))
    finally:
        telemetry.shutdown()  # flush the last spans and metrics of the process


async def _with_signals(main: Callable[[asyncio.Event], Awaitable[None]]) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    stop_with_supervisor()
    await main(stop)
    return 0


def freeze_startup_heap() -> None:
    """Exempt what the service built while starting (modules, models, clients: tens of thousands of objects)
    from garbage collection, once it is ready to serve.

    A full collection traverses every tracked object; a busy service allocates fast enough to run one every
    second or so, and in the gateway those traversals of long-lived objects were a fifth of its CPU. Frozen
    objects are never freed, so collect first: only what is alive now stays."""
    gc.collect()
    gc.freeze()


# A request-serving process allocates a few hundred tracked objects per request (coroutines, futures, headers,
# responses), nearly all of them freed by reference counting moments later. CPython collects its youngest generation
# whenever 700 more tracked objects were allocated than freed: in a gateway at full load, every few requests, each
# time scanning the objects of every request in flight and promoting them to older generations, whose collections
# they then set off although they are gone a moment later (8 % of the gateway's CPU, docs/performance.md).
YOUNG_COLLECTION_THRESHOLD = 50_000


def collect_young_less_often(threshold: int = YOUNG_COLLECTION_THRESHOLD) -> None:
    """Collect the youngest generation only after `threshold` more allocations than frees, not 700: what is
    garbage only through a reference cycle waits longer (at most that many objects), nothing else changes."""
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(threshold, older, oldest)


def stop_with_supervisor() -> None:
    """Under `fleetflow up`, have the kernel send SIGTERM once the supervisor is gone, even if it was killed
    or its terminal closed: its children run in their own session (so Ctrl-C reaches only the supervisor,
    which stops them in order), and nothing else would stop them. The request survives exec."""
    supervisor = os.environ.get(SUPERVISOR_ENV)
    if supervisor is None or not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != int(supervisor):  # it was gone before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


def write_status(path: Path | None, status: dict[str, Any]) -> None:
    """Atomically publish what a supervisor needs to know (bound ports, pid) once the service is ready."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps({**status, "pid": os.getpid()}))
    tmp.replace(path)
