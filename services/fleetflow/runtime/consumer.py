"""Pulling batches from a durable JetStream consumer, with dead-lettering of messages that keep failing.

A handler gets a list of messages and returns, per message, whether it succeeded; success is acked, failure
is redelivered with a growing delay until max_deliver, and then the message goes to the dead-letter stream
with the reason in a header. Nothing is dropped silently and nothing loops forever."""

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import nats.errors
import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from opentelemetry import metrics, trace

from fleetflow.runtime import jetstream, pull, subjects, telemetry
from fleetflow.runtime.cancellation import cancel_and_wait

log = structlog.get_logger(__name__)
_tracer = telemetry.tracer("runtime")

ERROR_HEADER = "Fleetflow-Error"
SOURCE_HEADERS = ("Fleetflow-Source-Stream", "Fleetflow-Source-Subject")


@dataclass
class Failure:
    """Why a message could not be handled; `poison` ones are dead-lettered at once (retrying cannot help).
    `delay` overrides the message's own backoff, to redeliver it no sooner than another it must follow.
    `dead_letter` replaces the message's data in the dead letter when only part of it failed: the handler
    committed the rest, so the dead letter holds just what still needs attention."""

    reason: str
    poison: bool = False
    delay: float | None = None
    dead_letter: bytes | None = None


Handler = Callable[[Sequence[Msg]], Awaitable[Sequence[Failure | None]]]


class Prefetch:
    """A pull subscription's fetches, the next one asked for as soon as the last is taken, so that nats-server
    delivers it while the caller works on the last. Fetched one after the other, a busy processor spent a
    quarter of its time waiting for its next fetch (docs/performance.md, "Round 4: fetching ahead"). At most one
    fetch is ever in flight, so messages come in the order they would without it.

    A message fetched ahead is delivered and unacknowledged like one in hand: if the process dies, it comes back
    as any unacknowledged message does. `rest` hands over what the fetch in flight brought, so that a caller
    stopping can finish it rather than leave it to the ack wait."""

    def __init__(self, fetch: Callable[[], Awaitable[list[Msg]]]):
        self._fetch = fetch
        self._ahead: asyncio.Future[list[Msg]] | None = None

    async def next(self) -> list[Msg]:
        """The next fetch's messages; raises what the fetch raised (nothing is then fetched ahead)."""
        fetching, self._ahead = self._ahead or asyncio.ensure_future(self._fetch()), None
        msgs = await fetching
        self._ahead = asyncio.ensure_future(self._fetch())
        return msgs

    async def rest(self) -> list[Msg]:
        """What the fetch in flight brings ([] if it fails or none is in flight); none is asked for after it."""
        fetching, self._ahead = self._ahead, None
        if fetching is None:
            return []
        try:
            return await fetching
        except (TimeoutError, nats.errors.Error):
            return []

    async def close(self) -> None:
        """End the fetch in flight, if any (a caller that leaves without `rest`, e.g. cancelled)."""
        if self._ahead is not None:
            await cancel_and_wait(self._ahead)
            self._ahead = None


# A delivered message's reply subject, as nats-server writes it (JetStream's ADR-15) and nats-py reads it:
# v1 $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>, 9 tokens;
# v2 $JS.ACK.<domain>.<account hash>.<stream>.<consumer>.<delivered>.<stream seq>..., 11 tokens or more.
_V1_TOKENS, _V1_STREAM_SEQ = 9, 5
_V2_MIN_TOKENS, _V2_STREAM_SEQ = 11, 7


def stream_sequence(msg: Msg) -> int:
    """`msg.metadata.sequence.stream`, read from the one token of the reply subject that holds it: nats-py's
    metadata parses every field, a datetime and two dataclasses, per message. A reply subject that is not a
    JetStream ack subject gets nats-py's answer (its error)."""
    tokens = (msg.reply or "").split(".")
    if tokens[0] == "$JS" and len(tokens) > 1 and tokens[1] == "ACK":
        if len(tokens) == _V1_TOKENS:
            return int(tokens[_V1_STREAM_SEQ])
        if len(tokens) >= _V2_MIN_TOKENS:
            return int(tokens[_V2_STREAM_SEQ])
    return msg.metadata.sequence.stream


def redelivery_delay(attempt: int) -> float:
    """Capped exponential backoff: 0.5 s, 1 s, 2 s ... 30 s."""
    return float(min(30.0, 0.5 * 2 ** max(0, attempt - 1)))


class DeadLetters:
    def __init__(self, js: JetStreamContext, fleet: str, source: str):
        self.js = js
        self.source = source
        self.subject = subjects.dead_letter_subject(fleet, source)
        self.sent = metrics.get_meter("fleetflow.runtime").create_counter(
            "fleetflow_messages_dead_lettered", unit="1", description="Messages dead-lettered, by source"
        )
        self.sent.add(0, {"source": source})  # exported at 0, so that increase() sees the first one

    async def send(self, msg: Msg, reason: str, data: bytes | None = None) -> None:
        """Dead-letter `msg` (or `data`, the part of it that failed) with `reason`. The id derives from the
        message's stream sequence, so a redelivered message is dead-lettered once within the duplicate window.

        The message's trace ends here, in an error span that names the reason; the dead letter carries that
        span's `traceparent`, so whoever replays it continues the same trace."""
        headers = {ERROR_HEADER: reason[:1000], SOURCE_HEADERS[1]: msg.subject}
        if msg.metadata and msg.metadata.stream:
            headers[SOURCE_HEADERS[0]] = msg.metadata.stream
            headers["Nats-Msg-Id"] = f"dlq/{msg.metadata.stream}/{msg.metadata.sequence.stream}"
        attributes = {
            **telemetry.producer_attributes(self.subject, headers.get("Nats-Msg-Id")),
            "fleetflow.dead_letter.reason": reason[:1000],
            "fleetflow.dead_letter.source": msg.subject,
        }
        with _tracer.start_as_current_span(f"dead-letter {self.source}", telemetry.extract(msg.headers),
                                           trace.SpanKind.PRODUCER, attributes) as span:  # fmt: skip
            span.set_status(trace.StatusCode.ERROR, reason[:1000])
            await self.js.publish(self.subject, msg.data if data is None else data, headers=telemetry.inject(headers))
            self.sent.add(1, {"source": self.source})
            log.warning("message dead-lettered", subject=msg.subject, reason=reason)


class BatchConsumer:
    def __init__(
        self,
        js: JetStreamContext,
        stream: str,
        durable: str,
        handler: Handler,
        dead_letters: DeadLetters,
        max_deliver: int,
        batch: int = 256,
        wait: float = 0.5,
        sole: bool = False,
    ):
        """A fetch takes what is ready, up to `batch`; when nothing is, it returns with the first messages to
        arrive, or empty after `wait` seconds. `sole`: no other process reads this durable consumer, so what it
        holds unacknowledged at start belongs to a crashed predecessor and is delivered again at once."""
        self.js, self.stream, self.durable = js, stream, durable
        self.handler, self.dead_letters = handler, dead_letters
        self.max_deliver, self.batch, self.wait = max_deliver, batch, wait
        self.sole = sole
        self.subscribed = False

    async def run(self, stop: asyncio.Event) -> None:
        """Fetch and handle until `stop` is set; the batch in hand is finished before returning."""
        if self.sole:
            await jetstream.resume_from_ack_floor(self.js, self.stream, self.durable)
        sub = await self.js.pull_subscribe_bind(self.durable, self.stream)
        self.subscribed = True
        fetches = Prefetch(lambda: pull.fetch(sub, self.batch, timeout=self.wait))
        try:
            while not stop.is_set():
                try:
                    msgs = await fetches.next()
                except (TimeoutError, nats.errors.TimeoutError):
                    continue
                except nats.errors.Error as exc:
                    log.warning("fetch failed; retrying", error=str(exc), consumer=self.durable)
                    await asyncio.sleep(0.5)
                    continue
                await self._settle(msgs, await self._handle(msgs))
            if msgs := await fetches.rest():
                await self._settle(msgs, await self._handle(msgs))
        finally:
            await fetches.close()
        await sub.unsubscribe()

    async def _handle(self, msgs: Sequence[Msg]) -> Sequence[Failure | None]:
        try:
            return await self.handler(msgs)
        except Exception as exc:  # a bug or an outage must not kill the loop; the messages are retried
            log.exception("handler failed", consumer=self.durable)
            return [Failure(f"{type(exc).__name__}: {exc}")] * len(msgs)

    async def _settle(self, msgs: Sequence[Msg], outcomes: Sequence[Failure | None]) -> None:
        for msg, failure in zip(msgs, outcomes, strict=True):
            try:
                await self._settle_one(msg, failure)
            except nats.errors.Error as exc:  # the message will be redelivered after ack_wait
                log.warning("could not settle message", error=str(exc), subject=msg.subject)

    async def _settle_one(self, msg: Msg, failure: Failure | None) -> None:
        if failure is None:
            await msg.ack()
            return
        attempt = msg.metadata.num_delivered if msg.metadata else 1
        if failure.poison or attempt >= self.max_deliver:
            reason = f"{failure.reason} (delivery {attempt} of {self.max_deliver})"
            await self.dead_letters.send(msg, reason, failure.dead_letter)
            await msg.ack()
        else:
            await msg.nak(delay=redelivery_delay(attempt) if failure.delay is None else failure.delay)
