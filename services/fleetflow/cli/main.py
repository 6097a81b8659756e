"""`fleetflow`: run the platform locally, inspect it, and run each service or the operator."""

import argparse
import asyncio
import importlib
import os
import sys
from collections.abc import Callable
from pathlib import Path

from fleetflow.api import SpecError
from fleetflow.runtime import logs
from fleetflow.runtime.settings import SettingsError

DEFAULT_DATA_DIR = Path("fleetflow-data")
SERVICES = ("gateway", "processor", "writer")


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


def _data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir", type=Path, default=DEFAULT_DATA_DIR, help=f"local platform state (default: ./{DEFAULT_DATA_DIR})"
    )


def _service(sub: "argparse._SubParsersAction[argparse.ArgumentParser]", name: str, text: str) -> None:
    parser = sub.add_parser(name, help=text)
    parser.add_argument("--config", type=Path, help="rendered config file (default: $FLEETFLOW_CONFIG)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fleetflow", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = sub.add_parser("up", help="run DeviceFleet/Pipeline YAML locally: embedded NATS, gateway, processor, writer")
    up.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="YAML files or folders")
    _data_dir(up)
    up.add_argument("--simulate", type=int, default=0, metavar="N", help="simulate N devices")
    up.add_argument("--duration", type=positive_float, metavar="SECONDS", help="stop after this long")
    up.add_argument("--batch", type=positive_int, default=10, help="readings per simulated request (default 10)")
    up.add_argument("--interval", type=positive_float, default=1.0, help="seconds between a device's requests")
    up.add_argument("--nats-port", type=positive_int, help="port of the embedded NATS (default: a free one)")
    up.add_argument(
        "--otlp-endpoint",
        metavar="URL",
        help="send the services' traces and metrics over OTLP/gRPC, e.g. http://127.0.0.1:4317",
    )

    token = sub.add_parser("token", help="print a device's bearer token (or the fleet's application token)")
    token.add_argument("fleet")
    token.add_argument("device", nargs="?")
    token.add_argument("--application", action="store_true", help="the token applications send commands with")
    _data_dir(token)

    query = sub.add_parser("query", help="print a device's stored readings, newest first")
    query.add_argument("fleet")
    query.add_argument("device")
    _data_dir(query)
    query.add_argument("--pipeline", help="which pipeline's store (default: the only one, or the first)")
    query.add_argument("--since", help="RFC 3339 time, epoch ms, or a duration back from now such as 15m or 2h")
    query.add_argument("--until", help="same forms as --since (default: now)")
    query.add_argument("--limit", type=positive_int, default=20)
    query.add_argument("--json", action="store_true", help="one JSON object per line")

    status = sub.add_parser("status", help="health of each local service and state of each stream and consumer")
    _data_dir(status)

    simulate = sub.add_parser("simulate", help="load any gateway with simulated devices")
    simulate.add_argument("--url", required=True, help="gateway base URL, e.g. http://127.0.0.1:8080 (for grpc: "
                          "HOST:PORT; for mqtt: mqtt://HOST:PORT, as in endpoints.json)")  # fmt: skip
    simulate.add_argument("--protocol", choices=["http", "grpc", "mqtt"], default="http")
    simulate.add_argument("--fleet", required=True)
    simulate.add_argument("--devices", type=positive_int, default=10)
    simulate.add_argument("--batch", type=positive_int, default=10)
    simulate.add_argument("--interval", type=positive_float, default=1.0)
    simulate.add_argument("--duration", type=positive_float, default=10.0)
    secret = simulate.add_mutually_exclusive_group()
    secret.add_argument("--secret-file", type=Path, help="the fleet secret the gateway uses")
    secret.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="take the secret from here")

    command = sub.add_parser("command", help="send commands to devices; list them with their state history")
    actions = command.add_subparsers(dest="action", required=True, metavar="ACTION")
    send = actions.add_parser("send", help="queue a command; delivered when the device is or gets connected")
    send.add_argument("fleet")
    send.add_argument("device")
    send.add_argument("name")
    send.add_argument("params", nargs="*", metavar="KEY=VALUE", help="parameters, e.g. setpoint=4.5 mode=eco")
    send.add_argument("--ttl", type=positive_float, default=3600.0, help="seconds until it expires (default 3600)")
    listing = actions.add_parser("list", help="commands of a fleet, oldest first")
    listing.add_argument("fleet")
    listing.add_argument("--device")
    listing.add_argument("--state", help="queued, delivered, succeeded, failed, rejected or expired")
    show = actions.add_parser("show", help="one command with every state it went through")
    show.add_argument("fleet")
    show.add_argument("id")
    for action in (send, listing, show):
        _data_dir(action)
        action.add_argument("--json", action="store_true")

    bench = sub.add_parser("bench", help="measure the local platform under device load, next to raw JetStream")
    bench.add_argument("--devices", type=positive_int, default=200)
    bench.add_argument("--batch", type=positive_int, default=100, help="readings per request")
    bench.add_argument("--protocol", choices=["http", "grpc", "mqtt"], default="http")
    bench.add_argument("--duration", type=positive_float, default=60.0, help="measured seconds")
    bench.add_argument("--warmup", type=float, default=5.0, help="seconds of load before measuring")
    bench.add_argument("--rate", default="max", help="readings/s over all devices, or max (default)")
    bench.add_argument("--processors", type=positive_int, default=1, help="processor replicas")
    bench.add_argument("--baseline-seconds", type=positive_float, default=5.0, help="raw JetStream publish time")
    bench.add_argument("--cassandra", metavar="HOST:PORT", help="store into this Cassandra instead of SQLite")
    bench.add_argument("--data-dir", type=Path, help="keep the platform's data here (default: a temporary dir)")
    bench.add_argument("--json", action="store_true", help="print the report as JSON")
    bench.add_argument(
        "--pipeline",
        type=Path,
        metavar="DIR",
        help="run the pipeline (and its fleet) in DIR, e.g. examples/cold-chain; default: no steps",
    )
    bench.add_argument(
        "--engine-only",
        action="store_true",
        help="measure only the pipeline's step engine, in this process: readings/s per core, per step",
    )
    bench.add_argument("--durability", choices=["default", "strict"], default="default",
                       help="strict: JetStream fsyncs before every ack (sync_interval always)")  # fmt: skip

    crds = sub.add_parser("crds", help="print the CustomResourceDefinitions, or write them to a folder")
    crds.add_argument("--write", type=Path, metavar="DIR")

    _service(sub, "gateway", "run the device gateway (as a pod or a local child process does)")
    _service(sub, "processor", "run a pipeline processor replica")
    _service(sub, "writer", "run a pipeline writer")

    operator = sub.add_parser("operator", help="run the Kubernetes operator")
    where = operator.add_mutually_exclusive_group()
    where.add_argument("--namespace", "-n", action="append", dest="namespaces", help="watch this namespace (repeat)")
    where.add_argument("--all-namespaces", "-A", action="store_true", help="watch every namespace (default)")
    return parser


def _run_service(name: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        module = importlib.import_module(f"fleetflow.{name}.main")
        config = args.config or (Path(os.environ["FLEETFLOW_CONFIG"]) if "FLEETFLOW_CONFIG" in os.environ else None)
        return int(module.main(config))

    return run


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from fleetflow.cli import commands
    from fleetflow.gateway import command_admin

    if args.command not in SERVICES:
        # Services set up their own logging; the command's own lines go to stderr, so stdout stays clean
        # for --json and for piping.
        logs.configure("info" if args.command in ("up", "operator") else "warning", "auto")

    handlers: dict[str, Callable[[argparse.Namespace], int]] = {
        "up": commands.up,
        "token": commands.token,
        "query": lambda a: asyncio.run(commands.query(a)),
        "status": lambda a: asyncio.run(commands.status(a)),
        "simulate": lambda a: asyncio.run(commands.simulate_load(a)),
        "crds": commands.crds,
        "bench": commands.bench,
        "command": lambda a: asyncio.run(command_admin.run_cli(a)),
        "gateway": _run_service("gateway"),
        "processor": _run_service("processor"),
        "writer": _run_service("writer"),
        "operator": commands.operator,
    }
    try:
        return handlers[args.command](args)
    except (SpecError, SettingsError, commands.UsageError) as exc:
        print(f"fleetflow {args.command}: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `fleetflow status | head`: the reader left, which is not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
