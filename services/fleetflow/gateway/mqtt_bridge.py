"""MQTT devices' data through the gateway: telemetry and command results from their topics, commands to them.

nats-server's MQTT listener turns a device's QoS 1 publish on `fleetflow/<fleet>/<device>/telemetry` into a
message on `fleetflow.<fleet>.<device>.telemetry`, which the ingress stream `ff-<fleet>-mqtt` captures. The
gateway consumes that stream with a durable consumer (shared by its replicas), validates every body on its own
as HTTP does, and publishes a device's consecutive valid messages of one fetch as one telemetry batch
(mqtt_intake.py); a body that can never be valid is counted and dead-lettered with the reason; an outage is
retried. Commands go to a device while it is online: it says so by publishing "online" to its status topic
after subscribing, and its will (or a clean "offline") ends it."""

import asyncio
import contextlib
import json
import re
from collections.abc import Sequence

import msgspec
import nats.errors
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, RetentionPolicy, StorageType, StreamConfig

from fleetflow.api import DeviceFleet
from fleetflow.api.identifiers import DEVICE_ID
from fleetflow.gateway.command_sessions import CommandSessions
from fleetflow.gateway.intake import DeviceIntake
from fleetflow.gateway.mqtt_auth import subject_prefix
from fleetflow.gateway.mqtt_intake import TelemetryIntake
from fleetflow.runtime import cancellation, jetstream
from fleetflow.runtime.codec import Command
from fleetflow.runtime.commands import CommandError, CommandStore, device_view
from fleetflow.runtime.consumer import BatchConsumer, DeadLetters, Failure

log = structlog.get_logger(__name__)
CONSUMER = "gateway-mqtt"
MAX_DELIVER = 10
# A fetch takes what is there, up to FETCH: what piled up while the last one was handled comes at once, and a
# device's messages among it become one telemetry batch. An idle fetch returns with the first message to arrive,
# or empty after FETCH_WAIT_S, so the stop event is checked that often.
FETCH = 1000
FETCH_WAIT_S = 0.05
HANDOVER_PROBE_S = 0.05


def ingress_stream(fleet: str) -> str:
    return f"ff-{fleet}-mqtt"


def ingress_config(fleet: DeviceFleet) -> StreamConfig:
    """Work-queue retention: a message is gone once the gateway has published (or dead-lettered) it."""
    return StreamConfig(
        name=ingress_stream(fleet.name),
        description=f"Telemetry and command results MQTT devices of fleet {fleet.name} published",
        subjects=[f"fleetflow.{fleet.name}.*.telemetry", f"fleetflow.{fleet.name}.*.results"],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        num_replicas=fleet.spec.streams.replicas,
        max_age=fleet.spec.streams.max_age_seconds,
    )


class ResultIn(msgspec.Struct, forbid_unknown_fields=True):
    id: str
    status: str
    detail: str = ""


class MqttBridge:
    def __init__(self, nc: Client, fleet: DeviceFleet, intake: DeviceIntake, store: CommandStore,
                 sessions: CommandSessions, sole: bool = False):  # fmt: skip
        """`sole`: no other gateway reads the intake, so what a crashed predecessor held comes back at once,
        ahead of newer messages (each device's order is kept across a restart)."""
        self.nc, self.js = nc, nc.jetstream()
        self.sole = sole
        self.fleet = fleet
        self.id_pattern = re.compile(fleet.spec.devices.id_pattern)
        self.intake = TelemetryIntake(intake, MAX_DELIVER)
        self.store, self.sessions = store, sessions
        self._feeds: dict[str, asyncio.Task[None]] = {}

    async def run(self, stop: asyncio.Event) -> None:
        """Consume the ingress stream and follow devices' status until `stop`; then end every command feed."""
        await jetstream.ensure_stream(self.js, ingress_config(self.fleet))
        stream = ingress_stream(self.fleet.name)
        await jetstream.ensure_consumer(self.js, stream, ConsumerConfig(
            durable_name=CONSUMER, deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.EXPLICIT, ack_wait=30,
            max_deliver=MAX_DELIVER, max_ack_pending=FETCH, description="The gateway's MQTT intake",
        ))  # fmt: skip
        dead_letters = DeadLetters(self.js, self.fleet.name, "mqtt")
        consumer = BatchConsumer(self.js, stream, CONSUMER, self.handle, dead_letters, MAX_DELIVER, batch=FETCH,
                                 wait=FETCH_WAIT_S, sole=self.sole)  # fmt: skip
        status = await self.nc.subscribe(f"fleetflow.{self.fleet.name}.*.status", cb=self._on_status)
        try:
            await consumer.run(stop)
        finally:
            with contextlib.suppress(Exception):
                await status.unsubscribe()
            for device in list(self._feeds):
                await self._end_feed(device)

    async def handle(self, msgs: Sequence[Msg]) -> list[Failure | None]:
        """Each device's messages in the order it sent them; different devices at the same time, so one slow
        publish does not hold up the whole fetch."""
        outcomes: list[Failure | None] = [None] * len(msgs)
        by_device: dict[str, list[int]] = {}
        for index, msg in enumerate(msgs):
            tokens = msg.subject.split(".", 3)
            by_device.setdefault(tokens[2] if len(tokens) > 2 else "", []).append(index)

        async def device_outcomes(device: str, indexes: list[int]) -> None:
            found = await self._device(device, [msgs[index] for index in indexes])
            for index, outcome in zip(indexes, found, strict=True):
                outcomes[index] = outcome

        await asyncio.gather(*(device_outcomes(device, indexes) for device, indexes in by_device.items()))
        return outcomes

    async def _device(self, device: str, msgs: list[Msg]) -> list[Failure | None]:
        """Command results are reported as they come; telemetry is merged into batches (mqtt_intake.py)."""
        if not DEVICE_ID.fullmatch(device) or not self.id_pattern.search(device):
            return [Failure(f"device id {device!r} is not valid in fleet {self.fleet.name!r}", poison=True)] * len(msgs)
        run = self.intake.device_run(device, msgs)
        for index, msg in enumerate(msgs):
            if msg.subject.endswith(".results"):
                run.outcomes[index] = await self._result(device, msg.data)
            else:
                await run.add(index, msg)
        await run.flush()
        return run.outcomes

    async def _result(self, device: str, data: bytes) -> Failure | None:
        try:
            result = msgspec.json.decode(data, type=ResultIn)
            await self.store.report(device, result.id, result.status, result.detail)
        except msgspec.DecodeError as exc:  # includes ValidationError
            return Failure(f'invalid_result: {exc}; send {{"id": ..., "status": ..., "detail": ...}}', poison=True)
        except CommandError as exc:
            return Failure(f"{exc.reason}: {exc.detail}", poison=True)
        return None

    async def _on_status(self, msg: Msg) -> None:
        device = msg.subject.split(".")[2]
        if msg.data.strip() == b"online":
            if device not in self._feeds or self._feeds[device].done():
                self._feeds[device] = asyncio.create_task(self._feed(device))
        else:
            await self._end_feed(device)

    async def _feed(self, device: str) -> None:
        """Publish the device's commands to its command topic for as long as it is online."""
        subject = f"{subject_prefix(self.fleet.name, device)}.commands"
        log.info("device connected", device=device, protocol="mqtt")
        try:
            async with self.sessions.open(device, "mqtt", counted=False) as session:
                async for record in session:
                    if not await self._hand_over(subject, record.command):
                        return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("command feed failed", device=device)

    async def _hand_over(self, subject: str, command: Command) -> bool:
        """Publish the claimed command; False (and the command queued again) if nobody subscribes any more.

        A device that vanished without its will being published still looks online; sending as a request
        makes nats-server answer "no responders" at once when no subscription exists, while a subscribed MQTT
        device takes the message (and never replies, so the short wait ends in a timeout)."""
        payload = json.dumps(device_view(command)).encode()
        try:
            await self.nc.request(subject, payload, timeout=HANDOVER_PROBE_S)
        except nats.errors.NoRespondersError:
            await self.store.requeue(command, "requeued: the device was no longer subscribed")
            log.info("device gone without its will; its command stays queued", device=command.device)
            return False
        except nats.errors.TimeoutError:
            pass  # delivered to the subscribed device
        return True

    async def _end_feed(self, device: str) -> None:
        task = self._feeds.pop(device, None)
        if task is not None:
            # Runs in the status subscription's callback: a cancellation of that callback (unsubscribe, the
            # connection closing) must get through, or nats-py's message loop outlives the subscription.
            await cancellation.cancel_and_wait(task)
            log.info("device disconnected", device=device, protocol="mqtt")
