"""Consumer lag and stream fill as metrics: how far a durable consumer is behind its stream, and how close that
stream is to its byte limit (past it, JetStream discards the oldest messages, processed or not), read from
JetStream itself."""

import asyncio
import contextlib
from collections.abc import Callable, Iterable

import nats.errors
from nats.js import JetStreamContext
from opentelemetry.metrics import CallbackOptions, Meter, Observation

POLL_INTERVAL = 5.0


class ConsumerLag:
    """Polls consumer and stream info; exports fleetflow_consumer_{pending,ack_pending,redelivered}_messages and
    fleetflow_stream_{bytes,max_bytes,messages}."""

    def __init__(self, js: JetStreamContext, meter: Meter, consumers: list[tuple[str, str]]):
        self.js = js
        self.consumers = consumers  # (stream, durable)
        self.values: dict[tuple[str, str], tuple[int, int, int]] = {}
        self.streams: dict[str, tuple[int, int, int]] = {}  # stream -> (bytes, max_bytes or -1, messages)
        self._stream_gauges(meter)
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

    def _stream_gauges(self, meter: Meter) -> None:
        meter.create_observable_gauge(
            "fleetflow_stream_bytes", [self._observe_stream(0)], unit="By", description="Bytes the stream holds"
        )
        meter.create_observable_gauge(
            "fleetflow_stream_max_bytes",
            [self._observe_stream(1)],
            unit="By",
            description="The stream's byte limit (streams bounded only by age have none)",
        )
        meter.create_observable_gauge(
            "fleetflow_stream_messages", [self._observe_stream(2)], unit="1", description="Messages the stream holds"
        )

    def _observe_stream(self, index: int) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(_: CallbackOptions) -> list[Observation]:
            return [
                Observation(values[index], {"stream": stream})
                for stream, values in self.streams.items()
                if values[index] >= 0
            ]

        return observe

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
            for stream in dict.fromkeys(stream for stream, _ in self.consumers):
                try:
                    info = await self.js.stream_info(stream)
                except (nats.errors.Error, TimeoutError):
                    continue
                limit = info.config.max_bytes if info.config.max_bytes and info.config.max_bytes > 0 else -1
                self.streams[stream] = (info.state.bytes, limit, info.state.messages)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), POLL_INTERVAL)
