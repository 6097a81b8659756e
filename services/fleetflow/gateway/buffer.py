"""Store-and-forward: while JetStream is unreachable the gateway keeps accepting telemetry into a bounded,
fsync'd on-disk buffer, and replays it in order once JetStream is back.

Each buffered batch is one file `<index>.batch` (written to a temporary name, fsync'd, renamed, directory
fsync'd), so a batch the device was told is accepted survives a gateway crash. Replay publishes with the same
data-derived Nats-Msg-Id as a direct publish, so a batch that did reach JetStream before the outage was
noticed is dropped as a duplicate (within the stream's duplicate window; after it, the writer's upsert keyed
by seq still stores each reading once)."""

import asyncio
import contextlib
import os
import time
from pathlib import Path

import msgspec
import structlog
from nats.aio.client import Client
from opentelemetry.metrics import Meter, Observation

from fleetflow.gateway.errors import Rejection
from fleetflow.gateway.publisher import TelemetryMessage, TelemetryPublisher, unavailable
from fleetflow.runtime import codec
from fleetflow.runtime.jetstream import ConnectionWatch

log = structlog.get_logger(__name__)
SUFFIX = ".batch"
REPLAY_WINDOW = 128  # batches published at once while replaying; sequential replay could not outpace intake
CONNECTION_DROPPED = "the NATS connection dropped before JetStream acknowledged the batch"


class DiskBuffer:
    """An ordered queue of encoded batches in one directory, with a limit on the bytes it holds."""

    def __init__(self, directory: Path, max_bytes: int):
        self.directory = directory
        self.max_bytes = max_bytes
        directory.mkdir(parents=True, exist_ok=True)
        for leftover in directory.glob("*.tmp"):  # a write that crashed before its rename was never acked
            leftover.unlink()
        self._files = sorted(directory.glob(f"*{SUFFIX}"))
        self.bytes = sum(path.stat().st_size for path in self._files)
        self._next = int(self._files[-1].stem) + 1 if self._files else 0

    def __len__(self) -> int:
        return len(self._files)

    def has_room(self, size: int) -> bool:
        return self.bytes + size <= self.max_bytes

    def append(self, data: bytes) -> None:
        """Write durably (blocking: call it in a thread, one at a time)."""
        path = self.directory / f"{self._next:016d}{SUFFIX}"
        self._next += 1
        tmp = path.with_suffix(".tmp")
        with tmp.open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(path)
        _fsync_dir(self.directory)
        self._files.append(path)
        self.bytes += len(data)

    def oldest_age(self, now: float) -> float:
        """Seconds the oldest batch has waited (0 when empty)."""
        if not self._files:
            return 0.0
        try:
            return max(0.0, now - self._files[0].stat().st_mtime)
        except FileNotFoundError:  # replayed meanwhile
            return 0.0

    def oldest(self, count: int) -> list[tuple[Path, bytes]]:
        return [(path, path.read_bytes()) for path in self._files[:count]]

    def remove(self, paths: list[Path]) -> None:
        """Forget the oldest `paths` (JetStream has them now)."""
        for path in paths:
            self.bytes -= path.stat().st_size
            path.unlink()
        del self._files[: len(paths)]

    def set_aside(self, path: Path, suffix: str = ".corrupt") -> Path:
        """Take a file no retry can publish out of the queue, keeping it (renamed) for inspection."""
        size = path.stat().st_size
        aside = path.with_suffix(suffix)
        path.rename(aside)
        self._files.remove(path)
        self.bytes -= size
        return aside


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BufferedPublisher(TelemetryPublisher):
    """A TelemetryPublisher that falls back to the disk buffer when JetStream does not answer.

    Only an outage is buffered: a batch NATS can never carry is refused (413) before it could enter the buffer,
    and one that turns out unpublishable during replay is set aside, so nothing waits behind it. While anything
    is buffered, new batches are buffered too, so replay keeps the order in which batches were accepted."""

    def __init__(self, nc: Client, watch: ConnectionWatch, meter: Meter, max_in_flight: int, buffer: DiskBuffer,
                 budgeted: bool = False):  # fmt: skip
        super().__init__(nc, meter, max_in_flight, budgeted)
        self.watch, self.buffer = watch, buffer
        self._write_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self.drained = asyncio.Event()
        self._progress_at = time.monotonic()  # when the buffer last shrank or was empty
        if not len(buffer):
            self.drained.set()
        self.buffered_batches = meter.create_counter(
            "fleetflow_gateway_buffered_batches", unit="1", description="Batches written to the outage buffer"
        )
        self.replayed_batches = meter.create_counter(
            "fleetflow_gateway_replayed_batches", unit="1", description="Buffered batches published after an outage"
        )
        self.set_aside_batches = meter.create_counter(
            "fleetflow_gateway_buffer_rejected_batches", unit="1",
            description="Buffered batches JetStream refused for good during replay, set aside as .rejected files",
        )  # fmt: skip
        for counter in (self.buffered_batches, self.replayed_batches, self.set_aside_batches):
            counter.add(0)
        meter.create_observable_gauge(
            "fleetflow_gateway_buffer_bytes", callbacks=[lambda _: [Observation(self.buffer.bytes)]], unit="By",
            description="Bytes waiting in the outage buffer",
        )  # fmt: skip
        meter.create_observable_gauge(
            "fleetflow_gateway_buffer_oldest_age_seconds", unit="s",
            callbacks=[lambda _: [Observation(self.buffer.oldest_age(time.time()))]],
            description="How long the oldest buffered batch has waited; growing while NATS is up means stuck",
        )  # fmt: skip

    def stalled_for(self) -> float:
        """Seconds the buffer has held batches without shrinking while NATS was connected (0 if draining)."""
        if not len(self.buffer) or not self.nc.is_connected:
            self._progress_at = time.monotonic()
            return 0.0
        return time.monotonic() - self._progress_at

    async def publish(self, message: TelemetryMessage) -> bool:
        # A batch NATS can never carry was refused when its message was built (TelemetryPublisher.message), so it
        # never reaches the buffer.
        if not len(self.buffer) and self.nc.is_connected:
            try:
                return await self._publish_unless_lost(message)
            except Rejection as rejection:
                if rejection.status != 503:
                    raise
        await self._store(message.payload)
        return False

    async def _publish_unless_lost(self, message: TelemetryMessage) -> bool:
        """Publish, but give up as soon as the connection drops: JetStream's answer would never come, and the
        device would wait out the whole publish timeout before its batch reached the buffer.

        The drop cancels this task's wait (and only that cancellation becomes a 503): racing the publish in a
        task of its own against the drop cost every request two tasks and a wait."""
        if self.watch.lost.is_set():
            raise unavailable(CONNECTION_DROPPED)
        task = asyncio.current_task()
        assert task is not None  # called from a coroutine
        dropped = False

        def give_up() -> None:
            nonlocal dropped
            if not dropped:  # a second drop before this task ran again must not count as a second cancel
                dropped = True
                task.cancel()

        stop_watching = self.watch.call_when_lost(give_up)
        try:
            return await self.send(message)
        except asyncio.CancelledError:
            if dropped and task.uncancel() == 0:  # nobody else cancelled the request
                raise unavailable(CONNECTION_DROPPED) from None
            raise
        finally:
            stop_watching()

    async def _store(self, data: bytes) -> None:
        async with self._write_lock:
            if not self.buffer.has_room(len(data)):
                raise Rejection(
                    503,
                    "buffer_full",
                    f"the telemetry stream is unreachable and the gateway's outage buffer is full "
                    f"({self.buffer.bytes} of {self.buffer.max_bytes} bytes); retry later",
                    {"Retry-After": "5"},
                )
            await asyncio.to_thread(self.buffer.append, data)
            self.drained.clear()
        self.buffered_batches.add(1)
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Replay buffered batches, oldest first, whenever NATS is connected; returns when `stop` is set."""
        while not stop.is_set():
            if not len(self.buffer) or not self.nc.is_connected:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), 0.5)
                continue
            try:
                replayed = await self._replay_oldest()
            except Exception:  # e.g. a disk error: keep the loop alive, the batch stays buffered
                log.exception("replaying the outage buffer failed; retrying")
                replayed = False
            if not replayed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.5)

    async def _replay_oldest(self) -> bool:
        """Publish the oldest batches as one pipelined window (written to the connection in order, so
        JetStream stores them in order), then forget those acknowledged. False if JetStream refused."""
        window = await asyncio.to_thread(self.buffer.oldest, REPLAY_WINDOW)
        batches = []
        for path, data in window:
            try:
                batches.append((path, TelemetryMessage.of(codec.decode_batch(data), data)))
            except msgspec.DecodeError:
                await self._set_aside(path, ".corrupt", "unreadable file in the outage buffer")
                return True
        outcomes = await asyncio.gather(*(self.send(message) for _, message in batches),
                                        return_exceptions=True)  # fmt: skip
        done, rejected = [], []
        for (path, _), outcome in zip(batches, outcomes, strict=True):
            if isinstance(outcome, Rejection) and outcome.status != 503:
                rejected.append((path, outcome))
            elif isinstance(outcome, BaseException):
                log.info("replay paused; JetStream did not take a buffered batch", detail=str(outcome),
                         buffered=len(self.buffer))  # fmt: skip
                break
            else:
                done.append(path)
        # Only a prefix is handled: what follows a batch JetStream did not take is published again later.
        for path, rejection in rejected:  # first: what is left of the handled prefix is then `done`, in order
            await self._set_aside(path, ".rejected", f"{rejection.reason}: {rejection.detail}")
        await self._forget(done)
        return len(done) + len(rejected) == len(batches)

    async def _set_aside(self, path: Path, suffix: str, reason: str) -> None:
        """No retry can publish this file: keep it for inspection, out of the queue, so others go on."""
        async with self._write_lock:
            aside = self.buffer.set_aside(path, suffix)
        self.set_aside_batches.add(1)
        self._progress_at = time.monotonic()
        log.error("buffered batch set aside; it can never be published", path=str(aside), reason=reason)

    async def _forget(self, done: list[Path]) -> None:
        async with self._write_lock:
            await asyncio.to_thread(self.buffer.remove, done)
            if done:
                self._progress_at = time.monotonic()
            if not len(self.buffer):
                self.drained.set()
                log.info("outage buffer drained")
        self.replayed_batches.add(len(done))
