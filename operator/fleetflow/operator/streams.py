"""The fleet's JetStream streams and a pipeline's durable consumers, provisioned through the NATS API."""

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Iterator
from typing import Any

import nats
import structlog
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from fleetflow.api import DeviceFleet, Pipeline
from fleetflow.runtime import edgelink, jetstream, subjects
from fleetflow.runtime.natsauth import NatsLogin

log = structlog.get_logger(__name__)
# Connections still closing in the background (held so that they are not garbage-collected mid-close).
_closing: set[asyncio.Future[None]] = set()


class StreamError(Exception):
    """NATS could not be reached or refused a stream or consumer; the message names the URL or the stream."""


@contextlib.asynccontextmanager
async def connected(
    url: str, timeout: float, login: NatsLogin | None, tls: ssl.SSLContext | None = None
) -> AsyncIterator[JetStreamContext]:
    """One short connection per reconcile: the operator holds no NATS state between reconciles. A managed NATS
    has no default user: the operator logs in as the services do; over TLS it verifies the server with `tls`."""
    async with connection(url, timeout, login, tls) as nc:
        yield nc.jetstream(timeout=timeout)


@contextlib.asynccontextmanager
async def connection(
    url: str, timeout: float, login: NatsLogin | None, tls: ssl.SSLContext | None = None
) -> AsyncIterator[Client]:
    """A short connection to the fleet's NATS, closed without waiting long (see `connected`)."""
    user, password = (login.user, login.password) if login else (None, None)
    try:
        nc = await asyncio.wait_for(
            nats.connect(
                url,
                name="fleetflow-operator",
                user=user,
                password=password,
                tls=tls,
                connect_timeout=timeout,
                allow_reconnect=False,
            ),
            timeout=timeout * 2,
        )
    except Exception as exc:  # nats-py raises many unrelated types for an unreachable server
        raise StreamError(f"cannot connect to NATS at {url}: {exc!r}") from exc
    try:
        yield nc
    finally:
        await _close(nc, timeout)


async def _close(nc: Client, timeout: float) -> None:
    """nats-py's close can stall on a connection whose requests timed out, and it swallows cancellation
    while it does; a reconcile (and the operator's shutdown) must not wait for it."""
    closing = asyncio.ensure_future(nc.close())
    _closing.add(closing)
    closing.add_done_callback(_closing.discard)
    await asyncio.wait({closing}, timeout=timeout)
    if not closing.done():
        log.warning("NATS connection did not close in time; leaving it behind", timeout=timeout)


@contextlib.contextmanager
def _failure(what: str) -> Iterator[None]:
    """Any failure of `what` (what it did, where) as a StreamError that says so."""
    try:
        yield
    except StreamError:
        raise
    except Exception as exc:
        raise StreamError(f"{what} failed: {exc!r}") from exc


async def _states(js: JetStreamContext, names: list[str]) -> list[dict[str, Any]]:
    states = []
    for name in names:
        try:
            info = await js.stream_info(name)
        except NotFoundError:
            states.append({"name": name, "messages": 0, "bytes": 0, "state": "Missing"})
            continue
        states.append({"name": name, "messages": info.state.messages, "bytes": info.state.bytes, "state": "Ready"})
    return states


async def provision_fleet(
    url: str, fleet: DeviceFleet, timeout: float, login: NatsLogin | None, tls: ssl.SSLContext | None = None
) -> list[dict[str, Any]]:
    """Create, update or re-create the fleet's streams; returns each stream's state for the status, with
    `created` telling whether this call created it."""
    with _failure(f"provisioning the streams of fleet {fleet.name!r} at {url}"):
        async with connected(url, timeout, login, tls) as js:
            outcome = await jetstream.provision_fleet(js, fleet)
            recreated = [name for name, result in outcome.items() if result == "created"]
            if recreated:
                log.info("streams created", fleet=fleet.name, streams=recreated)
            states = await _states(js, list(outcome))
            return [{**state, "created": outcome.get(state["name"]) == "created"} for state in states]


async def provision_pipeline(
    url: str,
    fleet: DeviceFleet,
    pipeline: Pipeline,
    timeout: float,
    login: NatsLogin | None,
    tls: ssl.SSLContext | None = None,
) -> dict[str, str]:
    """The fleet's streams first (the consumers live on the telemetry stream), then the pipeline's stream
    and consumers; processor consumers of replicas that no longer exist are removed."""
    with _failure(f"provisioning pipeline {pipeline.name!r} at {url}"):
        async with connected(url, timeout, login, tls) as js:
            await jetstream.provision_fleet(js, fleet)
            outcome = await jetstream.provision_pipeline(js, fleet, pipeline)
            await _remove_surplus_processors(js, fleet, pipeline)
            return outcome


async def remove_processors(
    url: str,
    fleet: DeviceFleet,
    pipeline: Pipeline,
    timeout: float,
    login: NatsLogin | None,
    tls: ssl.SSLContext | None = None,
) -> None:
    """An edge pipeline that runs at its sites only: processor consumers it had in the centre go (they would hold
    the telemetry stream's messages for no one)."""
    with _failure(f"removing the processors of pipeline {pipeline.name!r} at {url}"):
        async with connected(url, timeout, login, tls) as js:
            with contextlib.suppress(NotFoundError):  # no telemetry stream (yet): no consumer on it either
                await _remove_surplus_processors(js, fleet, pipeline)


async def _remove_surplus_processors(js: JetStreamContext, fleet: DeviceFleet, pipeline: Pipeline) -> None:
    """Consumers of replicas that no longer exist; all of them for an edge pipeline (its processors run at sites)."""
    stream = subjects.telemetry_stream(fleet.name)
    replicas = 0 if pipeline.name in edgelink.edge_pipelines(fleet) else pipeline.spec.processor.replicas
    wanted = {subjects.processor_consumer(pipeline.name, r) for r in range(replicas)}
    prefix = subjects.processor_consumer(pipeline.name, 0).rsplit("-", 1)[0] + "-"
    for info in await js.consumers_info(stream):
        name = info.name
        if name.startswith(prefix) and name[len(prefix) :].isdigit() and name not in wanted:
            await js.delete_consumer(stream, name)
            log.info("surplus processor consumer removed", stream=stream, consumer=name)


async def delete_fleet_streams(
    url: str, fleet: DeviceFleet, timeout: float, login: NatsLogin | None, tls: ssl.SSLContext | None = None
) -> list[str]:
    """Remove the fleet's streams and their data; returns the names that existed."""
    async with connected(url, timeout, login, tls) as js:
        return [cfg.name for cfg in jetstream.fleet_streams(fleet) if cfg.name and await _delete_stream(js, cfg.name)]


async def delete_pipeline_streams(
    url: str,
    fleet: DeviceFleet,
    pipeline: Pipeline,
    timeout: float,
    login: NatsLogin | None,
    tls: ssl.SSLContext | None = None,
) -> list[str]:
    """Remove the pipeline's processor and writer consumers and its output stream."""
    removed = []
    async with connected(url, timeout, login, tls) as js:
        telemetry = subjects.telemetry_stream(fleet.name)
        prefix = subjects.processor_consumer(pipeline.name, 0).rsplit("-", 1)[0] + "-"
        try:
            consumers = await js.consumers_info(telemetry)
        except NotFoundError:
            consumers = []
        for info in consumers:
            if info.name.startswith(prefix) and info.name[len(prefix) :].isdigit():
                await js.delete_consumer(telemetry, info.name)
                removed.append(f"{telemetry}/{info.name}")
        out = subjects.pipeline_stream(fleet.name, pipeline.name)
        if await _delete_stream(js, out):
            removed.append(out)
    return removed


async def _delete_stream(js: JetStreamContext, name: str) -> bool:
    try:
        await js.delete_stream(name)
    except NotFoundError:
        return False
    return True
