"""Checks of command-line values; each refusal names the value and what is accepted."""

import argparse

from fleetflow.api.identifiers import check_device_id, check_resource_name
from fleetflow.cli.errors import UsageError


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be 1 or more")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be more than 0")
    return value


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be 0 or more")
    return value


def identifiers(fleet: str, device: str | None = None) -> None:
    """UsageError unless `fleet` is a valid resource name and `device` (when given) a valid device id."""
    try:
        check_resource_name(fleet, "fleet")
        if device is not None:
            check_device_id(device)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def host_port(text: str) -> tuple[str, int]:
    """HOST:PORT, e.g. 0.0.0.0:7422."""
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r}: use HOST:PORT, e.g. 127.0.0.1:7422 or 0.0.0.0:7422")
    return host, int(port)
