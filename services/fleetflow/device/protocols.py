"""Simulated devices over any protocol, each with device-side store-and-forward: `fleetflow simulate
--protocol http|grpc|mqtt|ws|coap`. The HTTP-only load generator of `fleetflow up --simulate` is simulator.py."""

import asyncio
import contextlib
import random
import time
from typing import Any

import aiohttp

from fleetflow.device.coap_client import CoapDevice
from fleetflow.device.forwarding import CoapLink, GrpcLink, HttpLink, Link, MqttLink, StoreAndForward, WsLink
from fleetflow.device.grpc_client import GrpcDevice
from fleetflow.device.http import HttpDevice
from fleetflow.device.mqtt_client import MqttDevice
from fleetflow.device.simulator import SensorModel, SimulationReport, initial_seq
from fleetflow.device.ws_client import WsDevice

PROTOCOLS = ("http", "grpc", "mqtt", "ws", "coap")


def make_link(protocol: str, target: str, fleet: str, device: str, token: str,
              session: aiohttp.ClientSession | None = None) -> Link:  # fmt: skip
    """`target` is the gateway's base URL for http, host:port of its gRPC listener for grpc, host:port
    (or mqtt://host:port) of the MQTT listener for mqtt, the gateway's base URL (http:// or ws://) for ws, and
    coap://host:port for coap — the values in endpoints.json."""
    if protocol in ("http", "ws") and session is None:
        raise ValueError(f"an {protocol} link needs an aiohttp session")
    if protocol == "http" and session is not None:
        return HttpLink(HttpDevice(session, target, fleet, device, token))
    if protocol == "ws" and session is not None:
        return WsLink(WsDevice(session, target, fleet, device, token))
    if protocol == "grpc":
        return GrpcLink(GrpcDevice(target, fleet, device, token))
    if protocol == "coap":
        return CoapLink(CoapDevice(target, fleet, device, token))
    if protocol == "mqtt":
        host, _, port = target.removeprefix("mqtt://").rpartition(":")
        return MqttLink(MqttDevice(host, int(port), fleet, device, token))
    raise ValueError(f"protocol {protocol!r} is not supported; use one of {', '.join(PROTOCOLS)}")


async def simulate_protocol(
    protocol: str,
    target: str,
    fleet: str,
    tokens: dict[str, str],
    stop: asyncio.Event,
    batch_size: int = 10,
    interval: float = 1.0,
    seed: int | None = None,
) -> SimulationReport:
    """One simulated device per entry of `tokens` (device id -> token), sending a batch every `interval`
    seconds until `stop`; each device buffers while the gateway is unreachable and resends afterwards."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol {protocol!r} is not supported; use one of {', '.join(PROTOCOLS)}")
    rng = random.Random(seed)
    report = SimulationReport()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=max(100, len(tokens)))) as session:
        forwards = [
            StoreAndForward(make_link(protocol, target, fleet, device, token, session))
            for device, token in tokens.items()
        ]
        await asyncio.gather(*(_connect(f.link) for f in forwards))
        runners = [asyncio.create_task(f.run(stop)) for f in forwards]
        producers = [
            asyncio.create_task(_produce(f, SensorModel(random.Random(rng.random())), stop, batch_size, interval))
            for f in forwards
        ]
        await asyncio.gather(*producers, *runners)
        await asyncio.gather(*(f.link.close() for f in forwards), return_exceptions=True)
    for forward in forwards:
        stats = forward.stats
        report.sent += stats.submitted
        report.acknowledged += stats.acknowledged
        report.duplicates += stats.duplicates
        report.rejected += stats.refused
        report.retried += stats.resent
        for reason, count in stats.refusals.items():
            report.rejections[reason] = report.rejections.get(reason, 0) + count
    return report


async def _connect(link: Link) -> None:
    try:
        await link.reconnect()
    except Exception:  # the gateway is not there yet: the forwarder keeps trying
        return


async def _produce(forward: StoreAndForward, model: SensorModel, stop: asyncio.Event, batch_size: int,
                   interval: float) -> None:  # fmt: skip
    seq = initial_seq()
    while not stop.is_set():
        now = int(time.time() * 1000)
        batch: list[dict[str, Any]] = []
        for i in range(batch_size):
            ts = now - (batch_size - 1 - i) * 10
            batch.append({"seq": seq, "ts": ts, "metrics": model.metrics(ts)})
            seq += 1
        forward.submit(batch)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)
