"""The local platform's NATS as the inspecting commands (`status`, `command`, `query --commands`) reach it."""

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import nats.errors

from fleetflow.cli.errors import Unavailable

# A stale endpoints.json (the platform was killed) names a port nobody listens on any more; a NATS that is
# there but stuck does not answer in time. Both mean: the platform is not (fully) running.
UNREACHABLE = (nats.errors.NoServersError, nats.errors.TimeoutError, nats.errors.ConnectionClosedError, OSError,
               TimeoutError)  # fmt: skip


def quiet_client_logs() -> None:
    """nats-py logs every failed connect with its traceback; these commands say it in one line instead."""
    logging.getLogger("nats").setLevel(logging.CRITICAL + 1)


@contextlib.contextmanager
def reaching(url: str, data_dir: Path) -> Iterator[None]:
    """Turn "NATS does not answer" inside the block into one Unavailable line that says what to check."""
    try:
        yield
    except UNREACHABLE as exc:
        raise Unavailable(
            f"NATS at {url} does not answer ({type(exc).__name__}); the platform of data dir {data_dir} seems to "
            f"have stopped: see `fleetflow status --data-dir {data_dir}`, or start `fleetflow up` again"
        ) from None
