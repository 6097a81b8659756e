"""A request's readings are freed before the gateway waits for JetStream's ack, not after it.

Hundreds of requests wait for their acks at once; readings freed after the wait are no longer in the CPU's caches,
and freeing them then cost the gateway about a tenth of its CPU (docs/performance.md, "Round 5"). Only the message
(its bytes, id and seq range) may wait. A real nats-server acknowledges."""

import gc

import nats
from opentelemetry import metrics, trace

from fleetflow.api import DeviceFleet
from fleetflow.gateway.intake import DeviceIntake
from fleetflow.gateway.publisher import TelemetryMessage, TelemetryPublisher
from fleetflow.runtime import jetstream, subjects
from fleetflow.runtime.codec import ReadingBatch
from tests.support.natsserver import NatsServer

FLEET = DeviceFleet.model_validate({"metadata": {"name": "demo"}, "spec": {}})
NOW_MS = 1_763_900_000_000
BODY = b'{"readings":[' + b",".join(
    b'{"seq":%d,"ts":%d,"metrics":{"temp":21.5,"rh":40.0}}' % (seq, NOW_MS + seq) for seq in range(1, 101)
) + b"]}"  # fmt: skip


class WatchingPublisher(TelemetryPublisher):
    """A real publisher that notes, as it starts the wait for an ack, which devices' batches are still alive."""

    alive_while_waiting: list[list[str]]

    async def send(self, message: TelemetryMessage) -> bool:
        self.alive_while_waiting.append([o.device for o in gc.get_objects() if type(o) is ReadingBatch])
        return await super().send(message)


async def test_a_requests_batch_is_gone_while_its_message_waits_for_the_ack(nats_server: NatsServer) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        await jetstream.provision_fleet(nc.jetstream(), FLEET)
        publisher = WatchingPublisher(nc, metrics.get_meter("test"), max_in_flight=8)
        publisher.alive_while_waiting = []
        intake = DeviceIntake(FLEET, b"secret", publisher, metrics.get_meter("test"))
        # An adapter's request span, unsampled as most are (the HTTP adapter's SERVER span, without the SDK here).
        request_span = trace.NonRecordingSpan(trace.SpanContext(0x1F, 0x2F, is_remote=False))
        with trace.use_span(request_span):
            accepted = await intake.ingest("http", "dev-1", BODY)

        assert (accepted.readings, accepted.duplicate, accepted.first_seq, accepted.last_seq) == (100, False, 1, 100)
        assert publisher.alive_while_waiting == [[]]
        assert (await nc.jetstream().stream_info(subjects.telemetry_stream("demo"))).state.messages == 1
    finally:
        await nc.close()
