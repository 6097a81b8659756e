"""Consumer lag as metrics: how far a durable consumer is behind its stream, read from JetStream itself."""

import asyncio
import contextlib
from collections.abc import Callable, Iterable

import nats.errors
from nats.js import JetStreamContext
from opentelemetry.metrics import CallbackOptions, Meter, Observation

POLL_INTERVAL = 5.0


class ConsumerLag:
    """Polls consumer info and exports fleetflow_consumer_{pending,ack_pending,redelivered}_messages."""

    def __init__(self, js: JetStreamContext, meter: Meter, consumers: list[tuple[str, str]]):
        self.js = js
        self.consumers = consumers  # (stream, durable)
        self.values: dict[tuple[str, str], tuple[int, int, int]] = {}
        meter.create_observable_gauge(
            "fleetflow_consumer_pending_messages",
            [self._observe(0)],
            unit="1",
            description="Messages in the stream the consumer has not yet received",
        )
        meter.create_observable_gauge(
            "fleetflow_consumer_ack_pending_messages",
            [self._observe(1)],
            unit="1",
            description="Messages delivered but not yet acknowledged",
        )
        meter.create_observable_gauge(
            "fleetflow_consumer_redelivered_messages",
            [self._observe(2)],
            unit="1",
            description="Messages currently being redelivered",
        )

    def _observe(self, index: int) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(_: CallbackOptions) -> list[Observation]:
            return [
                Observation(values[index], {"stream": stream, "consumer": consumer})
                for (stream, consumer), values in self.values.items()
            ]

        return observe

    async def poll(self, stop: asyncio.Event) -> None:
        """Refresh the values every POLL_INTERVAL seconds until `stop`."""
        while not stop.is_set():
            for stream, consumer in self.consumers:
                try:
                    info = await self.js.consumer_info(stream, consumer)
                except (nats.errors.Error, TimeoutError):
                    continue  # keep the last values; an outage shows up in the connection metrics and logs
                self.values[(stream, consumer)] = (
                    info.num_pending or 0, info.num_ack_pending or 0, info.num_redelivered or 0
                )  # fmt: skip
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), POLL_INTERVAL)
