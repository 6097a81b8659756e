"""Is a fleet's gateway endpoint there, and does it speak the protocol asked for? Checked once before
`fleetflow simulate` puts load on it, so a wrong URL or protocol fails in seconds instead of buffering readings
on the device side until the end of the run."""

import asyncio
import re

import aiocoap
import aiocoap.error
import aiohttp

from fleetflow.device.grpc_client import GrpcDevice
from fleetflow.device.mqtt_client import MqttDevice
from fleetflow.device.ws_client import WsDevice

PROBE_TIMEOUT = 5.0
_HOST_PORT = r"[^\s/:]+:[0-9]{1,5}"
SHAPES = {
    "http": (re.compile(rf"https?://{_HOST_PORT}(/\S*)?"), "http://HOST:PORT"),
    "grpc": (re.compile(_HOST_PORT), "HOST:PORT"),
    "mqtt": (re.compile(rf"(mqtt://)?{_HOST_PORT}"), "mqtt://HOST:PORT"),
    "ws": (re.compile(rf"(wss?|https?)://{_HOST_PORT}(/\S*)?"), "ws://HOST:PORT"),
    "coap": (re.compile(rf"coap://{_HOST_PORT}"), "coap://HOST:PORT"),
}


class EndpointProblem(Exception):
    """The endpoint is unreachable or is not a fleetflow gateway speaking that protocol; the text says which."""


def shape_problem(protocol: str, target: str) -> str | None:
    """What is wrong with the form of `target` for `protocol` (None when it has the right form)."""
    pattern, form = SHAPES[protocol]
    return None if pattern.fullmatch(target) else f"--protocol {protocol} takes {form}"


async def probe(protocol: str, target: str, fleet: str, device: str, token: str) -> None:
    """Raise EndpointProblem unless `target` answers as the gateway's `protocol` endpoint."""
    check = {"http": _probe_http, "grpc": _probe_grpc, "mqtt": _probe_mqtt, "ws": _probe_ws, "coap": _probe_coap}[
        protocol
    ]
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


async def _probe_ws(target: str, fleet: str, device: str, token: str) -> None:
    base = re.sub(r"^ws", "http", target)
    async with aiohttp.ClientSession() as session:
        client = WsDevice(session, base, fleet, device, token)
        try:
            await client.connect()
        except aiohttp.WSServerHandshakeError as exc:
            raise EndpointProblem(
                f"the WebSocket handshake was refused with HTTP {exc.status} ({exc.message})"
            ) from None
        finally:
            await client.close()


async def _probe_coap(target: str, fleet: str, device: str, token: str) -> None:
    # A GET on the telemetry resource stores nothing; any CoAP answer (4.05 from the gateway) shows a CoAP server
    # listens there. UDP has no connection, so "nothing there" is the missing answer (PROBE_TIMEOUT).
    context = await aiocoap.Context.create_client_context()
    try:
        uri = f"{target.rstrip('/')}/v1/fleets/{fleet}/devices/{device}/telemetry"
        await context.request(aiocoap.Message(code=aiocoap.GET, uri=uri)).response
    except aiocoap.error.Error as exc:
        raise EndpointProblem(f"no CoAP answer ({type(exc).__name__})") from None
    finally:
        await context.shutdown()
