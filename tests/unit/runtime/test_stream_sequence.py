"""A delivered message's stream sequence, read from its reply subject: what nats-py's metadata says."""

from typing import Any

import pytest
from nats.aio.msg import Msg
from nats.errors import NotJSMessageError

from fleetflow.runtime.consumer import stream_sequence

REPLIES = [
    "$JS.ACK.ff-cold-telemetry.processor-chain-0.1.4711.4700.1764670000000000000.12",  # v1
    "$JS.ACK._.ACCHASH.ff-cold-telemetry.processor-chain-0.2.4711.4700.1764670000000000000.12.xyz",  # v2, no domain
    "$JS.ACK.hub.ACCHASH.ff-cold-telemetry.processor-chain-0.1.4711.4700.1764670000000000000.12",  # v2, 11 tokens
]


def msg(reply: str) -> Msg:
    client: Any = None  # parsing the reply needs no connection
    return Msg(client, subject="ff.cold.tm.1.box-1", reply=reply, data=b"")


@pytest.mark.parametrize("reply", REPLIES)
def test_the_stream_sequence_is_the_one_nats_py_reads(reply: str) -> None:
    assert stream_sequence(msg(reply)) == msg(reply).metadata.sequence.stream == 4711


@pytest.mark.parametrize("reply", ["", "_INBOX.abc.1", "$JS.ACK.too.few.tokens", "$JS.API.x.y.z.1.2.3.4"])
def test_a_reply_that_is_no_jetstream_ack_subject_is_nats_pys_error(reply: str) -> None:
    with pytest.raises(NotJSMessageError):
        stream_sequence(msg(reply))
