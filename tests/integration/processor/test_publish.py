"""The processor's outputs against a real nats-server when JetStream does not take them: the input stays
unacknowledged while they are retried, each output is stored once when the stream is back, and a stream that
never comes back stops the processor with an error naming where the outputs were going."""

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

from fleetflow.processor import runner as runner_module
from fleetflow.processor.runner import PublishFailed
from fleetflow.runtime import jetstream, subjects
from tests.integration.processor.test_runner import inputs, nc, provision, publish, resources, runner, stored

__all__ = ["nc"]  # the fixture, imported to be used here

DEVICES = ["box-1", "box-2"]


async def eventually(condition: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, f"{what} within {timeout}s"
        await asyncio.sleep(0.05)


async def unacked_inputs(js: JetStreamContext, stream: str, durable: str) -> int:
    return (await js.consumer_info(stream, durable)).num_ack_pending


async def test_outputs_refused_for_a_while_are_stored_once_and_only_then_is_the_input_acked(nc: Client) -> None:
    js = nc.jetstream()
    fleet, pipeline = resources("pubretry")
    await provision(js, fleet, pipeline)
    out_stream = subjects.pipeline_stream(fleet.name, pipeline.name)
    await js.delete_stream(out_stream)  # nothing takes the outputs: every publish gets "no responders"
    batches = inputs(fleet.name, DEVICES)
    last = await publish(js, batches)
    processor = runner(js, fleet, pipeline)
    await processor.start()
    stop = asyncio.Event()
    task = asyncio.create_task(processor.run(stop))
    try:
        await eventually(lambda: _pending(js, processor), 10, "the processor fetched inputs it cannot finish")
        assert (await js.consumer_info(processor.stream, processor.durable)).ack_floor.stream_seq == 0

        await jetstream.provision_pipeline(js, fleet, pipeline)  # the stream is back

        async def all_acked() -> bool:
            return (await js.consumer_info(processor.stream, processor.durable)).ack_floor.stream_seq == last

        await eventually(all_acked, 20, f"every input up to {last} acknowledged")
    finally:
        stop.set()
        await task
    readings = await stored(js, out_stream, f"ff.{fleet.name}.pl.{pipeline.name}.readings.>")
    ids = [msg_id for _, msg_id, _ in readings]
    assert len(ids) == len(set(ids)) == len(batches) - 1  # the retried batch is all duplicates: no output
    assert processor.engine.state.applied_seq == last


async def _pending(js: JetStreamContext, processor: runner_module.Runner) -> bool:
    return await unacked_inputs(js, processor.stream, processor.durable) > 0


async def test_a_stream_that_never_takes_the_outputs_fails_the_fetch_naming_the_subject(
    nc: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner_module, "PUBLISH_ATTEMPTS", 2)
    js = nc.jetstream()
    fleet, pipeline = resources("pubfail")
    await provision(js, fleet, pipeline)
    await js.delete_stream(subjects.pipeline_stream(fleet.name, pipeline.name))
    processor = runner(js, fleet, pipeline)
    await publish(js, inputs(fleet.name, DEVICES)[:1])
    sub = await js.pull_subscribe_bind(processor.durable, processor.stream)
    msgs = await sub.fetch(1, timeout=5)

    with pytest.raises(PublishFailed, match=rf"outputs, e\.g\. to ff\.{fleet.name}\.pl\.{pipeline.name}\.readings\."):
        await processor.handle(msgs, ack=True)

    assert await unacked_inputs(js, processor.stream, processor.durable) == 1  # redelivered, never lost


async def test_outputs_without_an_ack_time_out_are_sent_again_and_give_their_places_back(
    nc: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner_module, "PUBLISH_ATTEMPTS", 2)
    monkeypatch.setattr(runner_module, "PUBLISH_TIMEOUT", 0.3)
    js = nc.jetstream()
    fleet, pipeline = resources("pubsilent")
    await provision(js, fleet, pipeline)
    await js.delete_stream(subjects.pipeline_stream(fleet.name, pipeline.name))
    silent = await nc.subscribe(f"ff.{fleet.name}.pl.>")  # takes the outputs and never answers
    processor = runner(js, fleet, pipeline)
    await publish(js, inputs(fleet.name, DEVICES)[:1])
    sub = await js.pull_subscribe_bind(processor.durable, processor.stream)
    msgs = await sub.fetch(1, timeout=5)

    with pytest.raises(PublishFailed, match=r"1 outputs, e\.g\. to ff\.pubsilent\.pl\.chain\.readings\.box-1"):
        await processor.handle(msgs, ack=True)

    assert silent.pending_msgs == 2  # the readings, sent once per attempt
    assert js.publish_async_pending() == 0  # the acks that never came hold no place among those in flight
    assert await unacked_inputs(js, processor.stream, processor.durable) == 1
