"""The local platform's NATS as the inspecting commands (`status`, `command`, `query --commands`) reach it."""

import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats.errors
from nats.aio.client import Client

from fleetflow.cli.errors import Unavailable, UsageError
from fleetflow.local import natslogins

# A stale endpoints.json (the platform was killed) names a port nobody listens on any more; a NATS that is
# there but stuck does not answer in time. Both mean: the platform is not (fully) running.
UNREACHABLE = (nats.errors.NoServersError, nats.errors.TimeoutError, nats.errors.ConnectionClosedError, OSError,
               TimeoutError)  # fmt: skip


def quiet_client_logs() -> None:
    """nats-py logs every failed connect with its traceback; these commands say it in one line instead."""
    logging.getLogger("nats").setLevel(logging.CRITICAL + 1)


@contextlib.asynccontextmanager
async def admin_connection(url: str, data_dir: Path, connect_timeout: float = 3) -> AsyncIterator[Client]:
    """The local platform's NATS, logged in as its admin user (the password is in the data dir); a refused or
    missing login is one line naming the file, an unreachable server one line saying what to check."""
    with reaching(url, data_dir):
        try:
            nc = await natslogins.connect_admin(data_dir, url, connect_timeout=connect_timeout, allow_reconnect=False,
                                                max_reconnect_attempts=1, reconnect_time_wait=0.2)  # fmt: skip
        except natslogins.NatsLoginError as exc:
            raise UsageError(str(exc)) from None
        try:
            yield nc
        finally:
            await nc.close()


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
