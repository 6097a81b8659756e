"""Is a fleet's gateway endpoint there, and does it speak the protocol asked for? Checked once before
`fleetflow simulate` puts load on it, so a wrong URL or protocol fails in seconds instead of buffering readings
on the device side until the end of the run."""

import asyncio
import re

import aiohttp

from fleetflow.device.grpc_client import GrpcDevice
from fleetflow.device.mqtt_client import MqttDevice

PROBE_TIMEOUT = 5.0
_HOST_PORT = r"[^\s/:]+:[0-9]{1,5}"
SHAPES = {
    "http": (re.compile(rf"https?://{_HOST_PORT}(/\S*)?"), "http://HOST:PORT"),
    "grpc": (re.compile(_HOST_PORT), "HOST:PORT"),
    "mqtt": (re.compile(rf"(mqtt://)?{_HOST_PORT}"), "mqtt://HOST:PORT"),
}


class EndpointProblem(Exception):
    """The endpoint is unreachable or is not a fleetflow gateway speaking that protocol; the text says which."""


def shape_problem(protocol: str, target: str) -> str | None:
    """What is wrong with the form of `target` for `protocol` (None when it has the right form)."""
    pattern, form = SHAPES[protocol]
    return None if pattern.fullmatch(target) else f"--protocol {protocol} takes {form}"


async def probe(protocol: str, target: str, fleet: str, device: str, token: str) -> None:
    """Raise EndpointProblem unless `target` answers as the gateway's `protocol` endpoint."""
    check = {"http": _probe_http, "grpc": _probe_grpc, "mqtt": _probe_mqtt}[protocol]
    try:
        await asyncio.wait_for(check(target, fleet, device, token), PROBE_TIMEOUT)
    except TimeoutError:
        raise EndpointProblem(f"no answer within {PROBE_TIMEOUT:g}s") from None
    except aiohttp.ClientConnectorError as exc:
        raise EndpointProblem(
            f"nothing answers there ({exc.os_error.strerror or type(exc.os_error).__name__})"
        ) from None
    except (aiohttp.ClientResponseError, aiohttp.ServerDisconnectedError):
        raise EndpointProblem("what listens there does not speak HTTP/1.1 (is it the gRPC or MQTT port?)") from None
    except (OSError, aiohttp.ClientError) as exc:
        raise EndpointProblem(f"{type(exc).__name__}: {exc}") from None


async def _probe_http(target: str, fleet: str, device: str, token: str) -> None:
    # A GET on the telemetry route stores nothing and counts no rejection; the gateway has only POST there,
    # so its answer is 405. Anything else is some other server (or another port of the gateway).
    url = f"{target.rstrip('/')}/v1/fleets/{fleet}/devices/{device}/telemetry"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        if response.status != 405:
            raise EndpointProblem(f"GET {url} answered HTTP {response.status}, not the gateway's 405 (POST only)")


async def _probe_grpc(target: str, fleet: str, device: str, token: str) -> None:
    client = GrpcDevice(target, fleet, device, token)
    try:
        await client.connect()
        if not client.connected:
            raise EndpointProblem(client.closed_because or "the gateway ended the Connect stream")
    finally:
        await client.close()


async def _probe_mqtt(target: str, fleet: str, device: str, token: str) -> None:
    host, _, port = target.removeprefix("mqtt://").rpartition(":")
    client = MqttDevice(host, int(port), fleet, device, token)
    try:
        await client.connect(PROBE_TIMEOUT)
    finally:
        await client.close()
