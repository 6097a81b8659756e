"""JetStream publishes that wait for their ack: one message per request (the gateway) or many at once (the processor).

nats-py's `js.publish` is a request/reply: per message a NUID and two bytes from `os.urandom` for the reply
subject, `asyncio.wait_for`, the standard library's JSON decoder and a PubAck built field by field. Here the
reply subjects are one inbox per connection and a counter, the wait is a timer that fails the answer, and the ack
is decoded by msgspec into the two fields a caller reads. The errors are nats-py's: `nats.errors.TimeoutError`
without an answer, `NoStreamResponseError` when no stream takes the subject, `APIError` (by code, as nats-py raises
it) when JetStream refuses the message, and whatever `Client.publish` raises (MaxPayloadError, a closed
connection)."""

import asyncio
import itertools
from collections.abc import Iterable

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

    async def publish_all(
        self, messages: Iterable[tuple[str, bytes, dict[str, str]]], timeout: float
    ) -> list[Ack | Exception | None]:
        """Publish every (subject, payload, headers), then wait up to `timeout` seconds for all their acks
        together, for a service that sends many at once (the processor). For each message its Ack, the error
        `publish` would raise for it, or None if no answer came in time. Every answer a message was waiting for
        is forgotten when this returns, answered or not."""
        inbox = self._inbox or await self._subscribe()
        loop = asyncio.get_running_loop()
        tokens: list[str] = []
        sent: list[asyncio.Future[Msg] | Exception] = []
        try:
            for subject, payload, headers in messages:
                token = str(next(self._tokens))
                tokens.append(token)
                answer: asyncio.Future[Msg] = loop.create_future()
                self._waiting[token] = answer
                try:
                    await self.nc.publish(subject, payload, reply=inbox + token, headers=headers)
                except Exception as exc:  # not sent (disconnected, draining, too large): the caller decides
                    sent.append(exc)
                else:
                    sent.append(answer)
            waiting = [answer for answer in sent if isinstance(answer, asyncio.Future)]
            if waiting:
                await asyncio.wait(waiting, timeout=timeout)
        finally:
            for token in tokens:
                del self._waiting[token]
        return [_outcome(answer) for answer in sent]

    async def _answered(self, msg: Msg) -> None:
        answer = self._waiting.get(msg.subject[len(self._inbox) :])
        if answer is not None and not answer.done():  # else its publish timed out or was cancelled
            answer.set_result(msg)


def _outcome(answer: "asyncio.Future[Msg] | Exception") -> Ack | Exception | None:
    if isinstance(answer, Exception):
        return answer
    if not answer.done():
        return None
    try:
        return _ack_of(answer.result())
    except Exception as exc:  # JetStream refused it, or no stream takes its subject
        return exc


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
