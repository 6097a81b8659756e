"""A device's gRPC connection to the gateway: one Connect stream carrying telemetry, acks, commands and results.

async with GrpcDevice("127.0.0.1:7443", "demo", "pump-1", token) as device:
    ack = await device.send([{"seq": 1, "ts": 1700000000000, "metrics": {"temperature": 4.2}}])
    command = await device.commands.get()      # {"id", "name", "params", "createdMs", "expiresMs"}
    await device.report(command["id"], "succeeded")
"""

import asyncio
import collections
import contextlib
from datetime import datetime
from typing import Any

import grpc
from google.protobuf import json_format

from fleetflow.api.protocol import device_pb2 as pb
from fleetflow.api.protocol import device_pb2_grpc as pb_grpc

_STATUSES = {"succeeded": pb.CommandResult.SUCCEEDED, "failed": pb.CommandResult.FAILED,
             "rejected": pb.CommandResult.REJECTED}  # fmt: skip


class StreamClosed(ConnectionError):
    """The Connect stream ended (gateway gone, network down); whatever was not acknowledged must be resent."""


def ts_ms(value: int | str) -> int:
    """Epoch milliseconds from an integer or an RFC 3339 string."""
    return value if isinstance(value, int) else int(datetime.fromisoformat(value).timestamp() * 1000)


def batch_of(readings: list[dict[str, Any]]) -> pb.TelemetryBatch:
    return pb.TelemetryBatch(
        readings=[pb.Reading(seq=r["seq"], ts_ms=ts_ms(r["ts"]), metrics=r["metrics"]) for r in readings]
    )


def ack_dict(ack: pb.TelemetryAck) -> dict[str, Any]:
    """The ack in the shape of the HTTP answer: accepted, duplicate, firstSeq, lastSeq — or error, detail."""
    if ack.HasField("error"):
        return {"status": ack.error.status, "error": ack.error.reason, "detail": ack.error.detail}
    return {"status": 202, "accepted": ack.accepted, "duplicate": ack.duplicate, "firstSeq": ack.first_seq,
            "lastSeq": ack.last_seq}  # fmt: skip


class GrpcDevice:
    """One device on one Connect stream. Pushed commands land in `commands` (an asyncio.Queue of dicts)."""

    def __init__(self, target: str, fleet: str, device: str, token: str | None, root_certificates: bytes | None = None,
                 client_certificate: tuple[bytes, bytes] | None = None):  # fmt: skip
        """`token` None: the device authenticates with `client_certificate` alone, (certificate chain, private key)
        in PEM, which a gateway with client auth accepts instead of a token (TLS only: `root_certificates`)."""
        if client_certificate is not None and root_certificates is None:
            raise ValueError("a client certificate needs TLS: give root_certificates (the gateway's CA) too")
        self.target = target
        identity = (("fleetflow-fleet", fleet), ("fleetflow-device", device))
        self.metadata = identity if token is None else (("authorization", f"Bearer {token}"), *identity)
        self.root_certificates = root_certificates
        self.client_certificate = client_certificate
        self.commands: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._acks: collections.deque[asyncio.Future[dict[str, Any]]] = collections.deque()
        self._result_acks: collections.deque[asyncio.Future[dict[str, Any]]] = collections.deque()
        self._channel: grpc.aio.Channel | None = None
        self._call: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._send_lock = asyncio.Lock()
        self._closed_because: StreamClosed | None = None

    async def __aenter__(self) -> "GrpcDevice":
        await self.connect()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def connect(self) -> None:
        """Open the channel and the Connect stream (commands queued while offline start arriving)."""
        if self.root_certificates is not None:
            chain, key = self.client_certificate or (None, None)
            creds = grpc.ssl_channel_credentials(self.root_certificates, private_key=key, certificate_chain=chain)
            self._channel = grpc.aio.secure_channel(self.target, creds)
        else:
            self._channel = grpc.aio.insecure_channel(self.target)
        self.stub = pb_grpc.DeviceGatewayStub(self._channel)
        self._call = self.stub.Connect(metadata=self.metadata)
        self._reader = asyncio.create_task(self._read())
        # Writing before the gateway admitted the stream races with its refusal, and grpcio's asyncio client
        # then reports INTERNAL instead of the gateway's status (grpc/grpc#36066). The gateway sends headers
        # once admitted; a refusal ends the call instead, and the reader records why.
        with contextlib.suppress(grpc.aio.AioRpcError):
            await self._call.initial_metadata()
        if self._call.done():
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader

    async def close(self) -> None:
        if self._call is not None:
            with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError, grpc.aio.UsageError):
                await self._call.done_writing()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._channel is not None:
            await self._channel.close()
        self._fail_pending(StreamClosed("the device closed the stream"))

    @property
    def connected(self) -> bool:
        return self._reader is not None and not self._reader.done()

    @property
    def closed_because(self) -> str:
        """Why the Connect stream ended, e.g. "UNAUTHENTICATED: ..." ("" while it is open or never was)."""
        return str(self._closed_because) if self._closed_because else ""

    async def send(self, readings: list[dict[str, Any]], timeout: float = 10.0) -> dict[str, Any]:
        """Send one batch and wait for its ack; StreamClosed if the stream broke before the ack came."""
        ack: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        await self._write(pb.DeviceMessage(telemetry=batch_of(readings)), self._acks, ack)
        return await asyncio.wait_for(ack, timeout)

    async def report(self, command_id: str, status: str, detail: str = "", timeout: float = 10.0) -> dict[str, Any]:
        """Report how a command ended ("succeeded", "failed" or "rejected"); returns the gateway's answer."""
        result = pb.CommandResult(command_id=command_id, status=_STATUSES[status], detail=detail)
        answer: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        await self._write(pb.DeviceMessage(result=result), self._result_acks, answer)
        return await asyncio.wait_for(answer, timeout)

    async def publish(self, readings: list[dict[str, Any]], timeout: float = 10.0) -> dict[str, Any]:
        """The unary PublishTelemetry call (no stream needed)."""
        try:
            ack = await self.stub.PublishTelemetry(batch_of(readings), metadata=self.metadata, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            return {"status": exc.code().name, "error": exc.code().name.lower(), "detail": exc.details()}
        return ack_dict(ack)

    async def _write(self, message: pb.DeviceMessage, waiting: collections.deque[Any], future: Any) -> None:
        if not self.connected:
            raise self._closed_because or StreamClosed("the Connect stream is not open")
        async with self._send_lock:  # acks come back in the order of the writes
            waiting.append(future)
            try:
                await self._call.write(message)
            except (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError) as exc:
                if self._reader is not None:  # the reader learns why the stream ended: say that, not "write failed"
                    with contextlib.suppress(asyncio.CancelledError):
                        await self._reader
                if future.done() and not future.cancelled():
                    future.exception()  # this caller gets the error raised below instead
                future.cancel()
                raise self._closed_because or StreamClosed(f"writing to the Connect stream failed: {exc}") from None

    async def _read(self) -> None:
        error = StreamClosed("the gateway ended the stream")
        try:
            async for message in self._call:
                self._dispatch(message)
        except grpc.aio.AioRpcError as exc:
            error = StreamClosed(f"{exc.code().name}: {exc.details()}")
        finally:
            self._closed_because = error
            self._fail_pending(error)

    def _dispatch(self, message: pb.GatewayMessage) -> None:
        if message.HasField("ack") and self._acks:
            _settle(self._acks.popleft(), ack_dict(message.ack))
        elif message.HasField("result_ack") and self._result_acks:
            ra = message.result_ack
            answer: dict[str, Any] = {"id": ra.command_id, "state": ra.state}
            if ra.HasField("error"):
                answer = {"id": ra.command_id, "status": ra.error.status, "error": ra.error.reason,
                          "detail": ra.error.detail}  # fmt: skip
            _settle(self._result_acks.popleft(), answer)
        elif message.HasField("command"):
            c = message.command
            self.commands.put_nowait({"id": c.id, "name": c.name, "params": json_format.MessageToDict(c.params),
                                      "createdMs": c.created_ms, "expiresMs": c.expires_ms})  # fmt: skip

    def _fail_pending(self, error: Exception) -> None:
        for waiting in (self._acks, self._result_acks):
            while waiting:
                future = waiting.popleft()
                if not future.done():
                    future.set_exception(error)


def _settle(future: asyncio.Future[dict[str, Any]], value: dict[str, Any]) -> None:
    if not future.done():
        future.set_result(value)
