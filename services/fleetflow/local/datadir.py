"""One `fleetflow up` per data dir: a second one would start a second nats-server on the same JetStream store
and, when it stops, remove the endpoints.json of the first."""

import fcntl
import os
from pathlib import Path

LOCK_NAME = "up.lock"


class DataDirInUse(RuntimeError):
    """Another `fleetflow up` holds the data dir; the message names its PID and how to stop it."""


class DataDirLock:
    """An flock on `<data dir>/up.lock`, which holds the owner's PID. The kernel releases it when the owner
    exits, however it exits, so a crashed `up` never leaves a stale lock behind."""

    def __init__(self, data_dir: Path):
        self.path = data_dir / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise DataDirInUse(
                f"data dir {self.path.parent} is in use by another fleetflow up (pid {owner}); stop it with Ctrl-C "
                f"in its terminal or `kill -TERM {owner}`, or give this one another --data-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the last descriptor releases the flock
            self._fd = None
