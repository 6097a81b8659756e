"""MQTT telemetry into the telemetry stream: a device's consecutive messages of one fetch become one batch.

An MQTT device sends one QoS 1 message per reading or few, so one JetStream publish (and one message for the
processor and the writer) per MQTT message would cost far more than the readings. Each MQTT message is still
validated and rate limited on its own, exactly like an HTTP request; the valid ones of a device are then merged,
in order, into batches of at most maxBatchReadings readings with increasing seq, one publish each.

A message is acked only after its batch was acknowledged by JetStream (or buffered by the gateway); an invalid
one is dead-lettered alone and its neighbours go on. When a message has to be redelivered (JetStream refused
the batch, or the device is over its rate), the device's later messages are redelivered behind it, in this fetch
and in the following ones until it is back, so the device's readings do not overtake one another.

A redelivery may group readings differently from the first attempt, so a batch's dedupe id can differ and a
batch JetStream had in fact stored before its ack was lost can be published again under another id. The
writer's upsert keyed by (fleet, device, ts, seq) stores each reading once all the same."""

import time
from collections.abc import Sequence

from nats.aio.msg import Msg

from fleetflow.gateway.errors import Rejection
from fleetflow.gateway.intake import DeviceIntake
from fleetflow.runtime.codec import Reading, ReadingBatch
from fleetflow.runtime.consumer import Failure, redelivery_delay

PROTOCOL = "mqtt"
# Messages held back behind a retried one are redelivered this much after it, so they come in a later fetch.
HOLD_MARGIN_S = 0.2
# A retried message not back this long after it was due went to another gateway replica (or to the dead
# letters): stop holding the device's later messages for it.
FORGET_AFTER_S = 5.0


class TelemetryIntake:
    def __init__(self, intake: DeviceIntake, max_deliver: int):
        self.intake, self.max_deliver = intake, max_deliver
        self.fleet = intake.fleet.name
        self.max_readings = intake.fleet.spec.gateway.max_batch_readings
        # device -> {ingress stream seq of a message out for redelivery: when (monotonic) it is due back}
        self.retrying: dict[str, dict[int, float]] = {}
        self._next_sweep = 0.0

    def device_run(self, device: str, msgs: Sequence[Msg]) -> "DeviceRun":
        """A run over one device's messages of a fetch, to be fed in the order the device sent them."""
        run = DeviceRun(self, device, len(msgs))
        now = time.monotonic()
        if now >= self._next_sweep:
            self._forget_overdue(now)
        out = self._still_out(device, msgs, now)
        if out:
            run.behind(min(out), max(out.values()) - now)
        return run

    def _still_out(self, device: str, msgs: Sequence[Msg], now: float) -> dict[int, float]:
        """The device's messages out for redelivery that are not among `msgs` and not long overdue."""
        retrying = self.retrying.get(device)
        if not retrying:
            return {}
        for msg in msgs:
            retrying.pop(_stream_seq(msg), None)
        for seq in [seq for seq, due in retrying.items() if due + FORGET_AFTER_S < now]:
            del retrying[seq]
        if not retrying:
            del self.retrying[device]
        return retrying

    def _forget_overdue(self, now: float) -> None:
        """Devices that went quiet while retrying must not pile up here."""
        self._next_sweep = now + FORGET_AFTER_S
        for device, retrying in list(self.retrying.items()):
            if all(due + FORGET_AFTER_S < now for due in retrying.values()):
                del self.retrying[device]

    @staticmethod
    def failure(rejection: Rejection) -> Failure:
        """503 and 429 are passing conditions: redeliver later; anything else can never succeed."""
        return Failure(f"{rejection.reason}: {rejection.detail}", poison=rejection.permanent)


class DeviceRun:
    """One device's telemetry messages of one fetch: validated one by one, merged, published in order."""

    def __init__(self, intake: TelemetryIntake, device: str, size: int):
        self.intake, self.device = intake, device
        self.outcomes: list[Failure | None] = [None] * size
        self._merged: list[tuple[int, Msg, ReadingBatch]] = []  # the messages of the batch being merged
        self._readings: list[Reading] = []
        self._held: Failure | None = None  # set once a message will be redelivered: every later one follows it
        self._behind: tuple[int, Failure] | None = None  # the ingress seq of a message out for redelivery

    def behind(self, stream_seq: int, due_in: float) -> None:
        """The device's message at `stream_seq` of the ingress stream is out for redelivery for `due_in` s:
        hold back every message of the run that came after it."""
        held = Failure(f"held back behind a retried message of device {self.device!r}",
                       delay=max(0.0, due_in) + HOLD_MARGIN_S)  # fmt: skip
        self._behind = (stream_seq, held)

    async def add(self, index: int, msg: Msg) -> None:
        """Take the message at `index` of the run; it may publish the batch merged so far."""
        if self._held is None and self._behind is not None and _stream_seq(msg) > self._behind[0]:
            self._held = self._behind[1]
        if self._held is None:
            batch = self._admitted(index, msg)
            if batch is None:
                return
            if not self._fits(batch.readings):
                await self.flush()  # which holds the rest back if it fails
            if self._held is None:
                self._merged.append((index, msg, batch))
                self._readings += batch.readings
                return
        self._retry([(index, msg)], self._held)

    async def flush(self) -> None:
        """Publish the merged batch and wait for JetStream's ack."""
        if not self._merged:
            return
        merged, self._merged = self._merged, []
        batch = ReadingBatch(fleet=self.intake.fleet, device=self.device, readings=self._readings,
                             received_ms=merged[0][2].received_ms)  # fmt: skip
        self._readings = []
        try:
            await self.intake.intake.publish(PROTOCOL, batch)
        except Rejection as rejection:
            if rejection.permanent and len(merged) > 1:
                await self._publish_each(merged)  # so that only the message at fault is dead-lettered
            else:
                self._refused([(index, msg) for index, msg, _ in merged], self.intake.failure(rejection))

    async def _publish_each(self, merged: list[tuple[int, Msg, ReadingBatch]]) -> None:
        """Publish the messages of a refused merged batch one by one, in order (e.g. one of them alone grows
        past what NATS carries): each gets its own outcome, and the first that must be retried holds back the
        rest."""
        for position, (index, msg, batch) in enumerate(merged):
            try:
                await self.intake.intake.publish(PROTOCOL, batch)
            except Rejection as rejection:
                self._refused([(index, msg)], self.intake.failure(rejection))
                if self._held is not None:
                    self._retry([(i, m) for i, m, _ in merged[position + 1 :]], self._held)
                    return

    def _admitted(self, index: int, msg: Msg) -> ReadingBatch | None:
        """The message's readings if it is valid and within the device's rate; else its outcome is set."""
        try:
            batch = self.intake.intake.receive(PROTOCOL, self.device, msg.data)
        except Rejection as rejection:
            self._refused([(index, msg)], self.intake.failure(rejection))
            return None
        return batch

    def _fits(self, readings: Sequence[Reading]) -> bool:
        """Seq must increase within a batch, so a device that repeats a seq (a resend) starts a new one."""
        if not self._readings:
            return True
        size = len(self._readings) + len(readings)
        return readings[0].seq > self._readings[-1].seq and size <= self.intake.max_readings

    def _refused(self, messages: list[tuple[int, Msg]], failure: Failure) -> None:
        """Poison is dead-lettered alone. Anything else comes back after the longest backoff of `messages`,
        and the device's later messages after that."""
        if failure.poison:
            for index, _ in messages:
                self.outcomes[index] = failure
            return
        again = [_attempt(msg) for _, msg in messages if _attempt(msg) < self.intake.max_deliver]
        delay = max((redelivery_delay(attempt) for attempt in again), default=None)
        self._retry(messages, Failure(failure.reason, delay=delay))
        if delay is not None:  # else they are dead-lettered now, and nothing is left to wait for
            self._held = Failure(f"held back behind a retried message of device {self.device!r} ({failure.reason})",
                                 delay=delay + HOLD_MARGIN_S)  # fmt: skip

    def _retry(self, messages: list[tuple[int, Msg]], failure: Failure) -> None:
        """Redeliver `messages`, remembered until they are back so that later ones wait for them."""
        due = time.monotonic() + (failure.delay or 0.0)
        retrying = self.intake.retrying.setdefault(self.device, {})
        for index, msg in messages:
            self.outcomes[index] = failure
            if _attempt(msg) < self.intake.max_deliver:
                retrying[_stream_seq(msg)] = due


def _attempt(msg: Msg) -> int:
    return msg.metadata.num_delivered if msg.metadata else 1


def _stream_seq(msg: Msg) -> int:
    return msg.metadata.sequence.stream if msg.metadata else 0
