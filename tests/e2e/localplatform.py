"""Running `fleetflow up` in a subprocess for end-to-end tests, as a user would."""

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nats.aio.client import Client

from fleetflow.local import natslogins


@dataclass
class RunningPlatform:
    process: subprocess.Popen[str]
    data_dir: Path
    endpoints: dict[str, Any]

    def gateway(self, fleet: str) -> str:
        return str(self.endpoints["fleets"][fleet]["http"])

    async def connect_nats(self) -> Client:
        """A connection to the platform's NATS as its admin user, as the CLI connects."""
        return await natslogins.connect_admin(self.data_dir, self.endpoints["nats"]["url"])

    def stop(self, timeout: float = 90) -> str:
        """SIGTERM, as Ctrl-C or a service manager would; returns everything `fleetflow up` printed."""
        self.process.send_signal(signal.SIGTERM)
        output, _ = self.process.communicate(timeout=timeout)
        return output


@contextmanager
def fleetflow_up(
    data_dir: Path,
    *paths: Path,
    extra: tuple[str, ...] = (),
    timeout: float = 60,
    env: dict[str, str] | None = None,
    new_session: bool = False,
) -> Iterator[RunningPlatform]:
    """`new_session`: `fleetflow up` leads a process group of its own, as in a terminal, where Ctrl-C goes to
    the whole foreground group."""
    endpoints = data_dir / "endpoints.json"
    endpoints.unlink(missing_ok=True)
    command = [sys.executable, "-m", "fleetflow.cli", "up", *map(str, paths), "--data-dir", str(data_dir), *extra]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
        start_new_session=new_session,
    )
    try:
        deadline = time.monotonic() + timeout
        while not endpoints.exists():
            if process.poll() is not None:
                raise AssertionError(f"fleetflow up exited with {process.returncode}:\n{process.communicate()[0]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"fleetflow up did not write {endpoints} within {timeout}s")
            time.sleep(0.05)
        yield RunningPlatform(process, data_dir, json.loads(endpoints.read_text()))
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
