"""The work behind each `fleetflow` subcommand (parsing lives in main.py; query, simulate and command have
modules of their own)."""

import argparse
import asyncio
import json
import os
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import yaml
from nats.aio.client import Client

from fleetflow.api.crds import all_crds
from fleetflow.cli import arguments, datadir, tables
from fleetflow.cli.errors import CliError, Unavailable, UsageError
from fleetflow.cli.platform_nats import admin_connection
from fleetflow.local import private
from fleetflow.runtime import credentials
from fleetflow.runtime.config import device_certificate_mode

if TYPE_CHECKING:
    from fleetflow.local.resources import ResourceSet


def up(args: argparse.Namespace) -> int:
    from fleetflow.cli.up import UpOptions, run_up
    from fleetflow.local.resources import load_resources

    resources = load_resources(args.paths)
    if args.simulate < 0:
        raise UsageError(f"--simulate {args.simulate}: give a number of devices, 0 or more")
    if args.otlp_endpoint:
        if not re.fullmatch(r"https?://[^\s/]+(:[0-9]+)?/?", args.otlp_endpoint):
            raise UsageError(f"--otlp-endpoint {args.otlp_endpoint!r}: use http://HOST:PORT (OTLP over gRPC)")
        # The services inherit the environment and follow the standard OTEL_* variables.
        os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = args.otlp_endpoint
        os.environ.setdefault("OTEL_EXPORTER_OTLP_INSECURE", str(args.otlp_endpoint.startswith("http://")).lower())
    options = UpOptions(args.data_dir, args.simulate, args.duration, args.batch, args.interval, args.nats_port,
                        args.leafnode_listen, tuple(args.leafnode_tls) if args.leafnode_tls else None,
                        *_gateway_tls(args, resources))  # fmt: skip
    os.umask(private.UMASK)  # nothing `fleetflow up` writes is for other users of the machine (local/private.py)
    return asyncio.run(run_up(resources, options))


def _gateway_tls(args: argparse.Namespace, resources: "ResourceSet") -> tuple[tuple[Path, Path] | None, Path | None]:
    """`--gateway-tls CERT KEY` and `--device-ca CA`, checked: UsageError names what is wrong."""
    tls = tuple(args.gateway_tls) if args.gateway_tls else None
    required = [name for name, fleet in resources.fleets.items() if device_certificate_mode(fleet) == "Required"]
    if required and args.device_ca is None:
        raise UsageError(f"fleet {required[0]!r} requires device certificates (spec.gateway.tls.clientAuth.mode "
                         "Required): give --gateway-tls CERT KEY and --device-ca CA")  # fmt: skip
    if args.device_ca is not None and tls is None:
        raise UsageError(f"--device-ca {str(args.device_ca)!r}: devices present certificates over TLS only; give "
                         "--gateway-tls CERT KEY too")  # fmt: skip
    if tls is not None and args.simulate:
        raise UsageError(f"--simulate {args.simulate} sends plain HTTP; it cannot run with --gateway-tls")
    for flag, path in (("--gateway-tls", tls[0] if tls else None), ("--gateway-tls", tls[1] if tls else None),
                       ("--device-ca", args.device_ca)):  # fmt: skip
        if path is not None and not path.is_file():
            raise UsageError(f"{flag} {str(path)!r}: no such file; give a PEM file")
    return tls, args.device_ca


def token(args: argparse.Namespace) -> int:
    if (args.device is None) == (not args.application):
        raise UsageError("give a device id, or --application for the fleet's application token")
    arguments.identifiers(args.fleet, args.device)
    if args.create:
        secret = credentials.ensure_local_secret(args.data_dir, args.fleet)
    elif datadir.has_secret(args.data_dir, args.fleet):
        secret = credentials.read_secret(credentials.local_secret_path(args.data_dir, args.fleet))
    else:
        # Inventing a secret here would print a token no running gateway accepts.
        raise UsageError(
            f"no secret for fleet {args.fleet!r} in data dir {args.data_dir} ({known_here(args.data_dir)}); check "
            "the fleet name and --data-dir, or add --create to make a secret for a fleet that has not run yet"
        )
    if args.application:
        from fleetflow.gateway.command_api import application_token

        print(application_token(secret, args.fleet))
    else:
        print(credentials.device_token(secret, args.fleet, args.device))
    return 0


def known_here(data_dir: Path) -> str:
    if not data_dir.is_dir():
        return "that dir does not exist"
    fleets = datadir.known_fleets(data_dir)
    return f"fleets known there: {', '.join(fleets)}" if fleets else "no fleet has run there"


async def status(args: argparse.Namespace) -> int:
    """Readiness of each service and the streams' state; with --wait, first wait until every service is ready."""
    deadline = time.monotonic() + args.wait
    while True:
        try:
            endpoints = datadir.endpoints(args.data_dir)
            states = await service_states(endpoints["services"])
            if all(state == "ready" for state in states.values()) or time.monotonic() >= deadline:
                break
        except CliError:  # not started yet (or not yet written endpoints.json)
            if time.monotonic() >= deadline:
                raise
        await asyncio.sleep(0.25)
    print("services:")
    for name, state in states.items():
        print(f"  {name:<32} {state}")
    async with admin_connection(endpoints["nats"]["url"], args.data_dir) as nc:
        await print_streams(nc)
    if "leafnodes" in endpoints:
        from fleetflow.cli.edgestatus import print_sites

        await print_sites(endpoints["leafnodes"]["sites"])
    return 0 if all(state == "ready" for state in states.values()) else 1


async def service_states(services: dict[str, Any]) -> dict[str, str]:
    states = {}
    async with aiohttp.ClientSession() as session:
        for name, svc in services.items():
            try:
                async with session.get(svc["health"], timeout=aiohttp.ClientTimeout(total=2)) as r:
                    body = await r.json()
                    states[name] = "ready" if r.status == 200 else f"not ready ({body.get('reason')})"
            except (aiohttp.ClientError, TimeoutError) as exc:
                states[name] = f"unreachable ({type(exc).__name__})"
    return states


async def print_streams(nc: Client) -> None:
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


def bench(args: argparse.Namespace) -> int:
    from fleetflow.bench.report import healthy, summary, table
    from fleetflow.bench.run import BenchOptions, BenchSetupError, run_bench
    from fleetflow.runtime.service import use_uvloop

    if args.pipeline_name is not None and not args.pipeline:
        raise UsageError(f"--pipeline-name {args.pipeline_name!r} needs --pipeline PATH..., the files that hold it")
    if args.commands:
        return bench_commands(args)
    if args.engine_only:
        return _bench_engine(args)
    if args.api:
        return bench_api(args)
    rate = None if args.rate == "max" else _rate(args.rate)
    if args.cassandra and not re.fullmatch(r"[^:\s]+(:[0-9]{1,5})?", args.cassandra):
        raise UsageError(f"--cassandra {args.cassandra!r}: use HOST or HOST:PORT")
    paths = tuple(args.pipeline or ())
    options = BenchOptions(args.devices, args.batch, args.protocol, args.duration, args.warmup, rate,
                           args.processors, args.baseline_seconds, args.data_dir, args.cassandra, paths,
                           args.pipeline_name, args.durability)  # fmt: skip
    os.umask(private.UMASK)  # as `fleetflow up`
    use_uvloop()  # the devices share the two cores with the platform: their CPU counts
    try:
        report = summary(asyncio.run(run_bench(options)))
    except BenchSetupError as exc:
        raise UsageError(str(exc)) from None
    print(json.dumps(report, indent=2) if args.json else table(report))
    return 0 if healthy(report) else 1


def bench_commands(args: argparse.Namespace) -> int:
    from fleetflow.bench import command_fanout

    options = command_fanout.CommandBenchOptions(args.devices, args.channels, data_dir=args.data_dir)
    report = asyncio.run(command_fanout.run_command_bench(options))
    print(json.dumps(report, indent=2) if args.json else command_fanout.table(report))
    return 0 if command_fanout.healthy(report) else 1


def _bench_engine(args: argparse.Namespace) -> int:
    from fleetflow.bench.engineonly import EngineOptions, engine_summary, engine_table, measure_engine
    from fleetflow.bench.run import BenchSetupError, user_pipeline

    if args.pipeline is None:
        raise UsageError("--engine-only needs --pipeline PATH..., the pipeline whose steps to measure")
    try:
        fleet, pipeline = user_pipeline(args.pipeline, args.pipeline_name)
    except BenchSetupError as exc:
        raise UsageError(str(exc)) from None
    result = measure_engine(fleet, pipeline, EngineOptions(devices=args.devices, batch=args.batch))
    report = engine_summary(result, os.getloadavg())
    print(json.dumps(report, indent=2) if args.json else engine_table(report))
    return 0 if report["outputs_identical"] else 1


def bench_api(args: argparse.Namespace) -> int:
    from fleetflow.bench import app_api

    options = app_api.ApiBenchOptions(args.api_readings, args.api_devices, args.subscribers, args.data_dir)
    os.umask(private.UMASK)  # as `fleetflow up`
    report = asyncio.run(app_api.run_api_bench(options))
    print(json.dumps(report, indent=2) if args.json else app_api.table(report))
    return 0 if app_api.healthy(report) else 1


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


def kubernetes_configuration() -> None:
    """Fail in one line when neither in-cluster credentials nor a kubeconfig are there (kopf would not start)."""
    from kubernetes.config import ConfigException

    from fleetflow.operator.kube import load_configuration

    try:
        load_configuration()
    except (ConfigException, OSError) as exc:
        where = os.environ.get("KUBECONFIG", "~/.kube/config")
        raise Unavailable(
            f"no Kubernetes cluster to watch: not running in a pod, and no usable kubeconfig at {where} ({exc}); "
            "set KUBECONFIG or pick a context with `kubectl config use-context`"
        ) from None


def operator(args: argparse.Namespace) -> int:
    from fleetflow.operator.main import run
    from fleetflow.processor.compiler import compile_pipeline

    kubernetes_configuration()
    # The operator may not import the processor; the CLI hands it the compiler, so a Pipeline with bad CEL
    # gets a condition naming the expression instead of processors that crash-loop.
    namespaces = None if args.all_namespaces else args.namespaces
    return int(run(namespaces, compile_pipeline=compile_pipeline))


def api_key(args: argparse.Namespace) -> int:
    """`fleetflow api-key create|list|revoke`: on the fleet's key file, which a running API re-reads at once."""
    from fleetflow.appapi import keys

    arguments.identifiers(args.fleet)
    path = args.keys_file or keys.keys_file(args.data_dir, args.fleet)
    try:
        if args.action == "create":
            _, text = keys.create_key(path, args.fleet, args.scope, args.name or "")
            print(text)
        elif args.action == "list":
            listed = [key for key in keys.read_keys(path) if key.fleet == args.fleet]
            if args.json:
                for key in listed:
                    print(json.dumps(key.summary()))
            else:
                print(tables.render(KEY_HEADER, [_key_row(key) for key in listed]))
        else:
            key = keys.revoke_key(path, args.id)
            print(f"revoked API key {key.id} (scope {key.scope}) of fleet {key.fleet}")
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return 0


KEY_HEADER = ("ID", "SCOPE", "CREATED", "STATE", "NAME")


def _key_row(key: Any) -> tuple[str, ...]:
    state = f"revoked {tables.utc(key.revoked_ms)}" if key.revoked_ms is not None else "active"
    return (key.id, key.scope, tables.utc(key.created_ms), state, key.name)
