"""JetStream publishes that wait for their ack, for a service that sends one message per request (the gateway).

nats-py's `js.publish` is a request/reply: per message a NUID and two bytes from `os.urandom` for the reply
subject, `asyncio.wait_for`, the standard library's JSON decoder and a PubAck built field by field. Here the
reply subjects are one inbox per connection and a counter, the wait is a timer that fails the answer, and the ack
is decoded by msgspec into the two fields a caller reads. The errors are nats-py's: `nats.errors.TimeoutError`
without an answer, `NoStreamResponseError` when no stream takes the subject, `APIError` (by code, as nats-py raises
it) when JetStream refuses the message, and whatever `Client.publish` raises (MaxPayloadError, a closed
connection)."""

import asyncio
import itertools

import msgspec
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.errors import APIError, NoStreamResponseError

NO_RESPONDERS = "503"  # the status header nats-server answers with when no stream listens on the subject


class Ack(msgspec.Struct, gc=False):
    """What JetStream answers a publish with: where it stored the message, or why it did not."""

    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    error: dict[str, object] | None = None


_decode_ack = msgspec.json.Decoder(Ack).decode


class AckedPublisher:
    def __init__(self, nc: Client):
        self.nc = nc
        self._inbox = ""  # `<inbox>.`: subscribed on first use (nats-py subscribes again after a reconnect)
        self._subscribing: asyncio.Lock = asyncio.Lock()
        self._tokens = itertools.count()
        self._waiting: dict[str, asyncio.Future[Msg]] = {}

    async def publish(self, subject: str, payload: bytes, headers: dict[str, str], timeout: float) -> Ack:
        """Publish and wait up to `timeout` seconds for JetStream's ack."""
        inbox = self._inbox or await self._subscribe()
        token = str(next(self._tokens))
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[Msg] = loop.create_future()
        self._waiting[token] = answer
        expiry: asyncio.TimerHandle | None = None
        try:
            await self.nc.publish(subject, payload, reply=inbox + token, headers=headers)
            # A timer that fails the answer, rather than asyncio.timeout, which cancels and uncancels the task:
            # the same limit, at a fraction of the CPU, and the one await is on the answer either way.
            expiry = loop.call_later(timeout, _expire, answer)
            msg = await answer
        finally:
            if expiry is not None:
                expiry.cancel()
            del self._waiting[token]
        return _ack_of(msg)

    async def _subscribe(self) -> str:
        async with self._subscribing:  # the first requests arrive together; one subscription serves them all
            if not self._inbox:
                inbox = f"{self.nc.new_inbox()}."
                await self.nc.subscribe(f"{inbox}*", cb=self._answered)
                self._inbox = inbox
        return self._inbox

    async def _answered(self, msg: Msg) -> None:
        answer = self._waiting.get(msg.subject[len(self._inbox) :])
        if answer is not None and not answer.done():  # else its publish timed out or was cancelled
            answer.set_result(msg)


def _expire(answer: "asyncio.Future[Msg]") -> None:
    if not answer.done():
        answer.set_exception(nats.errors.TimeoutError())


def _ack_of(msg: Msg) -> Ack:
    if msg.headers and msg.headers.get("Status") == NO_RESPONDERS:
        raise NoStreamResponseError
    ack = _decode_ack(msg.data)
    if ack.error is not None:
        APIError.from_error(ack.error)  # raises the error class of its code, as js.publish does
    return ack
