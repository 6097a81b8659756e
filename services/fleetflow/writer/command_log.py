"""The store's command log: every state change of the fleet's commands, copied from the command state bucket.

The gateways (and the application API, and `fleetflow command`) keep each command's state in a JetStream
key-value bucket, whose entries expire with the command stream's retention. The writer follows the bucket's
stream with a durable consumer and upserts each command with its whole state history into its store's
command log, where `fleetflow query --commands` and the application API read it for as long as the sink keeps
data. Each entry holds the whole history, so a consumer that fell behind and sees only a command's newest entry
still logs everything; the store keeps the longest history, so a late older entry changes nothing."""

from collections.abc import Sequence

import msgspec
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from fleetflow.api import DeviceFleet, Pipeline
from fleetflow.runtime import jetstream, subjects
from fleetflow.runtime.commands import CommandRecord, CommandStore
from fleetflow.runtime.consumer import Failure
from fleetflow.writer.stores import RecordRefused, StoreUnavailable, TelemetryStore

_decoder = msgspec.json.Decoder(CommandRecord)


def consumer_config(fleet: DeviceFleet, pipeline: Pipeline) -> ConsumerConfig:
    delivery = pipeline.spec.delivery
    return ConsumerConfig(
        durable_name=subjects.command_log_consumer(pipeline.name),
        description=f"Command log of pipeline {pipeline.name}'s store",
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=delivery.ack_wait_seconds,
        max_deliver=delivery.max_deliver,
        max_ack_pending=delivery.max_ack_pending,
        filter_subject=subjects.command_state_changes(fleet.name),
    )


async def provision(js: JetStreamContext, fleet: DeviceFleet, pipeline: Pipeline) -> None:
    """The fleet's command state bucket (if no gateway made it yet) and this pipeline's consumer of it."""
    await CommandStore.open(js, fleet.name)
    await jetstream.ensure_consumer(js, subjects.command_state_stream(fleet.name), consumer_config(fleet, pipeline))


class CommandLogWriter:
    """The consumer's handler: a batch of state changes into the store in one write."""

    def __init__(self, store: TelemetryStore, fleet: str):
        self.store, self.fleet = store, fleet

    async def handle(self, msgs: Sequence[Msg]) -> Sequence[Failure | None]:
        outcomes: list[Failure | None] = [None] * len(msgs)
        records: list[tuple[int, CommandRecord]] = []
        for index, msg in enumerate(msgs):
            if not msg.data:  # a delete or purge marker: the log keeps what it had
                continue
            record, failure = self._decode(msg)
            if record is None:
                outcomes[index] = failure
            else:
                records.append((index, record))
        try:
            await self.store.write_commands([record for _, record in records])
        except StoreUnavailable as exc:
            for index, _ in records:
                outcomes[index] = Failure(f"store unavailable: {exc}")
        except RecordRefused:
            await self._one_by_one(records, outcomes)
        return outcomes

    def _decode(self, msg: Msg) -> tuple[CommandRecord | None, Failure | None]:
        try:
            record = _decoder.decode(msg.data)
        except msgspec.DecodeError as exc:
            return None, Failure(f"command state on {msg.subject!r} is not a valid command record: {exc}", poison=True)
        if record.command.fleet != self.fleet:
            return None, Failure(f"command {record.command.id!r} on {msg.subject!r} belongs to fleet "
                                 f"{record.command.fleet!r}, not {self.fleet!r}", poison=True)  # fmt: skip
        return record, None

    async def _one_by_one(self, records: list[tuple[int, CommandRecord]], outcomes: list[Failure | None]) -> None:
        """Find the records the store refuses: those are dead-lettered with its reason, the others stored."""
        for index, record in records:
            try:
                await self.store.write_commands([record])
            except RecordRefused as exc:
                outcomes[index] = Failure(str(exc), poison=True)
            except StoreUnavailable as exc:
                outcomes[index] = Failure(f"store unavailable: {exc}")
