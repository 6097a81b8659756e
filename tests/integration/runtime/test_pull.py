"""`pull.fetch` against nats-py's own `PullSubscription.fetch` on a real nats-server: two durable consumers of one
stream, one read by each, must get the same messages in the same batches, wait as long and fail the same way."""

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import nats
import nats.errors
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig

from fleetflow.runtime import pull
from tests.support.natsserver import NatsServer

Fetch = Callable[[JetStreamContext.PullSubscription, int, float], Coroutine[Any, Any, list[Msg]]]


async def _nats_py(sub: JetStreamContext.PullSubscription, batch: int, timeout: float) -> list[Msg]:
    return await sub.fetch(batch, timeout=timeout)


async def _ours(sub: JetStreamContext.PullSubscription, batch: int, timeout: float) -> list[Msg]:
    return await pull.fetch(sub, batch, timeout=timeout)


BOTH = pytest.mark.parametrize("fetch", [_nats_py, _ours], ids=["nats-py", "pull"])


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[Client]:
    client = await nats.connect(nats_server.url)
    await client.jetstream().add_stream(StreamConfig(name="T", subjects=["t.>"]))
    yield client
    await client.close()


async def _subscribe(nc: Client, durable: str, max_ack_pending: int = 1000) -> JetStreamContext.PullSubscription:
    js = nc.jetstream()
    config = ConsumerConfig(durable_name=durable, ack_policy=AckPolicy.EXPLICIT, max_ack_pending=max_ack_pending)
    await js.add_consumer("T", config)
    return await js.pull_subscribe_bind(durable, "T")


async def _publish(nc: Client, first: int, count: int) -> None:
    js = nc.jetstream()
    await asyncio.gather(*(js.publish("t.a", str(i).encode()) for i in range(first, first + count)))


def _seqs(msgs: list[Msg]) -> list[int]:
    return [m.metadata.sequence.stream for m in msgs]


async def test_ready_messages_come_in_the_same_batches_as_nats_pys(nc: Client) -> None:
    await _publish(nc, 0, 700)
    theirs, ours = await _subscribe(nc, "theirs"), await _subscribe(nc, "ours")
    # Timeouts long enough for a loaded machine; nats-py raises asyncio's TimeoutError or its own on timeout.
    for _ in range(4):  # 256, 256, 188, then nothing: the same cut each time
        try:
            expected = _seqs(await theirs.fetch(256, timeout=2.0))
        except TimeoutError:
            expected = []
        try:
            got = _seqs(await pull.fetch(ours, 256, timeout=2.0))
        except TimeoutError:
            got = []
        assert got == expected


async def test_what_is_unacknowledged_is_not_fetched_again_until_acked(nc: Client) -> None:
    await _publish(nc, 0, 30)
    theirs, ours = await _subscribe(nc, "theirs", max_ack_pending=10), await _subscribe(nc, "ours", max_ack_pending=10)
    assert _seqs(await pull.fetch(ours, 256, timeout=2.0)) == _seqs(await theirs.fetch(256, timeout=2.0))
    fetched_again: list[int] = []
    for sub, fetch in ((theirs, _nats_py), (ours, _ours)):
        try:
            fetched_again.append(len(await fetch(sub, 256, 0.3)))
        except TimeoutError:  # or an empty batch: which one, nats-py's timing decides (seen on a loaded machine)
            fetched_again.append(0)
    assert fetched_again == [0, 0]


@BOTH
async def test_nothing_to_fetch_is_a_timeout_after_the_timeout(nc: Client, fetch: Fetch) -> None:
    sub = await _subscribe(nc, "c")
    started = time.monotonic()
    with pytest.raises(TimeoutError):  # nats-py's own, or asyncio's when the deadline passed before its 2nd request
        await fetch(sub, 256, 0.4)
    assert 0.3 < time.monotonic() - started < 5.0


@BOTH
async def test_a_waiting_fetch_returns_with_the_first_to_arrive(nc: Client, fetch: Fetch) -> None:
    sub = await _subscribe(nc, "c")
    waiting = asyncio.create_task(fetch(sub, 256, 15.0))
    await asyncio.sleep(0.2)  # let the fetch's lingering request reach the server
    started = time.monotonic()
    await _publish(nc, 0, 1)
    msgs = await waiting
    assert [m.data for m in msgs] == [b"0"]
    assert time.monotonic() - started < 5.0  # not the 15 s timeout


@BOTH
async def test_a_fetch_takes_no_more_than_its_batch_and_the_next_gets_the_rest(nc: Client, fetch: Fetch) -> None:
    await _publish(nc, 0, 25)
    sub = await _subscribe(nc, "c")
    first, second = await fetch(sub, 10, 1.0), await fetch(sub, 100, 1.0)
    assert _seqs(first) == list(range(1, 11))
    assert _seqs(second) == list(range(11, 26))


@BOTH
async def test_a_closed_connection_is_nats_pys_error(nc: Client, fetch: Fetch) -> None:
    sub = await _subscribe(nc, "c")
    waiting = asyncio.create_task(fetch(sub, 256, 5.0))
    await asyncio.sleep(0.2)
    await nc.close()
    with pytest.raises(nats.errors.ConnectionClosedError):
        await waiting


async def test_a_single_message_and_bad_arguments_take_nats_pys_path(nc: Client) -> None:
    await _publish(nc, 0, 2)
    sub = await _subscribe(nc, "c")
    assert _seqs(await pull.fetch(sub, 1, timeout=1.0)) == [1]
    with pytest.raises(ValueError, match="invalid batch size"):
        await pull.fetch(sub, 0, timeout=1.0)
    with pytest.raises(ValueError, match="invalid fetch timeout"):
        await pull.fetch(sub, 5, timeout=0)
