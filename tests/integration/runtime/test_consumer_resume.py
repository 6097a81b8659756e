"""A sole consumer restarted after a crash gets what its predecessor held at once and in order, not after
ack_wait behind newer messages."""

import asyncio
import contextlib
from collections.abc import Sequence

import nats
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StreamConfig

from fleetflow.runtime.consumer import BatchConsumer, DeadLetters, Failure
from tests.support.natsserver import NatsServer

ACK_WAIT = 30.0


async def crashed_predecessor(url: str) -> None:
    """Publish 1..10, fetch 1..6 as a consumer that acks only 1 and 2 and then dies (its connection closes)."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name="S", subjects=["s.>"]))
    await js.add_consumer("S", ConsumerConfig(durable_name="d", ack_policy=AckPolicy.EXPLICIT, ack_wait=ACK_WAIT,
                                              deliver_policy=DeliverPolicy.ALL))  # fmt: skip
    for i in range(1, 11):
        await js.publish("s.dev", str(i).encode())
    sub = await js.pull_subscribe_bind("d", "S")
    for msg in (await sub.fetch(6, timeout=2))[:2]:
        await msg.ack_sync()
    await nc.close()


async def successor_receives(url: str, sole: bool, wanted: int, timeout: float) -> list[int]:
    nc = await nats.connect(url)
    js = nc.jetstream()
    seen: list[int] = []
    done, stop = asyncio.Event(), asyncio.Event()

    async def handle(msgs: Sequence[Msg]) -> Sequence[Failure | None]:
        seen.extend(int(m.data) for m in msgs)
        if len(seen) >= wanted:
            done.set()
        return [None] * len(msgs)

    consumer = BatchConsumer(js, "S", "d", handle, DeadLetters(js, "f", "test"), 5, wait=0.2, sole=sole)
    task = asyncio.create_task(consumer.run(stop))
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(done.wait(), timeout)
    stop.set()
    await task
    info = await js.consumer_info("S", "d")
    await nc.close()
    assert not sole or info.num_ack_pending == 0
    return seen


async def test_a_sole_consumer_resumes_from_its_ack_floor_at_once_in_order(nats_server: NatsServer) -> None:
    await crashed_predecessor(nats_server.url)
    seen = await asyncio.wait_for(successor_receives(nats_server.url, True, 8, timeout=5), 10)
    assert seen == list(range(3, 11))


async def test_a_shared_consumer_leaves_the_predecessors_messages_to_ack_wait(nats_server: NatsServer) -> None:
    """Without `sole` the held messages stay with the dead client (another replica may still own them)."""
    await crashed_predecessor(nats_server.url)
    seen = await successor_receives(nats_server.url, False, 8, timeout=2)
    assert seen == [7, 8, 9, 10]
