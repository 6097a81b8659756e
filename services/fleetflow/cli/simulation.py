"""`fleetflow simulate`: load a gateway with simulated devices over HTTP, gRPC or MQTT.

The endpoint is checked before the load starts (gateway_probe), so a wrong URL or protocol is one line within
seconds. Ctrl-C (or SIGTERM) ends the run early: the devices stop producing, send what they still hold, and
the summary is printed; the exit code is then 130 (143 for SIGTERM), as for any interrupted command. A second
Ctrl-C quits at once without a summary."""

import argparse
import asyncio
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

from fleetflow.cli import arguments, datadir, gateway_probe
from fleetflow.cli.errors import Unavailable, UsageError
from fleetflow.device.protocols import simulate_protocol
from fleetflow.device.simulator import SimulationReport, simulate
from fleetflow.runtime import credentials


@dataclass
class Interruption:
    signal: int | None = None


def fleet_secret(args: argparse.Namespace) -> bytes:
    if args.secret_file is None:
        datadir.require_fleet(args.data_dir, args.fleet)
    path = args.secret_file or credentials.local_secret_path(args.data_dir, args.fleet)
    try:
        return credentials.read_secret(path)
    except OSError as exc:
        raise UsageError(
            f"cannot read the secret of fleet {args.fleet!r} from {path} ({exc.strerror}); pass --secret-file FILE "
            "or the --data-dir that `fleetflow up` used"
        ) from None
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def known_endpoint(data_dir: Path, fleet: str, protocol: str) -> str | None:
    """The fleet's endpoint for `protocol` from endpoints.json, when a platform runs with `data_dir`."""
    try:
        return str(datadir.running_fleet(data_dir, fleet)[protocol])
    except (Unavailable, UsageError, KeyError):
        return None


def target(args: argparse.Namespace) -> str:
    """--url as given, else the running fleet's endpoint for the protocol; UsageError if its form is wrong."""
    known = known_endpoint(args.data_dir, args.fleet, args.protocol)
    url = args.url or known
    if url is None:
        raise UsageError(f"give --url: nothing runs fleet {args.fleet!r} with data dir {args.data_dir} to take it from")
    problem = gateway_probe.shape_problem(args.protocol, url)
    if problem:
        raise UsageError(f"--url {url!r}: {problem}{_use(args, known)}")
    return str(url)


def _use(args: argparse.Namespace, known: str | None) -> str:
    if known is None:
        return " (endpoints.json of the local platform lists each fleet's http, grpc and mqtt endpoint)"
    return f"; fleet {args.fleet}'s {args.protocol} endpoint is {known} (from {args.data_dir / 'endpoints.json'})"


async def check_endpoint(args: argparse.Namespace, url: str, device: str, token: str) -> None:
    try:
        await gateway_probe.probe(args.protocol, url, args.fleet, device, token)
    except gateway_probe.EndpointProblem as exc:
        known = known_endpoint(args.data_dir, args.fleet, args.protocol)
        raise Unavailable(f"no fleetflow {args.protocol} gateway at {url}: {exc}{_use(args, known)}") from None


def stop_on_signals(stop: asyncio.Event, interruption: Interruption) -> None:
    loop = asyncio.get_running_loop()

    def first(signum: int) -> None:
        interruption.signal = signum
        stop.set()
        print("stopping: sending what the devices still hold (Ctrl-C again to quit at once) ...", file=sys.stderr)
        # The second one is Python's default again: KeyboardInterrupt, which the CLI reports in one line.
        loop.remove_signal_handler(signal.SIGINT)

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, first, signum)


async def run(args: argparse.Namespace) -> int:
    arguments.identifiers(args.fleet)
    url = target(args)
    secret = fleet_secret(args)
    devices = [f"sim-{i:04d}" for i in range(args.devices)]
    tokens = {device: credentials.device_token(secret, args.fleet, device) for device in devices}
    await check_endpoint(args, url, devices[0], tokens[devices[0]])
    stop, interruption = asyncio.Event(), Interruption()
    stop_on_signals(stop, interruption)
    asyncio.get_running_loop().call_later(args.duration, stop.set)
    if args.protocol == "http":
        report = await simulate(url, args.fleet, tokens, stop, args.batch, args.interval)
    else:  # each device buffers on its side while the gateway is unreachable (fleetflow.device.forwarding)
        report = await simulate_protocol(args.protocol, url, args.fleet, tokens, stop, args.batch, args.interval)
    print_summary(report)
    if interruption.signal is not None:
        return 128 + interruption.signal
    return 0 if report.rejected == 0 and report.acknowledged > 0 else 1


def print_summary(report: SimulationReport) -> None:
    refusals = ", ".join(f"{reason}: {count:,}" for reason, count in sorted(report.rejections.items()))
    print(
        f"sent {report.sent:,} readings, {report.acknowledged:,} acknowledged, {report.retried:,} re-sent "
        f"({report.duplicates:,} recognised as duplicates), {report.rejected:,} refused"
        + (f" ({refusals})" if refusals else ""),
        flush=True,
    )
