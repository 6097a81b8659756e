"""The work behind each `fleetflow` subcommand (parsing lives in main.py)."""

import argparse
import asyncio
import json
import os
import re
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import nats
import yaml

from fleetflow.api import Pipeline, SpecError
from fleetflow.api.crds import all_crds
from fleetflow.api.identifiers import check_device_id, check_resource_name
from fleetflow.cli.up import UpOptions, run_up
from fleetflow.device.protocols import simulate_protocol
from fleetflow.device.simulator import simulate
from fleetflow.gateway.command_api import application_token
from fleetflow.local.resources import load_resources
from fleetflow.runtime import credentials
from fleetflow.writer.stores import ReadingQuery, open_store


class UsageError(ValueError):
    """A command-line value that is not acceptable; the message says what would be."""


def up(args: argparse.Namespace) -> int:
    resources = load_resources(args.paths)
    if args.simulate < 0:
        raise UsageError(f"--simulate {args.simulate}: give a number of devices, 0 or more")
    if args.otlp_endpoint:
        if not re.fullmatch(r"https?://[^\s/]+(:[0-9]+)?/?", args.otlp_endpoint):
            raise UsageError(f"--otlp-endpoint {args.otlp_endpoint!r}: use http://HOST:PORT (OTLP over gRPC)")
        # The services inherit the environment and follow the standard OTEL_* variables.
        os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = args.otlp_endpoint
        os.environ.setdefault("OTEL_EXPORTER_OTLP_INSECURE", str(args.otlp_endpoint.startswith("http://")).lower())
    options = UpOptions(args.data_dir, args.simulate, args.duration, args.batch, args.interval, args.nats_port)
    return asyncio.run(run_up(resources, options))


def _identifiers(fleet: str, device: str | None = None) -> None:
    try:
        check_resource_name(fleet, "fleet")
        if device is not None:
            check_device_id(device)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def token(args: argparse.Namespace) -> int:
    if (args.device is None) == (not args.application):
        raise UsageError("give a device id, or --application for the fleet's application token")
    _identifiers(args.fleet, args.device)
    secret = credentials.ensure_local_secret(args.data_dir, args.fleet)
    if args.application:
        print(application_token(secret, args.fleet))
    else:
        print(credentials.device_token(secret, args.fleet, args.device))
    return 0


_RELATIVE = re.compile(r"^([0-9]+)(s|m|h|d)$")


def parse_time(text: str, flag: str) -> int:
    """Epoch ms from RFC 3339, epoch ms, or a duration back from now ("15m", "2h")."""
    if text.isdigit():
        return int(text)
    match = _RELATIVE.match(text)
    if match:
        seconds = int(match.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
        return int((time.time() - seconds) * 1000)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"{flag} {text!r}: use RFC 3339 (2026-11-23T10:00:00Z), epoch ms, or 15m/2h/7d") from None
    if parsed.tzinfo is None:
        raise UsageError(f"{flag} {text!r} has no UTC offset; add Z or +hh:mm")
    return int(parsed.timestamp() * 1000)


def _pipeline_store(data_dir: Path, fleet: str, name: str | None) -> tuple[Pipeline, Path]:
    """The pipeline whose store holds `fleet`'s readings, as the last `fleetflow up` on `data_dir` ran it."""
    path = data_dir / "pipelines.json"
    if not path.exists():
        raise UsageError(f"no pipeline has run with data dir {data_dir} ({path} is missing): run `fleetflow up`")
    known = {k: v for k, v in json.loads(path.read_text()).items() if v["fleet"] == fleet}
    if not known:
        raise UsageError(f"no pipeline of fleet {fleet!r} has run with data dir {data_dir}")
    if name is not None and name not in known:
        raise UsageError(f"--pipeline {name!r}: not a pipeline of fleet {fleet!r} here; known: {', '.join(known)}")
    chosen = name or next(iter(known))
    entry = known[chosen]
    pipeline = Pipeline.model_validate(
        {"metadata": {"name": chosen}, "spec": {"fleetRef": {"name": fleet}, "sink": entry["sink"]}}
    )
    return pipeline, Path(entry["sqlitePath"])


async def query(args: argparse.Namespace) -> int:
    _identifiers(args.fleet, args.device)
    since = parse_time(args.since, "--since") if args.since else 0
    until = parse_time(args.until, "--until") if args.until else 2**62
    pipeline, path = _pipeline_store(args.data_dir, args.fleet, args.pipeline)
    store = open_store(pipeline, path)
    await store.open()
    try:
        page = await store.readings(ReadingQuery(args.fleet, args.device, since, until, args.limit))
    finally:
        await store.close()
    for item in page.items:
        if args.json:
            print(json.dumps({"device": item.device, "seq": item.seq, "ts": item.ts, "metrics": item.metrics}))
        else:
            when = datetime.fromtimestamp(item.ts / 1000).astimezone().isoformat(timespec="milliseconds")
            metrics = "  ".join(f"{k}={v:g}" for k, v in sorted(item.metrics.items()))
            print(f"{when}  seq {item.seq}  {metrics}")
    if not page.items:
        print(f"no readings of device {args.device!r} in fleet {args.fleet!r} in that range", file=sys.stderr)
    return 0


def _endpoints(data_dir: Path, required: bool = True) -> dict[str, Any]:
    path = data_dir / "endpoints.json"
    if not path.exists():
        if required:
            raise UsageError(f"nothing is running with data dir {data_dir} ({path} is missing); start `fleetflow up`")
        return {}
    return dict(json.loads(path.read_text()))


async def status(args: argparse.Namespace) -> int:
    endpoints = _endpoints(args.data_dir)
    healthy = True
    print("services:")
    async with aiohttp.ClientSession() as session:
        for name, svc in endpoints["services"].items():
            try:
                async with session.get(svc["health"], timeout=aiohttp.ClientTimeout(total=2)) as r:
                    body = await r.json()
                    state = "ready" if r.status == 200 else f"not ready ({body.get('reason')})"
            except (aiohttp.ClientError, TimeoutError) as exc:
                state = f"unreachable ({type(exc).__name__})"
            healthy = healthy and state == "ready"
            print(f"  {name:<32} {state}")
    await _print_streams(endpoints["nats"]["url"])
    return 0 if healthy else 1


async def _print_streams(url: str) -> None:
    nc = await nats.connect(url, connect_timeout=3, max_reconnect_attempts=1)
    try:
        js = nc.jetstream()
        print("streams:")
        for stream in await js.streams_info():
            name = stream.config.name or ""
            print(f"  {name:<32} {stream.state.messages:>10,} msgs {stream.state.bytes:>14,} bytes")
            for consumer in await js.consumers_info(name):
                print(
                    f"    consumer {consumer.name:<24} pending {consumer.num_pending:>8,}  "
                    f"unacked {consumer.num_ack_pending:>6,}  redelivered {consumer.num_redelivered:>6,}"
                )
    finally:
        await nc.close()


async def simulate_load(args: argparse.Namespace) -> int:
    _identifiers(args.fleet)
    if args.secret_file:
        secret = credentials.read_secret(args.secret_file)
    else:
        path = credentials.local_secret_path(args.data_dir, args.fleet)
        if not path.exists():
            raise UsageError(f"no secret for fleet {args.fleet!r} at {path}; pass --secret-file or --data-dir")
        secret = credentials.read_secret(path)
    tokens = {f"sim-{i:04d}": credentials.device_token(secret, args.fleet, f"sim-{i:04d}") for i in range(args.devices)}
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(args.duration, stop.set)
    if args.protocol == "http":
        report = await simulate(args.url, args.fleet, tokens, stop, args.batch, args.interval)
    else:  # each device buffers on its side while the gateway is unreachable (fleetflow.device.forwarding)
        report = await simulate_protocol(args.protocol, args.url, args.fleet, tokens, stop, args.batch, args.interval)
    print(
        f"sent {report.sent:,} readings, {report.acknowledged:,} acknowledged, {report.retried:,} re-sent "
        f"({report.duplicates:,} recognised as duplicates), {report.rejected:,} refused {report.rejections or ''}"
    )
    return 0 if report.rejected == 0 else 1


def bench(args: argparse.Namespace) -> int:
    from fleetflow.bench.report import healthy, summary, table
    from fleetflow.bench.run import BenchOptions, BenchSetupError, run_bench

    if args.engine_only:
        return _bench_engine(args)
    rate = None if args.rate == "max" else _rate(args.rate)
    if args.cassandra and not re.fullmatch(r"[^:\s]+(:[0-9]{1,5})?", args.cassandra):
        raise UsageError(f"--cassandra {args.cassandra!r}: use HOST or HOST:PORT")
    options = BenchOptions(args.devices, args.batch, args.protocol, args.duration, args.warmup, rate,
                           args.processors, args.baseline_seconds, args.data_dir, args.cassandra, args.pipeline,
                           args.durability)  # fmt: skip
    try:
        report = summary(asyncio.run(run_bench(options)))
    except BenchSetupError as exc:
        raise UsageError(str(exc)) from None
    print(json.dumps(report, indent=2) if args.json else table(report))
    return 0 if healthy(report) else 1


def _bench_engine(args: argparse.Namespace) -> int:
    from fleetflow.bench.engineonly import EngineOptions, engine_summary, engine_table, measure_engine
    from fleetflow.bench.run import BenchSetupError, user_pipeline

    if args.pipeline is None:
        raise UsageError("--engine-only needs --pipeline DIR, the pipeline whose steps to measure")
    try:
        fleet, pipeline = user_pipeline(args.pipeline)
    except BenchSetupError as exc:
        raise UsageError(str(exc)) from None
    result = measure_engine(fleet, pipeline, EngineOptions(devices=args.devices, batch=args.batch))
    report = engine_summary(result, os.getloadavg())
    print(json.dumps(report, indent=2) if args.json else engine_table(report))
    return 0 if report["outputs_identical"] else 1


def _rate(text: str) -> float:
    try:
        rate = float(text)
    except ValueError:
        raise UsageError(f"--rate {text!r}: give readings per second (e.g. 50000) or max") from None
    if rate <= 0:
        raise UsageError(f"--rate {text!r}: must be more than 0, or max")
    return rate


def crds(args: argparse.Namespace) -> int:
    documents = all_crds()
    if args.write is None:
        print("---\n".join(yaml.safe_dump(crd, sort_keys=False) for crd in documents.values()), end="")
        return 0
    args.write.mkdir(parents=True, exist_ok=True)
    for name, crd in documents.items():
        (args.write / name).write_text(yaml.safe_dump(crd, sort_keys=False))
        print(f"wrote {args.write / name}")
    return 0


def operator(args: argparse.Namespace) -> int:
    from fleetflow.operator.main import run
    from fleetflow.processor.compiler import compile_pipeline

    # The operator may not import the processor; the CLI hands it the compiler, so a Pipeline with bad CEL
    # gets a condition naming the expression instead of processors that crash-loop.
    namespaces = None if args.all_namespaces else args.namespaces
    return int(run(namespaces, compile_pipeline=compile_pipeline))


__all__ = ["SpecError", "UsageError"]
