"""Provisioning a pipeline's queue on a real nats-server, including streams left by an earlier version."""

from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.client import Client
from nats.js.api import RetentionPolicy, StreamConfig

from fleetflow.api import DeviceFleet, Pipeline
from fleetflow.runtime import jetstream, subjects
from tests.support.natsserver import NatsServer

FLEET = DeviceFleet.model_validate({"metadata": {"name": "yard"}, "spec": {}})
PIPELINE = Pipeline.model_validate({"metadata": {"name": "main"}, "spec": {"fleetRef": {"name": "yard"}}})
QUEUE = subjects.pipeline_stream("yard", "main")


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[Client]:
    client = await nats.connect(nats_server.url)
    yield client
    await client.close()


async def provision_as_before(nc: Client, records: int) -> None:
    """The pipeline's stream as the previous version made it (limits retention), with `records` the writer has
    not taken yet."""
    js = nc.jetstream()
    await jetstream.provision_fleet(js, FLEET)
    await js.add_stream(StreamConfig(name=QUEUE, subjects=["ff.yard.pl.main.>"], retention=RetentionPolicy.LIMITS))
    await jetstream.ensure_consumer(js, QUEUE, jetstream.writer_consumer(FLEET, PIPELINE))
    for i in range(records):
        await js.publish("ff.yard.pl.main.readings.d-1", b"{}", headers={"Nats-Msg-Id": f"r{i}"})


async def test_a_writers_queue_only_holds_what_the_writer_has_not_stored(nc: Client) -> None:
    js = nc.jetstream()
    await jetstream.provision_fleet(js, FLEET)
    await jetstream.provision_pipeline(js, FLEET, PIPELINE)
    for i in range(3):
        await js.publish("ff.yard.pl.main.readings.d-1", b"{}", headers={"Nats-Msg-Id": f"r{i}"})
    writer = await js.pull_subscribe_bind(subjects.writer_consumer("main"), QUEUE)
    for msg in await writer.fetch(3, timeout=2):
        await msg.ack_sync()
    assert (await js.stream_info(QUEUE)).state.messages == 0


async def test_a_drained_stream_of_the_previous_version_becomes_a_work_queue(nc: Client) -> None:
    await provision_as_before(nc, records=0)
    outcome = await jetstream.provision_pipeline(nc.jetstream(), FLEET, PIPELINE)
    assert outcome[QUEUE] == "replaced"
    info = await nc.jetstream().stream_info(QUEUE)
    assert info.config.retention == RetentionPolicy.WORK_QUEUE and info.config.max_bytes == -1
    assert await nc.jetstream().consumer_info(QUEUE, subjects.writer_consumer("main"))  # provisioned again


async def test_a_stream_with_unstored_records_is_kept_and_the_error_says_why(nc: Client) -> None:
    await provision_as_before(nc, records=2)
    with pytest.raises(RuntimeError, match=r"consumers \['writer-main'\] still have messages to process"):
        await jetstream.provision_pipeline(nc.jetstream(), FLEET, PIPELINE)
    info = await nc.jetstream().stream_info(QUEUE)
    assert info.config.retention == RetentionPolicy.LIMITS and info.state.messages == 2
