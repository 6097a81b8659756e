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
from pathlib import Path

import msgspec
import structlog
from nats.aio.client import Client
from opentelemetry.metrics import Meter, Observation

from fleetflow.gateway.errors import Rejection
from fleetflow.gateway.publisher import TelemetryPublisher
from fleetflow.runtime import codec
from fleetflow.runtime.codec import ReadingBatch
from fleetflow.runtime.jetstream import ConnectionWatch

log = structlog.get_logger(__name__)
SUFFIX = ".batch"
REPLAY_WINDOW = 128  # batches published at once while replaying; sequential replay could not outpace intake


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

    def oldest(self, count: int) -> list[tuple[Path, bytes]]:
        return [(path, path.read_bytes()) for path in self._files[:count]]

    def remove(self, paths: list[Path]) -> None:
        """Forget the oldest `paths` (JetStream has them now)."""
        for path in paths:
            self.bytes -= path.stat().st_size
            path.unlink()
        del self._files[: len(paths)]

    def set_aside(self, path: Path) -> Path:
        """Take an unreadable file out of the queue, keeping it (renamed `.corrupt`) for inspection."""
        size = path.stat().st_size
        aside = path.with_suffix(".corrupt")
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

    While anything is buffered, new batches are buffered too, so replay keeps the order in which batches
    were accepted."""

    def __init__(self, nc: Client, watch: ConnectionWatch, meter: Meter, max_in_flight: int, buffer: DiskBuffer):
        super().__init__(nc.jetstream(), meter, max_in_flight)
        self.nc, self.watch, self.buffer = nc, watch, buffer
        self._write_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self.drained = asyncio.Event()
        if not len(buffer):
            self.drained.set()
        self.buffered_batches = meter.create_counter(
            "fleetflow_gateway_buffered_batches", unit="1", description="Batches written to the outage buffer"
        )
        self.replayed_batches = meter.create_counter(
            "fleetflow_gateway_replayed_batches", unit="1", description="Buffered batches published after an outage"
        )
        meter.create_observable_gauge(
            "fleetflow_gateway_buffer_bytes", callbacks=[lambda _: [Observation(self.buffer.bytes)]], unit="By",
            description="Bytes waiting in the outage buffer",
        )  # fmt: skip

    async def publish(self, batch: ReadingBatch) -> bool:
        if not len(self.buffer) and self.nc.is_connected:
            try:
                return await self._publish_unless_lost(batch)
            except Rejection as rejection:
                if rejection.status != 503:
                    raise
        await self._store(batch)
        return False

    async def _publish_unless_lost(self, batch: ReadingBatch) -> bool:
        """Publish, but give up as soon as the connection drops: JetStream's answer would never come, and the
        device would wait out the whole publish timeout before its batch reached the buffer."""
        attempt = asyncio.ensure_future(super().publish(batch))
        lost = asyncio.ensure_future(self.watch.lost.wait())
        try:
            await asyncio.wait({attempt, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
            gave_up = not attempt.done()
            if gave_up:
                attempt.cancel()
        if gave_up:
            raise Rejection(503, "unavailable", "the NATS connection dropped before JetStream acknowledged the batch")
        return attempt.result()

    async def _store(self, batch: ReadingBatch) -> None:
        data = codec.encode(batch)
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
                batches.append((path, codec.decode_batch(data)))
            except msgspec.DecodeError:
                async with self._write_lock:
                    aside = self.buffer.set_aside(path)
                log.error("unreadable file in the outage buffer; set aside", path=str(aside))
                return True
        outcomes = await asyncio.gather(*(super(BufferedPublisher, self).publish(b) for _, b in batches),
                                        return_exceptions=True)  # fmt: skip
        done = []
        for (path, _), outcome in zip(batches, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                log.info("replay paused; JetStream did not take a buffered batch", detail=str(outcome),
                         buffered=len(self.buffer))  # fmt: skip
                break
            done.append(path)  # only a prefix: what follows a refused batch is published again later
        async with self._write_lock:
            await asyncio.to_thread(self.buffer.remove, done)
            if not len(self.buffer):
                self.drained.set()
                log.info("outage buffer drained")
        self.replayed_batches.add(len(done))
        return len(done) == len(batches)
