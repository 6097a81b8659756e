"""A consumer asks for its next fetch while it handles the last (runtime.consumer.Prefetch): messages still come
in stream order, and one that stops finishes what the fetch in flight brought instead of leaving it unacked."""

import asyncio
from collections.abc import Sequence

import nats
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, ConsumerInfo, DeliverPolicy, StreamConfig

from fleetflow.runtime.consumer import BatchConsumer, DeadLetters, Failure
from tests.support.natsserver import NatsServer


async def test_a_consumer_stopped_mid_stream_handles_in_order_and_leaves_nothing_unacked(
    nats_server: NatsServer,
) -> None:
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name="S", subjects=["s.>"]))
    await js.add_consumer("S", ConsumerConfig(durable_name="d", ack_policy=AckPolicy.EXPLICIT, ack_wait=30,
                                              deliver_policy=DeliverPolicy.ALL))  # fmt: skip
    for i in range(1, 101):
        await js.publish("s.dev", str(i).encode())
    seen: list[int] = []
    stop = asyncio.Event()
    second_fetch_asked = asyncio.Event()

    async def handle(msgs: Sequence[Msg]) -> Sequence[Failure | None]:
        if not seen:  # the next fetch goes out while this one is handled
            await asyncio.wait_for(_asked_for_more(js, second_fetch_asked), 5)
            stop.set()
        seen.extend(int(m.data) for m in msgs)
        return [None] * len(msgs)

    consumer = BatchConsumer(js, "S", "d", handle, DeadLetters(js, "f", "test"), 5, batch=10, wait=0.2)
    await asyncio.wait_for(consumer.run(stop), 10)
    assert second_fetch_asked.is_set()
    assert seen == list(range(1, 21))  # the batch in hand and the one fetched ahead, in order
    # Acks are published without a reply; JetStream applies them shortly after run() returns.
    info = await asyncio.wait_for(_when_acked(js, 20), 5)
    await nc.close()
    assert info.num_ack_pending == 0 and info.num_pending == 80


async def _when_acked(js: nats.js.JetStreamContext, floor: int) -> ConsumerInfo:
    """The consumer's info once its ack floor reached `floor` (and went no further: nothing else was handled)."""
    while (info := await js.consumer_info("S", "d")).ack_floor.stream_seq < floor:
        await asyncio.sleep(0.02)
    return info


async def _asked_for_more(js: nats.js.JetStreamContext, asked: asyncio.Event) -> None:
    """Until the consumer has delivered more than the first fetch of 10."""
    while (await js.consumer_info("S", "d")).delivered.stream_seq <= 10:
        await asyncio.sleep(0.02)
    asked.set()
