"""Running `fleetflow` as a user does: a subprocess, its exit code, stdout and stderr."""

import os
import subprocess
import sys
from pathlib import Path


def fleetflow(*argv: str | Path, timeout: float = 60, env: dict[str, str] | None = None,
              cwd: Path | None = None) -> subprocess.CompletedProcess[str]:  # fmt: skip
    return subprocess.run([sys.executable, "-m", "fleetflow.cli", *map(str, argv)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})}, cwd=cwd)  # fmt: skip


def one_line_error(result: subprocess.CompletedProcess[str], exit_code: int, *fragments: str) -> str:
    """Assert the command failed with `exit_code` and one line on stderr naming each fragment; that line."""
    assert result.returncode == exit_code, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fleetflow "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    return lines[0]
