"""`fleetflow`: run the platform locally, inspect it, and run each service or the operator."""

import argparse
import asyncio
import importlib
import os
import sys
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TypeAlias

from fleetflow.cli import errors
from fleetflow.cli.arguments import host_port, positive_float, positive_int, seconds

DEFAULT_DATA_DIR = Path("fleetflow-data")
DEFAULT_EDGE_DATA_DIR = Path("fleetflow-edge-data")
SERVICES = ("gateway", "processor", "writer", "appapi")
# Commands that only look at the local platform: their own one-line errors replace the libraries' log lines.
INSPECTING = ("token", "query", "status", "simulate", "command")
EPILOG = "Errors exit with 2 for a bad command line or data dir, 1 when something is not running or answering."


def fleetflow_version() -> str:
    try:
        return version("fleetflow")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def _common() -> argparse.ArgumentParser:
    """Options every subcommand takes after its name too (`fleetflow query ... --debug`)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", "-v", action="store_true", default=argparse.SUPPRESS,
                        help="on an unexpected error, print the traceback too (also: FLEETFLOW_DEBUG=1)")  # fmt: skip
    return common


def _data_dir(parser: argparse._ActionsContainer) -> None:
    text = "the local platform's state, where `fleetflow up` keeps it (default: %(default)s)"
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, metavar="DIR", help=text)


def _service(sub: Subparsers, name: str, text: str, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser(name, help=text, description=text, parents=[common])
    parser.add_argument("--config", type=Path, metavar="FILE",
                        help="rendered config file (default: the file $FLEETFLOW_CONFIG names)")  # fmt: skip


def _up(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    text = "run DeviceFleet/Pipeline YAML locally: embedded NATS, gateway, processor, writer"
    up = sub.add_parser("up", help=text, description=text, parents=[common])
    up.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="YAML files or folders")
    _data_dir(up)
    up.add_argument("--simulate", type=int, default=0, metavar="N",
                    help="simulate N devices of the first fleet (default: %(default)s)")  # fmt: skip
    up.add_argument("--duration", type=positive_float, metavar="SECONDS",
                    help="stop after this long (default: run until Ctrl-C or SIGTERM)")  # fmt: skip
    up.add_argument("--batch", type=positive_int, default=10, metavar="N",
                    help="readings per simulated request (default: %(default)s)")  # fmt: skip
    up.add_argument("--interval", type=positive_float, default=1.0, metavar="SECONDS",
                    help="seconds between a simulated device's requests (default: %(default)s)")  # fmt: skip
    up.add_argument("--nats-port", type=positive_int, metavar="PORT",
                    help="port of the embedded NATS (default: a free one)")  # fmt: skip
    up.add_argument("--leafnode-tls", nargs=2, type=Path, metavar=("CERT", "KEY"),
                    help="serve edge sites over TLS with this certificate and key (PEM); they dial tls:// (default: "
                         "plain TCP)")  # fmt: skip
    up.add_argument("--leafnode-listen", type=host_port, metavar="HOST:PORT",
                    help="where edge sites' leaf nodes dial in, for fleets with spec.sites (default: 127.0.0.1 and a "
                         "free port; see docs/edge.md)")  # fmt: skip
    up.add_argument("--gateway-tls", nargs=2, type=Path, metavar=("CERT", "KEY"),
                    help="serve devices' HTTP, WebSocket and gRPC over TLS only, with this certificate and key (PEM) "
                         "(default: plain)")  # fmt: skip
    up.add_argument("--device-ca", type=Path, metavar="CA",
                    help="with --gateway-tls: devices may present certificates this CA (PEM) signed, whose subject CN "
                         "is the device id, instead of a token; required when the fleet says "
                         "spec.gateway.tls.clientAuth.mode: Required (default: devices present tokens; see "
                         "docs/devices.md)")  # fmt: skip
    up.add_argument("--otlp-endpoint", metavar="URL",
                    help="send the services' traces and metrics over OTLP/gRPC, e.g. http://127.0.0.1:4317 "
                         "(default: not exported)")  # fmt: skip


def _edge(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    text = "run an edge site of a fleet here: its own NATS (a leaf node of the hub), gateway and edge pipelines"
    edge = sub.add_parser("edge", help=text, description=text, parents=[common])
    actions = edge.add_subparsers(dest="action", required=True, metavar="ACTION")
    up = actions.add_parser("up", parents=[common], epilog=EPILOG, help="run the site until Ctrl-C (docs/edge.md)",
                            description=f"{text}. See docs/edge.md.")  # fmt: skip
    up.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="YAML files or folders (the fleet's)")
    up.add_argument("--hub", required=True, metavar="URL",
                    help="the hub's leaf-node listener, nats://HOST:PORT or tls://HOST:PORT")  # fmt: skip
    up.add_argument("--hub-ca", type=Path, metavar="FILE",
                    help="with a tls:// hub: the CA certificate (PEM) that signed the hub's certificate (default: "
                         "the system's CAs)")  # fmt: skip
    up.add_argument("--credentials", required=True, type=Path, metavar="FILE",
                    help="the site's password on the hub (the hub's fleetflow up writes it to "
                         "<data-dir>/secrets/sites/<fleet>-<site>.password)")  # fmt: skip
    up.add_argument("--site", metavar="NAME", help="which of the fleet's sites (default: its only one)")
    up.add_argument("--fleet", metavar="NAME", help="which fleet (default: the only one with sites)")
    up.add_argument("--data-dir", type=Path, default=DEFAULT_EDGE_DATA_DIR, metavar="DIR",
                    help="the site's state: JetStream store, SQLite store, logs (default: %(default)s)")  # fmt: skip
    up.add_argument("--simulate", type=int, default=0, metavar="N",
                    help="simulate N devices of the site (default: %(default)s)")  # fmt: skip
    up.add_argument("--duration", type=positive_float, metavar="SECONDS",
                    help="stop after this long (default: run until Ctrl-C or SIGTERM)")  # fmt: skip
    up.add_argument("--batch", type=positive_int, default=10, metavar="N",
                    help="readings per simulated request (default: %(default)s)")  # fmt: skip
    up.add_argument("--interval", type=positive_float, default=1.0, metavar="SECONDS",
                    help="seconds between a simulated device's requests (default: %(default)s)")  # fmt: skip
    up.add_argument("--nats-port", type=positive_int, metavar="PORT",
                    help="port of the site's NATS (default: a free one)")  # fmt: skip
    revoke = actions.add_parser("revoke", parents=[common], epilog=EPILOG, help="refuse a site's next connection "
                                "to this hub (docs/edge.md)", description="revoke an edge site at the hub: its "
                                "password is forgotten and its next leaf connection refused; a running `fleetflow "
                                "up` applies it within a second. See docs/edge.md.")  # fmt: skip
    revoke.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="YAML files or folders (the fleet's)")
    revoke.add_argument("--site", metavar="NAME", help="which of the fleet's sites (default: its only one)")
    revoke.add_argument("--fleet", metavar="NAME", help="which fleet (default: the only one with sites)")
    _data_dir(revoke)


def _token(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    text = "print a device's bearer token (or the fleet's application token)"
    token = sub.add_parser("token", help=text, parents=[common], epilog=EPILOG, description=(
        f"{text}. The fleet's secret must be in the data dir (`fleetflow up` puts it there); a fleet not known "
        "there is refused, unless --create makes a new secret for it."))  # fmt: skip
    token.add_argument("fleet", metavar="FLEET", help="the DeviceFleet's name")
    token.add_argument("device", nargs="?", metavar="DEVICE", help="the device id (omit with --application)")
    token.add_argument("--application", action="store_true",
                       help="the token applications send commands with, instead of a device's")  # fmt: skip
    token.add_argument(
        "--create",
        action="store_true",
        help="create the fleet's secret if the data dir has none (for a fleet that has not run yet)",
    )
    _data_dir(token)


def _query(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    text = "print stored readings, aggregates or alerts, the commands sent, or the devices, newest first"
    query = sub.add_parser("query", help=text, parents=[common], epilog=EPILOG, description=(
        f"{text}. Readings, aggregates, alerts and a device's commands come from the pipeline's store (also after "
        "the platform stopped); a fleet's commands come from the running platform's command state, as `fleetflow "
        "command list` shows them. With --api the same come through the fleet's application API."))  # fmt: skip
    query.add_argument("fleet", metavar="FLEET", help="the DeviceFleet's name")
    query.add_argument("device", nargs="?", metavar="DEVICE",
                       help="the device id; needed for readings, narrows the other kinds (aggregates: its "
                            "device=DEVICE windows)")  # fmt: skip
    kind = query.add_mutually_exclusive_group()
    kind.add_argument("--aggregates", action="store_true", help="closed window aggregates instead of readings")
    kind.add_argument("--alerts", action="store_true", help="alert transitions (firing, resolved) instead")
    kind.add_argument(
        "--commands",
        action="store_true",
        help="commands and their state histories instead: a "
        "device's from the store's command log, a whole fleet's from the running platform",
    )
    kind.add_argument("--devices", action="store_true",
                      help="the devices last heard from (in --since/--until), each with its latest reading, from "
                           "the store's last-value table; with DEVICE that device")  # fmt: skip
    _data_dir(query)
    query.add_argument(
        "--pipeline",
        metavar="NAME",
        help="which pipeline's store (default: the fleet's first pipeline in pipelines.json; with --api, by name)",
    )
    query.add_argument("--since", metavar="T",
                       help="RFC 3339 time, epoch ms, or a duration back from now such as 15m or 2h "
                            "(default: from the beginning)")  # fmt: skip
    query.add_argument("--until", metavar="T", help="same forms as --since (default: now)")
    query.add_argument("--limit", type=positive_int, default=20, metavar="N",
                       help="at most this many rows, the newest (default: %(default)s)")  # fmt: skip
    query.add_argument("--json", action="store_true", help="one JSON object per line instead of a table")
    query.add_argument("--api", metavar="URL",
                       help="read through the fleet's application API at URL (fleets.FLEET.api in endpoints.json, "
                            "or a cluster's API) (default: the data dir's store)")  # fmt: skip
    query.add_argument("--key", metavar="KEY",
                       help="the API key for --api, scope read (default: $FLEETFLOW_API_KEY, which keeps it out of "
                            "shell history)")  # fmt: skip
    query.add_argument("--wait", type=seconds, default=0.0, metavar="SECONDS",
                       help="wait up to this long for at least one row, e.g. right after sending "
                            "(default: %(default)s)")  # fmt: skip


def _status(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    text = "health of each local service and state of each stream and consumer"
    status = sub.add_parser("status", help=text, description=text, parents=[common], epilog=EPILOG)
    _data_dir(status)
    status.add_argument("--wait", type=seconds, default=0.0, metavar="SECONDS",
                        help="wait up to this long for the platform to start and every service to be ready, "
                             "e.g. after `fleetflow up ... &` in a script (default: %(default)s)")  # fmt: skip


def _simulate(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    text = "load a gateway with simulated devices"
    simulate = sub.add_parser("simulate", help=text, parents=[common], epilog=EPILOG, description=(
        f"{text}. The endpoint is checked first, so a wrong URL or protocol fails at once. Ctrl-C stops early: "
        "the devices send what they hold, the summary is printed, and the exit code is 130."))  # fmt: skip
    simulate.add_argument("--url", help="the gateway endpoint for the protocol: http://HOST:PORT for http, HOST:PORT "
                          "for grpc, mqtt://HOST:PORT for mqtt, ws://HOST:PORT for ws, coap://HOST:PORT for coap "
                          "(default: the fleet's endpoint in the data dir's endpoints.json)")  # fmt: skip
    simulate.add_argument("--protocol", choices=["http", "grpc", "mqtt", "ws", "coap"], default="http",
                          help="how the devices connect (default: %(default)s)")  # fmt: skip
    simulate.add_argument("--fleet", required=True, help="the DeviceFleet's name")
    simulate.add_argument("--devices", type=positive_int, default=10, metavar="N",
                          help="simulated devices, sim-0000, sim-0001, ... (default: %(default)s)")  # fmt: skip
    simulate.add_argument("--batch", type=positive_int, default=10, metavar="N",
                          help="readings per request (default: %(default)s)")  # fmt: skip
    simulate.add_argument("--interval", type=positive_float, default=1.0, metavar="SECONDS",
                          help="seconds between a device's requests (default: %(default)s)")  # fmt: skip
    simulate.add_argument("--duration", type=positive_float, default=10.0, metavar="SECONDS",
                          help="how long the devices send (default: %(default)s)")  # fmt: skip
    secret = simulate.add_mutually_exclusive_group()
    secret.add_argument("--secret-file", type=Path, metavar="FILE",
                        help="the fleet secret the gateway uses (default: the one in --data-dir)")  # fmt: skip
    _data_dir(secret)


def _command(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    text = "send commands to devices; list them with their state history"
    command = sub.add_parser("command", help=text, description=text, parents=[common])
    actions = command.add_subparsers(dest="action", required=True, metavar="ACTION")
    send = actions.add_parser("send", parents=[common], epilog=EPILOG,
                              help="queue a command; delivered when the device is or gets connected")  # fmt: skip
    send.add_argument("fleet", metavar="FLEET", help="the DeviceFleet's name")
    send.add_argument("device", metavar="DEVICE", help="the device id")
    send.add_argument("name", metavar="NAME", help="the command's name, e.g. set or reboot")
    send.add_argument("params", nargs="*", metavar="KEY=VALUE",
                      help="parameters, e.g. setpoint=4.5 mode=eco; a value that reads as JSON is JSON")  # fmt: skip
    send.add_argument("--ttl", type=positive_float, default=3600.0, metavar="SECONDS",
                      help="seconds until it expires if no device took it (default: %(default)s)")  # fmt: skip
    listing = actions.add_parser("list", parents=[common], epilog=EPILOG, help="commands of a fleet, oldest first")
    listing.add_argument("fleet", metavar="FLEET", help="the DeviceFleet's name")
    listing.add_argument("--device", help="only this device's commands (default: every device's)")
    listing.add_argument("--state", help="only commands in this state: queued, forwarded (edge sites), delivered, "
                         "succeeded, failed, rejected or expired (default: any)")  # fmt: skip
    show = actions.add_parser("show", parents=[common], epilog=EPILOG,
                              help="one command with every state it went through")  # fmt: skip
    show.add_argument("fleet", metavar="FLEET", help="the DeviceFleet's name")
    show.add_argument("id", metavar="ID", help="the command's id, as `command list` prints it")
    show.set_defaults(device=None)
    for action in (send, listing, show):
        _data_dir(action)
        action.add_argument("--json", action="store_true", help="JSON instead of text")


def _api_key(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    text = "create, list and revoke a fleet's application API keys"
    api_key = sub.add_parser("api-key", help=text, description=text, parents=[common], epilog=EPILOG)
    key_actions = api_key.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = key_actions.add_parser("create", help="create a key and print it (it is stored hashed: shown only now)",
                                    parents=[common])  # fmt: skip
    create.add_argument("fleet", help="the DeviceFleet's name")
    create.add_argument("--scope", required=True, choices=["read", "command", "admin"],
                        help="what the key may do; each includes the ones before it")  # fmt: skip
    create.add_argument("--name", help="who or what the key is for (default: none)")
    key_list = key_actions.add_parser("list", help="the fleet's keys: id, scope, name, created, revoked",
                                      parents=[common])  # fmt: skip
    key_list.add_argument("fleet", help="the DeviceFleet's name")
    key_list.add_argument("--json", action="store_true", help="one JSON object per line instead of a table")
    revoke = key_actions.add_parser("revoke", help="revoke a key by its id; it stops working at once",
                                    parents=[common])  # fmt: skip
    revoke.add_argument("fleet", help="the DeviceFleet's name")
    revoke.add_argument("id", help="the key's id, as `list` shows it")
    for action in (create, key_list, revoke):
        where = action.add_mutually_exclusive_group()
        where.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, metavar="DIR",
                           help="keys of the local platform here (default: %(default)s)")  # fmt: skip
        where.add_argument("--keys-file", type=Path, metavar="FILE",
                           help="this key file instead, e.g. for a cluster's Secret (default: none)")  # fmt: skip


def _bench(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    text = "measure the local platform under device load, next to raw JetStream"
    bench = sub.add_parser("bench", help=text, description=text, parents=[common])
    bench.add_argument("--devices", type=positive_int, default=200, metavar="N",
                       help="simulated devices (default: %(default)s)")  # fmt: skip
    bench.add_argument("--batch", type=positive_int, default=100, metavar="N",
                       help="readings per request (default: %(default)s)")  # fmt: skip
    bench.add_argument("--protocol", choices=["http", "grpc", "mqtt", "ws", "coap"], default="http",
                       help="how the devices connect; ws: one session per device, coap: a confirmable POST per "
                       "batch (default: %(default)s)")  # fmt: skip
    bench.add_argument("--duration", type=positive_float, default=60.0, metavar="SECONDS",
                       help="measured seconds (default: %(default)s)")  # fmt: skip
    bench.add_argument("--warmup", type=seconds, default=5.0, metavar="SECONDS",
                       help="seconds of load before measuring (default: %(default)s)")  # fmt: skip
    bench.add_argument("--rate", default="max", metavar="R",
                       help="readings/s over all devices, or max (default: %(default)s)")  # fmt: skip
    bench.add_argument("--processors", type=positive_int, default=1, metavar="N",
                       help="processor replicas (default: %(default)s)")  # fmt: skip
    bench.add_argument("--baseline-seconds", type=positive_float, default=5.0, metavar="SECONDS",
                       help="how long raw JetStream publishing is measured (default: %(default)s)")  # fmt: skip
    bench.add_argument("--cassandra", metavar="HOST:PORT",
                       help="store into this Cassandra (default: SQLite in the data dir)")  # fmt: skip
    bench.add_argument("--data-dir", type=Path, metavar="DIR",
                       help="keep the platform's data here (default: a temporary dir)")  # fmt: skip
    bench.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    bench.add_argument("--commands", action="store_true",
                       help="instead: hold --devices gRPC devices on one gateway and send each a command")  # fmt: skip
    bench.add_argument("--pipeline", type=Path, nargs="+", metavar="PATH",
                       help="run the one pipeline (and its fleet) in these files or directories, e.g. "
                       "examples/cold-chain (default: no steps)")  # fmt: skip
    bench.add_argument("--pipeline-name", metavar="NAME",
                       help="with --pipeline: which pipeline, when the paths hold several "
                       "(default: the only one)")  # fmt: skip
    bench.add_argument("--engine-only", action="store_true",
                       help="with --pipeline: measure only its step engine, in this process: readings/s per core, "
                       "per step")  # fmt: skip
    bench.add_argument("--durability", choices=["default", "strict"], default="default",
                       help="strict: JetStream fsyncs before every ack, sync_interval always "
                       "(default: %(default)s)")  # fmt: skip
    bench.add_argument("--channels", type=positive_int, default=8, metavar="N",
                       help="with --commands: gRPC channels the devices share (default: %(default)s)")  # fmt: skip
    bench.add_argument("--api", action="store_true",
                       help="instead: the application API over a big store (docs/performance.md)")  # fmt: skip
    bench.add_argument("--api-readings", type=positive_int, default=10_000_000, metavar="N",
                       help="with --api: readings stored before measuring (default: %(default)s)")  # fmt: skip
    bench.add_argument("--api-devices", type=positive_int, default=10_000, metavar="N",
                       help="with --api: devices they belong to (default: %(default)s)")  # fmt: skip
    bench.add_argument("--subscribers", type=positive_int, default=100, metavar="N",
                       help="with --api: live event stream clients (default: %(default)s)")  # fmt: skip


def _operator(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    text = "run the Kubernetes operator (in-cluster credentials, else the current kubeconfig context)"
    operator = sub.add_parser("operator", help=text, description=text, parents=[common])
    where = operator.add_mutually_exclusive_group()
    where.add_argument("--namespace", "-n", action="append", dest="namespaces", metavar="NS",
                       help="watch this namespace (repeat for more; default: every namespace)")  # fmt: skip
    where.add_argument("--all-namespaces", "-A", action="store_true", help="watch every namespace (the default)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fleetflow", description=__doc__, epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"%(prog)s {fleetflow_version()}")
    parser.add_argument("--debug", "-v", action="store_true",
                        help="on an unexpected error, print the traceback too (also: FLEETFLOW_DEBUG=1)")  # fmt: skip
    common = _common()
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _up(sub, common)
    _edge(sub, common)
    _token(sub, common)
    _query(sub, common)
    _status(sub, common)
    _simulate(sub, common)
    _command(sub, common)
    _api_key(sub, common)
    _bench(sub, common)
    crds = sub.add_parser("crds", help="print the CustomResourceDefinitions, or write them to a folder",
                          parents=[common])  # fmt: skip
    crds.add_argument("--write", type=Path, metavar="DIR", help="write one file per CRD here (default: print them)")
    _service(sub, "gateway", "run the device gateway (as a pod or a local child process does)", common)
    _service(sub, "processor", "run a pipeline processor replica", common)
    _service(sub, "writer", "run a pipeline writer", common)
    _service(sub, "appapi", "run a fleet's application API (as a pod or a local child process does)", common)
    _operator(sub, common)
    return parser


def _run_service(name: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        module = importlib.import_module(f"fleetflow.{name}.main")
        config = args.config or (Path(os.environ["FLEETFLOW_CONFIG"]) if "FLEETFLOW_CONFIG" in os.environ else None)
        return int(module.main(config))

    return run


# Each command imports only what it needs: `fleetflow token` should not wait for the CEL compiler or gRPC.
HANDLERS = {
    "up": ("commands", "up", False),
    "edge": ("edge", "run", False),
    "token": ("commands", "token", False),
    "query": ("query", "run", True),
    "status": ("commands", "status", True),
    "simulate": ("simulation", "run", True),
    "crds": ("commands", "crds", False),
    "bench": ("commands", "bench", False),
    "command": ("device_commands", "run", True),
    "api-key": ("commands", "api_key", False),
    "operator": ("commands", "operator", False),
}


def handler(command: str) -> Callable[[argparse.Namespace], int]:
    if command in SERVICES:
        return _run_service(command)
    module, function, is_async = HANDLERS[command]
    run = getattr(importlib.import_module(f"fleetflow.cli.{module}"), function)
    return (lambda args: asyncio.run(run(args))) if is_async else run


def configure_logs(command: str, debug: bool) -> None:
    if command in SERVICES:
        return  # services set up their own logging
    from fleetflow.runtime import logs

    # The command's own lines go to stderr, so stdout stays clean for --json and for piping.
    logs.configure("info" if command in ("up", "edge", "operator") else "warning", "auto")
    if command in INSPECTING and not debug:
        from fleetflow.cli.platform_nats import quiet_client_logs

        quiet_client_logs()


def name_of(args: argparse.Namespace) -> str:
    action = getattr(args, "action", None)
    return f"{args.command} {action}" if action else str(args.command)


def invalid_configuration(exc: Exception) -> bool:
    """A YAML resource or settings file that does not validate: its message names the file, field and value."""
    from fleetflow.api import SpecError
    from fleetflow.runtime.settings import SettingsError

    return isinstance(exc, SpecError | SettingsError)


def service_logs(args: argparse.Namespace) -> Path | None:
    """Where `fleetflow up` keeps the services' logs, when this command ran one."""
    logs_dir = Path(args.data_dir) / "logs" if args.command in ("up", "edge") else None
    return logs_dir if logs_dir is not None and logs_dir.is_dir() else None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # A service's traceback goes to its log, where whoever runs it (a pod, `fleetflow up`) looks for it.
    debug = bool(args.debug) or errors.debug_requested() or args.command in SERVICES
    command = name_of(args)
    try:
        configure_logs(args.command, debug)
        return handler(args.command)(args)
    except errors.CliError as exc:
        errors.report(command, str(exc))
        return exc.exit_code
    except KeyboardInterrupt:
        errors.report(command, "interrupted")
        return errors.EXIT_INTERRUPTED
    except BrokenPipeError:  # `fleetflow status | head`: the reader left, which is not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:
        if invalid_configuration(exc):
            errors.report(command, str(exc))
            return errors.EXIT_USAGE
        return errors.report_unexpected(command, exc, debug, service_logs(args))


if __name__ == "__main__":
    sys.exit(main())
