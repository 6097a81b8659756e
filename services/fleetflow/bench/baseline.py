"""The raw transport: nats-py publishing the same message bytes to JetStream with acks, then pull-consuming
them with acks at the same fetch size as fleetflow's consumers. fleetflow can at best approach these rates."""

import time
from dataclasses import dataclass

import nats
import nats.errors
from nats.js.api import StorageType, StreamConfig

from fleetflow.runtime.natsauth import NatsLogin

STREAM, SUBJECT = "bench-baseline", "bench.baseline"


@dataclass(frozen=True)
class BaselineResult:
    published_per_second: float
    consumed_per_second: float
    messages: int


async def transport_baseline(
    nats_url: str, login: NatsLogin, payload: bytes, seconds: float, in_flight: int = 1024, fetch: int = 256
) -> BaselineResult:
    nc = await nats.connect(nats_url, user=login.user, password=login.password)
    js = nc.jetstream(publish_async_max_pending=in_flight)
    try:
        await js.add_stream(StreamConfig(name=STREAM, subjects=[SUBJECT], storage=StorageType.FILE))
        published, publish_rate = await _publish(js, payload, seconds)
        consume_rate = await _consume(js, published, fetch)
        await js.delete_stream(STREAM)
    finally:
        await nc.close()
    return BaselineResult(publish_rate, consume_rate, published)


async def _publish(js: nats.js.JetStreamContext, payload: bytes, seconds: float) -> tuple[int, float]:
    count, started = 0, time.monotonic()
    deadline = started + seconds
    while time.monotonic() < deadline:
        for _ in range(100):
            await js.publish_async(SUBJECT, payload)
        count += 100
    await js.publish_async_completed()
    return count, count / (time.monotonic() - started)


async def _consume(js: nats.js.JetStreamContext, expected: int, fetch: int) -> float:
    sub = await js.pull_subscribe(SUBJECT, durable="baseline", stream=STREAM)
    consumed, started = 0, time.monotonic()
    while consumed < expected:
        try:
            msgs = await sub.fetch(fetch, timeout=2)
        except (TimeoutError, nats.errors.TimeoutError):
            break
        for msg in msgs:
            await msg.ack()
        consumed += len(msgs)
    rate = consumed / (time.monotonic() - started)
    await sub.unsubscribe()
    return rate
