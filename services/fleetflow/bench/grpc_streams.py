"""Many devices' gRPC Connect streams over a few shared channels: the load side of the command benchmark.

`fleetflow.device.grpc_client.GrpcDevice` opens a channel (a TCP connection) per device, as a real device does.
Ten thousand of those in one process would measure the load generator; HTTP/2 carries many streams over one
connection, so here every channel holds a share of the devices' streams. A stream only listens: it records
each command pushed to it with the time it arrived, and how the gateway ended it."""

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import grpc

from fleetflow.api.protocol import device_pb2_grpc as pb_grpc


@dataclass
class DeviceStream:
    device: str
    call: Any
    commands: list[tuple[str, float]] = field(default_factory=list)  # command id, time.monotonic() on arrival
    ended: tuple[str, str] | None = None  # the status code's name and details, once the gateway ended the stream
    reader: asyncio.Task[None] | None = None

    @property
    def open(self) -> bool:
        return self.ended is None


class StreamPool:
    """Connect streams of any number of devices over `channels` channels to the gateway at `target`."""

    def __init__(self, target: str, fleet: str, channels: int = 4):
        self.fleet = fleet
        self._channels = [grpc.aio.insecure_channel(target) for _ in range(channels)]
        self._stubs = [pb_grpc.DeviceGatewayStub(channel) for channel in self._channels]
        self.streams: list[DeviceStream] = []

    async def open(self, device: str, token: str, timeout: float = 30.0) -> DeviceStream:
        """A Connect stream for `device`, returned once the gateway admitted it (sent its headers)."""
        stub = self._stubs[len(self.streams) % len(self._stubs)]
        metadata = (("authorization", f"Bearer {token}"), ("fleetflow-fleet", self.fleet), ("fleetflow-device", device))
        stream = DeviceStream(device, stub.Connect(metadata=metadata))
        self.streams.append(stream)
        stream.reader = asyncio.create_task(self._read(stream))
        with contextlib.suppress(grpc.aio.AioRpcError):
            await asyncio.wait_for(stream.call.initial_metadata(), timeout)
        return stream

    async def open_all(self, tokens: dict[str, str], concurrency: int = 200) -> list[DeviceStream]:
        """One stream per device, `concurrency` of them being admitted at a time."""
        gate = asyncio.Semaphore(concurrency)

        async def one(device: str, token: str) -> DeviceStream:
            async with gate:
                return await self.open(device, token)

        return list(await asyncio.gather(*(one(device, token) for device, token in tokens.items())))

    @staticmethod
    async def _read(stream: DeviceStream) -> None:
        try:
            async for message in stream.call:
                if message.HasField("command"):
                    stream.commands.append((message.command.id, time.monotonic()))
            stream.ended = ("OK", "")
        except grpc.aio.AioRpcError as exc:
            stream.ended = (exc.code().name, exc.details() or "")
        except asyncio.CancelledError:
            stream.ended = ("CANCELLED", "closed by the pool")
            raise

    async def close(self) -> None:
        for stream in self.streams:
            if stream.reader is not None:
                stream.reader.cancel()
        for stream in self.streams:
            if stream.reader is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await stream.reader
        for channel in self._channels:
            await channel.close()

    async def __aenter__(self) -> "StreamPool":
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()


def command_received(stream: DeviceStream, command_id: str) -> bool:
    return any(received == command_id for received, _ in stream.commands)


async def wait_until(condition: Any, timeout: float, what: str) -> None:
    """Poll `condition()` until it holds; TimeoutError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)
