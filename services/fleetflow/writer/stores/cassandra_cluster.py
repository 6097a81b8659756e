"""Connecting to Cassandra and running statements from asyncio with bounded retries.

The driver runs its own I/O thread; `execute` bridges a driver ResponseFuture to an asyncio future with
`call_soon_threadsafe`, so the writer's event loop never blocks on Cassandra."""

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import cassandra
import structlog
from cassandra import ConsistencyLevel
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, NoHostAvailable, ResponseFuture, Session
from cassandra.connection import ConnectionException
from cassandra.policies import (
    ConstantSpeculativeExecutionPolicy,
    DCAwareRoundRobinPolicy,
    ExponentialReconnectionPolicy,
    TokenAwarePolicy,
)
from cassandra.protocol import IsBootstrappingErrorMessage, OverloadedErrorMessage
from cassandra.query import Statement, dict_factory

from fleetflow.writer.stores.cassandra_auth import Credentials, auth_provider, ssl_context
from fleetflow.writer.stores.cql import Layout

log = structlog.get_logger(__name__)
T = TypeVar("T")

READS = "fleetflow-reads"
# Errors after which the same idempotent statement may well succeed: the cluster is down, overloaded or slow.
RETRYABLE: tuple[type[BaseException], ...] = (
    cassandra.Unavailable,
    cassandra.Timeout,
    cassandra.OperationTimedOut,
    NoHostAvailable,
    ConnectionException,
    OverloadedErrorMessage,
    IsBootstrappingErrorMessage,
)


def connection_class() -> type:
    """The driver's libev reactor, else its asyncio reactor.

    libev is the driver's production event loop (C, bundled in the binary wheels). The driver's own default
    falls back to asyncore, which Python 3.12 removed; its asyncio reactor is marked experimental and runs a
    private loop in its own thread anyway, so it is only the fallback for platforms without the extension."""
    try:
        from cassandra.io.libevreactor import LibevConnection

        return LibevConnection
    except ImportError:  # a source build without libev headers
        from cassandra.io.asyncioreactor import AsyncioConnection

        return AsyncioConnection


def consistency(name: str) -> int:
    return int(getattr(ConsistencyLevel, name))


def read_consistency(name: str) -> int:
    """Reads use the write level, except EACH_QUORUM, which is for writes: reads take LOCAL_QUORUM then."""
    return consistency("LOCAL_QUORUM" if name == "EACH_QUORUM" else name)


@dataclass(frozen=True)
class ClusterOptions:
    contact_points: Sequence[str]
    port: int
    request_timeout: float = 10.0
    connect_timeout: float = 5.0
    speculative_delay: float = 0.2


def build_cluster(lay: Layout, options: ClusterOptions, credentials: Credentials) -> Cluster:
    """A Cluster (not yet connected): token-aware over DC-aware round robin in the sink's local DC."""

    def balancing() -> TokenAwarePolicy:
        # Replicas in the local DC first; remote DCs are never used for LOCAL_* levels anyway.
        return TokenAwarePolicy(DCAwareRoundRobinPolicy(local_dc=lay.local_dc), shuffle_replicas=True)

    writes = ExecutionProfile(
        load_balancing_policy=balancing(),
        consistency_level=consistency(lay.consistency),
        serial_consistency_level=ConsistencyLevel.LOCAL_SERIAL,
        request_timeout=options.request_timeout,
        row_factory=dict_factory,
    )
    # Reads may be sent to a second replica when the first is slow; statements are idempotent, so this
    # is safe. Writes are not speculated: under load that would multiply the very writes that are slow.
    reads = ExecutionProfile(
        load_balancing_policy=balancing(),
        consistency_level=read_consistency(lay.consistency),
        serial_consistency_level=ConsistencyLevel.LOCAL_SERIAL,
        request_timeout=options.request_timeout,
        row_factory=dict_factory,
        speculative_execution_policy=ConstantSpeculativeExecutionPolicy(options.speculative_delay, 2),
    )
    return Cluster(
        contact_points=list(options.contact_points),
        port=options.port,
        execution_profiles={EXEC_PROFILE_DEFAULT: writes, READS: reads},
        auth_provider=auth_provider(credentials),
        ssl_context=ssl_context(credentials),
        connection_class=connection_class(),
        connect_timeout=options.connect_timeout,
        reconnection_policy=ExponentialReconnectionPolicy(base_delay=1.0, max_delay=60.0),
        max_schema_agreement_wait=30,
        application_name="fleetflow-writer",
    )


async def execute(
    session: Session,
    statement: Statement | str,
    params: Sequence[Any] | None = None,
    *,
    profile: Any = EXEC_PROFILE_DEFAULT,
    paging_state: bytes | None = None,
) -> Any:
    """Run one statement without blocking the event loop; the driver's ResultSet (one page of rows)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[Any] = loop.create_future()
    response: ResponseFuture = session.execute_async(
        statement, params, execution_profile=profile, paging_state=paging_state
    )

    def settle(result: Any, error: BaseException | None) -> None:
        if done.cancelled():
            return
        if error is not None:
            done.set_exception(error)
        else:
            done.set_result(result)

    def succeeded(_rows: Any) -> None:
        # The response is complete here, so result() returns the ResultSet without waiting.
        loop.call_soon_threadsafe(settle, response.result(), None)

    def failed(exc: BaseException) -> None:
        loop.call_soon_threadsafe(settle, None, exc)

    response.add_callbacks(succeeded, failed)
    return await done


@dataclass(frozen=True)
class Backoff:
    """Capped exponential backoff with full jitter, for statements that failed with a RETRYABLE error.

    `budget` bounds the seconds spent retrying one statement: it is kept below the JetStream ack wait, so
    the writer reports the failure (and the message is redelivered on schedule) rather than JetStream
    redelivering a message whose write is still being retried."""

    attempts: int = 6
    base: float = 0.1
    cap: float = 3.0
    budget: float = 15.0

    def delay(self, attempt: int) -> float:
        return random.uniform(0, min(self.cap, self.base * 2 ** (attempt - 1)))


class Unavailable(Exception):
    """A statement kept failing with retryable errors; the message names the last one."""


async def with_retries(call: Callable[[], Awaitable[T]], what: str, backoff: Backoff) -> T:
    """`call()` retried on RETRYABLE errors; Unavailable after `backoff.attempts` tries or its budget."""
    deadline = time.monotonic() + backoff.budget
    for attempt in range(1, backoff.attempts + 1):
        try:
            return await call()
        except RETRYABLE as exc:
            delay = backoff.delay(attempt)
            if attempt == backoff.attempts or time.monotonic() + delay > deadline:
                raise Unavailable(f"{what} failed {attempt} times; last: {describe(exc)}") from exc
            log.info("cassandra retry", what=what, attempt=attempt, delay=round(delay, 3), error=describe(exc))
            await asyncio.sleep(delay)
    raise AssertionError("unreachable: the loop returns or raises")


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]
