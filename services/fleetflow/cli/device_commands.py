"""`fleetflow command send|list|show`: commands to devices on the NATS of the local platform (the same stream
and state bucket the gateways use), so it works whether or not a gateway is running."""

import argparse
import json
from pathlib import Path

from fleetflow.cli import arguments, datadir, tables
from fleetflow.cli.errors import UsageError
from fleetflow.cli.platform_nats import admin_connection
from fleetflow.gateway import command_admin
from fleetflow.runtime.commands import CommandError, CommandRecord

HEADER = ("ID", "DEVICE", "NAME", "STATE", "CREATED", "SOURCE")


def fleet_nats(data_dir: Path, fleet: str) -> str:
    """The NATS URL of the running platform, once `fleet` is known to run there: a mistyped fleet must not get
    a command stream or state bucket of its own."""
    datadir.running_fleet(data_dir, fleet)
    return datadir.nats_url(data_dir)


def row(record: CommandRecord) -> tuple[str, ...]:
    c = record.command
    return (c.id, c.device, c.name, record.state, tables.utc(c.created_ms), c.source)


def print_records(records: list[CommandRecord], as_json: bool) -> None:
    if as_json:
        for record in records:
            print(json.dumps(record.to_json()))
    else:
        print(tables.render(HEADER, [row(r) for r in records]))


async def run(args: argparse.Namespace) -> int:
    arguments.identifiers(args.fleet, args.device)
    url = fleet_nats(args.data_dir, args.fleet)
    try:
        async with admin_connection(url, args.data_dir, connect_timeout=5) as nc:
            if args.action == "send":
                params = command_admin.parse_params(args.params)
                record = await command_admin.send(nc, args.fleet, args.device, args.name, params, args.ttl)
                print(json.dumps(record.to_json()) if args.json else command_admin.describe(record))
            elif args.action == "list":
                print_records(await command_admin.list_records(nc, args.fleet, args.device, args.state), args.json)
            else:
                record = await command_admin.show(nc, args.fleet, args.id)
                print(json.dumps(record.to_json(), indent=2) if args.json else command_admin.describe(record))
    except CommandError as exc:
        raise UsageError(exc.detail) from None
    return 0
