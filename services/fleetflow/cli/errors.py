"""What the `fleetflow` command says when it cannot do what was asked: one line on stderr and an exit code.

2 is a usage error (a value on the command line that is not acceptable, or a data dir that holds no such
thing); 1 is a runtime failure (the platform is not running, NATS does not answer, no Kubernetes config);
130 is Ctrl-C. Anything else that escapes a command is a bug: it is reported on one line with a hint to run
again with --debug, which shows the traceback."""

import os
import sys
import traceback
from pathlib import Path

EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130


class CliError(Exception):
    """A problem the user can fix; the message names the value and what to do."""

    exit_code = EXIT_FAILURE


class UsageError(CliError, ValueError):
    """A command-line value that is not acceptable; the message says what would be."""

    exit_code = EXIT_USAGE


class Unavailable(CliError):
    """Something the command needs is not there or does not answer (the platform, NATS, a gateway, a cluster)."""

    exit_code = EXIT_FAILURE


def one_line(text: str) -> str:
    """Messages from libraries sometimes span lines; a CLI error stays on one."""
    return " ".join(str(text).split())


def report(command: str, message: str) -> None:
    print(f"fleetflow {command}: {one_line(message)}", file=sys.stderr, flush=True)


def report_unexpected(command: str, exc: BaseException, debug: bool, logs: Path | None = None) -> int:
    """A bug or an unforeseen failure: one line, or the traceback with --debug."""
    if debug:
        traceback.print_exception(exc, file=sys.stderr)
    detail = one_line(str(exc)) or "(no message)"
    hint = "" if debug else "; run it again with --debug (or FLEETFLOW_DEBUG=1) to see where"
    where = f"; the services' logs are in {logs}" if logs else ""
    report(command, f"unexpected {type(exc).__name__}: {detail}{where}{hint}")
    return EXIT_FAILURE


def debug_requested() -> bool:
    return os.environ.get("FLEETFLOW_DEBUG", "") not in ("", "0")
