"""Service child processes: started from a rendered config file, stopped by SIGTERM (restarts: supervisor.py)."""

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
import yaml

from fleetflow.local import private
from fleetflow.runtime.service import SUPERVISOR_ENV

log = structlog.get_logger(__name__)


class ChildFailed(RuntimeError):
    """A child exited during start-up; the message names it and quotes the end of its log."""


@dataclass
class ServiceProcess:
    """One service (gateway, processor replica or writer) run as `python -m fleetflow.cli <kind> --config`."""

    name: str
    kind: str
    config: dict[str, Any]
    run_dir: Path
    process: subprocess.Popen[bytes] | None = None
    status: dict[str, Any] = field(default_factory=dict)
    restarts: int = 0
    stopping: bool = False
    started_at: float = 0.0

    @property
    def config_file(self) -> Path:
        return self.run_dir / f"{self.name}.yaml"

    @property
    def status_file(self) -> Path:
        return self.run_dir / f"{self.name}.status.json"

    @property
    def log_file(self) -> Path:
        return self.run_dir.parent / "logs" / f"{self.name}.log"

    def spawn(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True, mode=private.DIR_MODE)
        private.write_private(self.config_file, yaml.safe_dump(self.config, sort_keys=False))
        self.status_file.unlink(missing_ok=True)
        env = {**os.environ, "FLEETFLOW_STATUS_FILE": str(self.status_file), "FLEETFLOW_LOG_FORMAT": "json",
               SUPERVISOR_ENV: str(os.getpid())}  # fmt: skip
        with private.open_private_log(self.log_file) as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "fleetflow.cli", self.kind, "--config", str(self.config_file)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # Ctrl-C reaches the supervisor, which stops children in order
                umask=private.UMASK,  # its store, buffer and status files are private too
            )
        self.started_at = time.monotonic()

    async def wait_ready(self, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise ChildFailed(
                    f"{self.name} exited with code {self.process.returncode} during start-up; "
                    f"its log is {self.log_file}:\n{tail(self.log_file)}"
                )
            if self.status_file.exists():
                self.status = json.loads(self.status_file.read_text())
                return self.status
            await asyncio.sleep(0.05)
        raise TimeoutError(f"{self.name} not ready after {timeout}s; see {self.log_file}")

    def crashed(self) -> bool:
        return not self.stopping and self.process is not None and self.process.poll() is not None

    @property
    def exit_code(self) -> int | None:
        return self.process.poll() if self.process else None

    async def stop(self, timeout: float = 30.0) -> int | None:
        self.stopping = True
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(signal.SIGTERM)
        try:
            return await asyncio.to_thread(self.process.wait, timeout)
        except subprocess.TimeoutExpired:
            log.warning("service did not stop in time; killing it", service=self.name, timeout=timeout)
            self.process.kill()
            return await asyncio.to_thread(self.process.wait)


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
