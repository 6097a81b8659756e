"""What `fleetflow command send|list|show` does (fleetflow.cli.device_commands prints it): commands sent and
inspected directly on the fleet's NATS (the same stream and state bucket the gateways use), so it works whether
or not a gateway is running. The caller connects (the CLI: as the local platform's admin user) and closes the
connection."""

import json
from datetime import UTC, datetime
from typing import Any

from nats.aio.client import Client

from fleetflow.runtime.commands import (
    DEFAULT_TTL_MS,
    STATES,
    CommandError,
    CommandRecord,
    CommandStore,
    new_command,
    send_command,
)


def parse_params(pairs: list[str]) -> dict[str, Any]:
    """`key=value` pairs; a value that reads as JSON (a number, true/false/null, a quoted string, an object, a
    list) is taken as such, anything else as a string: `setpoint=4.5 mode=eco 'slots=[1, 2]'`."""
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise CommandError(400, "invalid_command", f"parameter {pair!r} is not key=value")
        try:
            value = json.loads(text)
        except ValueError:
            value = text
        params[key] = value
    return params


async def send(nc: Client, fleet: str, device: str, name: str, params: dict[str, Any] | None = None,
               ttl_seconds: float = DEFAULT_TTL_MS / 1000) -> CommandRecord:  # fmt: skip
    """Queue a command for `device`; it is delivered when the device is (or next gets) connected."""
    command = new_command(fleet, device, name, params, int(ttl_seconds * 1000), source="cli")
    js = nc.jetstream()
    return await send_command(js, await CommandStore.open(js, fleet), command)


async def list_records(nc: Client, fleet: str, device: str | None = None,
                       state: str | None = None) -> list[CommandRecord]:  # fmt: skip
    """Commands of the fleet (or one device), oldest first, optionally only those in `state`."""
    if state is not None and state not in STATES:
        raise CommandError(400, "invalid_state", f"state {state!r} is not one of {', '.join(STATES)}")
    return await (await CommandStore.open(nc.jetstream(), fleet)).list(device, state)


async def show(nc: Client, fleet: str, command_id: str) -> CommandRecord:
    record = await (await CommandStore.open(nc.jetstream(), fleet)).find(command_id)
    if record is None:
        raise CommandError(404, "unknown_command", f"no command with id {command_id!r} in fleet {fleet!r}")
    return record


def _time(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def describe(record: CommandRecord) -> str:
    """The command and its state history, as `fleetflow command show` prints it."""
    c = record.command
    lines = [
        f"command  {c.id}",
        f"device   {c.device} (fleet {c.fleet})",
        f"name     {c.name}",
        f"params   {json.dumps(c.params)}",
        f"source   {c.source}",
        f"expires  {_time(record.expires_ms)}",
        f"state    {record.state}",
        "history",
    ]
    lines += [f"  {_time(t.at_ms)}  {t.state:<9}  {t.detail}".rstrip() for t in record.history]
    return "\n".join(lines)
