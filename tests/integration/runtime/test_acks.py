"""The gateway's publish with ack, on a real nats-server: an ack says where the message went and whether it was a
duplicate; everything else fails with the error nats-py's js.publish raises, so callers classify it the same way."""

import asyncio
from collections.abc import AsyncIterator

import nats
import nats.errors
import pytest
from nats.aio.client import Client
from nats.js.api import StreamConfig
from nats.js.errors import APIError, NoStreamResponseError

from fleetflow.runtime.acks import Ack, AckedPublisher
from tests.support.natsserver import NatsServer


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[Client]:
    client = await nats.connect(nats_server.url)
    await client.jetstream().add_stream(StreamConfig(name="T", subjects=["t.>"], max_msg_size=1000))
    yield client
    await client.close()


async def test_acks_name_the_stream_and_sequence_and_duplicates_are_recognised(nc: Client) -> None:
    acks = AckedPublisher(nc)
    sent = await asyncio.gather(*(acks.publish("t.a", b"x", {"Nats-Msg-Id": f"m{i}"}, 5.0) for i in range(50)))
    assert sorted(a.seq for a in sent) == list(range(1, 51))
    assert {(a.stream, a.duplicate) for a in sent} == {("T", False)}
    again = await acks.publish("t.a", b"x", {"Nats-Msg-Id": "m7"}, 5.0)
    assert again.duplicate and again.stream == "T"
    assert (await nc.jetstream().stream_info("T")).state.messages == 50


async def test_a_subject_no_stream_takes_is_no_stream_response(nc: Client) -> None:
    with pytest.raises(NoStreamResponseError):
        await AckedPublisher(nc).publish("elsewhere.a", b"x", {}, 5.0)


async def test_a_refusal_is_the_api_error_with_jetstreams_code(nc: Client) -> None:
    with pytest.raises(APIError) as refused:
        await AckedPublisher(nc).publish("t.a", b"x" * 2000, {}, 5.0)
    assert refused.value.err_code == 10054  # message size exceeds the stream's maximum


async def test_no_answer_is_a_timeout_and_a_later_answer_goes_nowhere(nc: Client) -> None:
    silent = await nc.subscribe("q.silent")  # a responder that never answers: no 503, no ack
    acks = AckedPublisher(nc)
    with pytest.raises(nats.errors.TimeoutError):
        await acks.publish("q.silent", b"x", {}, 0.2)
    late = await silent.next_msg(timeout=1)
    await nc.publish(late.reply, b'{"stream":"T","seq":1}')  # answers the abandoned publish: ignored
    assert (await acks.publish("t.a", b"x", {}, 5.0)).seq == 1


async def test_publishing_many_at_once_gives_each_its_ack_or_the_error_publish_would_raise(nc: Client) -> None:
    silent = await nc.subscribe("q.silent")
    acks = AckedPublisher(nc)
    messages = [("t.a", b"x", {"Nats-Msg-Id": "m1"}), ("elsewhere.a", b"x", {}), ("t.a", b"x" * 2000, {}),
                ("q.silent", b"x", {}), ("t.a", b"y", {"Nats-Msg-Id": "m1"}), ("t.b", b"z", {})]  # fmt: skip
    first, nowhere, too_large, unanswered, duplicate, last = await acks.publish_all(messages, 0.5)
    assert isinstance(first, Ack) and isinstance(duplicate, Ack) and isinstance(last, Ack)
    assert (first.seq, first.duplicate, duplicate.seq, duplicate.duplicate, last.seq) == (1, False, 1, True, 2)
    assert isinstance(nowhere, NoStreamResponseError)
    assert isinstance(too_large, APIError) and too_large.err_code == 10054
    assert unanswered is None
    late = await silent.next_msg(timeout=1)
    await nc.publish(late.reply, b'{"stream":"T","seq":1}')  # answers the abandoned publish: ignored
    assert (await acks.publish_all([("t.c", b"x", {})], 5.0))[0] == Ack("T", 3)


async def test_a_message_that_cannot_be_sent_is_its_error_and_the_others_go(nc: Client) -> None:
    too_large = b"x" * (nc.max_payload + 1)  # refused by the client before it is sent
    sent = await AckedPublisher(nc).publish_all([("t.a", too_large, {}), ("t.a", b"x", {})], 5.0)
    assert isinstance(sent[0], nats.errors.MaxPayloadError) and sent[1] == Ack("T", 1)
