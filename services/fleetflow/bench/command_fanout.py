"""`fleetflow bench --commands`: one gateway holding many connected gRPC devices, a command sent to each.

The local platform (embedded nats-server, the gateway as its own process) serves a fleet without pipelines.
The bench process opens one Connect stream per device over a few channels (bench/grpc_streams.py), then
publishes one command per device to the command stream, as the processor's closed-loop rules do, and waits until
every device got its own. It reports how long connecting took, commands delivered per second, send -> delivered
latency (both ends timed in the bench process), the gateway's CPU and memory, and the number of consumers on the
command stream while every device was connected."""

import contextlib
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import nats

from fleetflow.api import DeviceFleet
from fleetflow.bench.grpc_streams import StreamPool, wait_until
from fleetflow.bench.procstats import ProcessSample, percentile, sample
from fleetflow.local.platform import LocalPlatform
from fleetflow.local.resources import ResourceSet
from fleetflow.runtime import codec, credentials, subjects

FLEET = "bench"
MIB = 1024 * 1024


@dataclass(frozen=True)
class CommandBenchOptions:
    devices: int = 10_000
    channels: int = 8
    deliver_timeout: float = 120.0
    data_dir: Path | None = None


@dataclass
class Phase:
    """The gateway's CPU time and memory at the end of a phase, and how long the phase took."""

    seconds: float
    gateway: ProcessSample


def fleet() -> DeviceFleet:
    spec = {"streams": {"maxAge": "1h", "maxBytes": "1Gi", "partitions": 1}}
    return DeviceFleet.model_validate({"metadata": {"name": FLEET}, "spec": spec})


async def run_command_bench(options: CommandBenchOptions) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="fleetflow-bench-commands-") as scratch:
        platform = LocalPlatform(ResourceSet({FLEET: fleet()}, {}), options.data_dir or Path(scratch))
        try:
            await platform.start()
            return await _measure(platform, options)
        finally:
            await platform.stop()


async def _measure(platform: LocalPlatform, options: CommandBenchOptions) -> dict[str, Any]:
    gateway_pid = platform.service(f"gateway-{FLEET}").process.pid  # type: ignore[union-attr]
    secret = credentials.ensure_local_secret(platform.data_dir, FLEET)
    tokens = {f"d{i:05d}": credentials.device_token(secret, FLEET, f"d{i:05d}") for i in range(options.devices)}
    login = platform.nats.login()
    nc = await nats.connect(platform.nats.url, user=login.user, password=login.password)
    before = sample(gateway_pid)
    async with StreamPool(platform.endpoints()["fleets"][FLEET]["grpc"], FLEET, options.channels) as pool:
        started = time.monotonic()
        streams = await pool.open_all(tokens)
        connected = Phase(time.monotonic() - started, sample(gateway_pid))
        open_when_connected = sum(1 for stream in streams if stream.open)
        consumers_connected = await _consumers(nc)
        sending = time.monotonic()
        sent_at = await _send_one_each(nc, list(tokens))
        send_s = time.monotonic() - sending
        delivered = await _wait_delivered(pool, len(sent_at), options.deliver_timeout)
        commands = Phase(delivered, sample(gateway_pid))
        consumers_after = await _consumers(nc)
        arrivals = {command: at for stream in streams for command, at in stream.commands}
        still_open = sum(1 for stream in streams if stream.open)
    await nc.close()
    latencies = sorted((arrivals[c] - sent) * 1000 for c, sent in sent_at.items() if c in arrivals)
    first_send = min(sent_at.values())
    spread = (max(arrivals.values()) - first_send) if arrivals else 0.0
    return {
        "devices": options.devices,
        "channels": options.channels,
        "cores": os.cpu_count() or 1,
        "connected": open_when_connected,
        "open_at_end": still_open,
        "connect_s": round(connected.seconds, 2),
        "commands_sent": len(sent_at),
        "send_s": round(send_s, 2),
        "commands_delivered": len(latencies),
        "delivered_per_s": round(len(latencies) / spread) if spread else 0,
        "latency_ms": {name: round(percentile(latencies, q), 1) for name, q in (("p50", 0.5), ("p99", 0.99))},
        "command_stream_consumers": {"all_connected": consumers_connected, "after_delivery": consumers_after},
        "gateway": {
            "rss_mib_connected": round(connected.gateway.rss_bytes / MIB, 1),
            "peak_rss_mib": round(commands.gateway.peak_rss_bytes / MIB, 1),
            "cpu_s_connecting": round(connected.gateway.cpu_seconds - before.cpu_seconds, 2),
            "cpu_s_delivering": round(commands.gateway.cpu_seconds - connected.gateway.cpu_seconds, 2),
        },
    }


async def _consumers(nc: nats.NATS) -> int:
    info = await nc.jetstream().stream_info(subjects.commands_stream(FLEET))
    return info.state.consumer_count or 0


async def _send_one_each(nc: nats.NATS, devices: list[str]) -> dict[str, float]:
    """Publish one command per device (acknowledged by JetStream); the time each publish started, by id."""
    js = nc.jetstream(publish_async_max_pending=1024)
    sent_at: dict[str, float] = {}
    now_ms = int(time.time() * 1000)
    for device in devices:
        command = codec.Command(id=f"bench-{device}-{now_ms}", fleet=FLEET, device=device, name="ping",
                                created_ms=now_ms, ttl_ms=600_000, source="bench")  # fmt: skip
        sent_at[command.id] = time.monotonic()
        await js.publish_async(subjects.command_subject(FLEET, device), msgspec.json.encode(command),
                               headers={"Nats-Msg-Id": command.id})  # fmt: skip
    await js.publish_async_completed()
    return sent_at


async def _wait_delivered(pool: StreamPool, expected: int, timeout: float) -> float:
    """Seconds until `expected` commands arrived (or `timeout` passed)."""
    started = time.monotonic()
    with contextlib.suppress(TimeoutError):  # the report says how many arrived
        await wait_until(lambda: sum(len(s.commands) for s in pool.streams) >= expected, timeout, "every command")
    return time.monotonic() - started


def healthy(report: dict[str, Any]) -> bool:
    """Every device stayed connected and got its command."""
    return bool(
        report["commands_delivered"] == report["commands_sent"] == report["devices"]
        and report["open_at_end"] == report["devices"]
    )


def table(report: dict[str, Any]) -> str:
    gw, lat, consumers = report["gateway"], report["latency_ms"], report["command_stream_consumers"]
    return "\n".join([
        f"fleetflow bench --commands: {report['devices']:,} gRPC devices over {report['channels']} channels, "
        f"one gateway, {report['cores']} cores",
        "",
        f"  connect (all streams admitted)      {report['connect_s']:>10,.2f} s",
        f"  commands delivered                  {report['commands_delivered']:>10,} of {report['commands_sent']:,} "
        f"(sent in {report['send_s']:,.2f} s)",
        f"  delivered per second                {report['delivered_per_s']:>10,}",
        f"  send -> delivered p50 / p99         {lat['p50']:>10,.1f} / {lat['p99']:,.1f} ms",
        f"  consumers on the command stream     {consumers['all_connected']:>10} with every device connected, "
        f"{consumers['after_delivery']} after delivery",
        f"  gateway RSS                         {gw['rss_mib_connected']:>10,.1f} MiB connected, "
        f"peak {gw['peak_rss_mib']:,.1f} MiB",
        f"  gateway CPU                         {gw['cpu_s_connecting']:>10,.2f} s connecting, "
        f"{gw['cpu_s_delivering']:,.2f} s delivering",
        "",
        f"  streams open at the end {report['open_at_end']:,} of {report['devices']:,} "
        f"-> {'OK' if healthy(report) else 'FAILED'}",
    ])  # fmt: skip
