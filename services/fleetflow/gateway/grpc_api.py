"""The device API over gRPC (package fleetflow.device.v1): a bidirectional Connect stream and a unary
PublishTelemetry. An adapter onto the intake (intake.py): telemetry gets the same checks, limits, rate limit
and publisher as every other protocol; a refusal is an ack carrying the error, and the stream goes on."""

import asyncio
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import msgspec
import nats.errors
import structlog
from cryptography import x509
from cryptography.x509.oid import NameOID
from google.protobuf import json_format, struct_pb2
from opentelemetry.context import Context

from fleetflow.api.protocol import device_pb2 as pb
from fleetflow.api.protocol import device_pb2_grpc as pb_grpc
from fleetflow.gateway.auth import device_named
from fleetflow.gateway.command_sessions import CommandSession, CommandSessions, SessionReplaced
from fleetflow.gateway.errors import Rejection
from fleetflow.gateway.intake import DeviceIntake, Peer, mark_refused
from fleetflow.runtime import cancellation, httpserver, telemetry
from fleetflow.runtime.commands import CommandError, CommandRecord, CommandStore

log = structlog.get_logger(__name__)
PROTOCOL = "grpc"
SERVICE = "fleetflow.device.v1.DeviceGateway"
ANY_ADDRESS = ("", "0.0.0.0", "::", "[::]")  # a listener on every interface: no address a device could dial

_STATUS_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.FAILED_PRECONDITION,
    413: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
    507: grpc.StatusCode.RESOURCE_EXHAUSTED,
}
_RESULTS = {pb.CommandResult.SUCCEEDED: "succeeded", pb.CommandResult.FAILED: "failed",
            pb.CommandResult.REJECTED: "rejected"}  # fmt: skip


def batch_body(batch: pb.TelemetryBatch) -> bytes:
    """The batch as the JSON body HTTP devices send, so one validator checks every protocol."""
    readings = []
    for index, r in enumerate(batch.readings):
        if not all(math.isfinite(value) for value in r.metrics.values()):
            raise Rejection(400, "non_finite_number", f"readings[{index}].metrics holds NaN or an infinity; metric "
                            "values must be finite numbers")  # fmt: skip
        readings.append({"seq": r.seq, "ts": r.ts_ms, "metrics": dict(r.metrics)})
    return msgspec.json.encode({"readings": readings})


def command_message(record: CommandRecord) -> pb.GatewayMessage:
    params = struct_pb2.Struct()
    params.update(record.command.params)
    command = pb.Command(id=record.command.id, name=record.command.name, params=params,
                         created_ms=record.command.created_ms, expires_ms=record.expires_ms)  # fmt: skip
    return pb.GatewayMessage(command=command)


def _error(rejection: Rejection | CommandError) -> pb.Error:
    status = rejection.status
    return pb.Error(status=status, reason=rejection.reason, detail=rejection.detail)


class DeviceGatewayService(pb_grpc.DeviceGatewayServicer):
    def __init__(self, intake: DeviceIntake, sessions: CommandSessions, store: CommandStore):
        self.intake, self.sessions, self.store = intake, sessions, store
        self.address: tuple[str, int | None] = ("", None)  # where the server listens, once start_server bound it
        self.streams_open = intake.meter.create_up_down_counter(
            "fleetflow_gateway_grpc_streams", unit="1", description="Open gRPC Connect streams"
        )

    def _device(self, context: grpc.aio.ServicerContext) -> str:
        """The authenticated device id of the call; Rejection(401/400/404) otherwise."""
        metadata = _metadata(context)
        device = metadata.get("fleetflow-device", "")
        self.intake.admit(PROTOCOL, metadata.get("fleetflow-fleet", ""), device, metadata.get("authorization"),
                          certified_device(context))  # fmt: skip
        return device

    async def _ingest(self, device: str, batch: pb.TelemetryBatch, call: "_Call") -> pb.TelemetryAck:
        """Validate, rate-limit and publish one batch; a refusal is an ack carrying the error."""
        first = batch.readings[0].seq if batch.readings else 0
        last = batch.readings[-1].seq if batch.readings else 0

        def attributes() -> dict[str, str | int]:
            return {"rpc.system": "grpc", "rpc.service": SERVICE, "rpc.method": call.method,
                    "fleetflow.readings": len(batch.readings)}  # fmt: skip

        with self.intake.server_span(PROTOCOL, f"{SERVICE}/{call.method}", call.peer, device, call.trace_context,
                                     attributes) as span:  # fmt: skip
            try:
                with self.intake.counted(PROTOCOL, device):
                    body = batch_body(batch)
                accepted = await self.intake.ingest(PROTOCOL, device, body, received_bytes=batch.ByteSize())
            except Rejection as rejection:
                mark_refused(span, rejection)
                return pb.TelemetryAck(first_seq=first, last_seq=last, error=_error(rejection))
        return pb.TelemetryAck(first_seq=first, last_seq=last, accepted=accepted.readings,
                               duplicate=accepted.duplicate)  # fmt: skip

    def _call(self, context: grpc.aio.ServicerContext, method: str) -> "_Call":
        """Who called `method` over which connection, and the trace the device's metadata continues."""
        client_address, client_port = _peer_address(context.peer())
        server_address, server_port = self.address
        peer = Peer(transport="tcp", protocol="http", protocol_version="2", client_address=client_address,
                    client_port=client_port, server_address="" if server_address in ANY_ADDRESS else server_address,
                    server_port=server_port)  # fmt: skip
        return _Call(method, peer, telemetry.extract(_metadata(context)))

    async def PublishTelemetry(self, request: pb.TelemetryBatch, context: grpc.aio.ServicerContext) -> pb.TelemetryAck:
        try:
            device = self._device(context)
        except Rejection as rejection:
            await context.abort(_STATUS_CODES[rejection.status], rejection.detail)
        ack = await self._ingest(device, request, self._call(context, "PublishTelemetry"))
        if ack.HasField("error"):
            await context.abort(_STATUS_CODES.get(ack.error.status, grpc.StatusCode.UNKNOWN),
                                f"{ack.error.reason}: {ack.error.detail}")  # fmt: skip
        return ack

    async def Connect(
        self, request_iterator: AsyncIterator[pb.DeviceMessage], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GatewayMessage]:
        try:
            device = self._device(context)
        except Rejection as rejection:
            await context.abort(_STATUS_CODES[rejection.status], rejection.detail)
        # Headers now tell the device it is admitted; it waits for them before writing (see GrpcDevice.connect).
        await context.send_initial_metadata(())
        outbound: asyncio.Queue[pb.GatewayMessage | None] = asyncio.Queue(maxsize=1024)
        self.streams_open.add(1)
        log.info("device connected", device=device, protocol="grpc")
        try:
            async with self.sessions.open(device, "grpc") as session:
                call = self._call(context, "Connect")
                reader = asyncio.create_task(self._read(device, request_iterator, outbound, call))
                pusher = asyncio.create_task(self._push(session, outbound))
                try:
                    while (message := await outbound.get()) is not None:
                        yield message
                finally:
                    for task in (pusher, reader):
                        await cancellation.cancel_and_wait(task)
                ending = pusher.result() if pusher.done() and not pusher.cancelled() else None
                if ending is not None:
                    await context.abort(*ending)
        finally:
            self.streams_open.add(-1)
            log.info("device disconnected", device=device, protocol="grpc")

    async def _read(self, device: str, requests: AsyncIterator[pb.DeviceMessage],
                    outbound: asyncio.Queue[pb.GatewayMessage | None], call: "_Call") -> None:  # fmt: skip
        """Handle the device's messages in order: each batch is acked before the next one is read."""
        try:
            async for message in requests:
                if message.HasField("telemetry"):
                    ack = await self._ingest(device, message.telemetry, call)
                    await outbound.put(pb.GatewayMessage(ack=ack))
                elif message.HasField("result"):
                    await outbound.put(pb.GatewayMessage(result_ack=await self._result(device, message.result)))
        finally:
            await outbound.put(None)

    async def _result(self, device: str, result: pb.CommandResult) -> pb.CommandResultAck:
        status = _RESULTS.get(result.status, "")
        try:
            record = await self.store.report(device, result.command_id, status, result.detail)
        except CommandError as exc:
            return pb.CommandResultAck(command_id=result.command_id, error=_error(exc))
        return pb.CommandResultAck(command_id=result.command_id, state=record.state)

    @staticmethod
    async def _push(session: CommandSession, outbound: asyncio.Queue[pb.GatewayMessage | None]
                    ) -> tuple[grpc.StatusCode, str]:  # fmt: skip
        """Push the device's commands until the stream must end; returns the status it ends with. A stream
        that cannot take commands any more must not stay open: the device reconnects and reads its backlog."""
        try:
            async for record in session:
                await outbound.put(command_message(record))
        except SessionReplaced as exc:
            ending = (grpc.StatusCode.ABORTED, str(exc))
        except (nats.errors.Error, TimeoutError) as exc:
            log.warning("command delivery failed; ending the stream", device=session.device, error=repr(exc))
            ending = (grpc.StatusCode.UNAVAILABLE, f"commands cannot be delivered now ({exc!r}); connect again")
        await outbound.put(None)
        return ending


# HTTP/2 keepalive: the gateway pings every connection after 30 s without traffic and closes it when the ping is
# not answered within 10 s, so the Connect streams of a device whose link died silently (no FIN, no RST) end
# within about 40 s and free their command sessions. Pings go on however long a stream stays idle
# (max_pings_without_data 0). Devices may ping too, at most every 10 s.
SERVER_OPTIONS = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
]


def tls_credentials(
    cert_file: Path | None, key_file: Path | None, client_ca_file: Path | None = None, client_required: bool = False
) -> grpc.ServerCredentials | None:
    """Server credentials from PEM files, or None for plaintext (both files or neither must be given).

    With `client_ca_file` and `client_required`, a client must present a certificate that CA signed, or its
    handshake fails. grpcio offers no "ask, verify if given" mode (C-core's REQUEST_CLIENT_CERTIFICATE_AND_VERIFY
    is not exposed: `require_client_auth=False` does not ask at all), so with optional client auth gRPC devices
    authenticate with their token."""
    if cert_file is None and key_file is None:
        return None
    if cert_file is None or key_file is None:
        raise ValueError(f"gRPC TLS needs both tls_cert_file and tls_key_file; got cert {cert_file} and key {key_file}")
    pair = [(key_file.read_bytes(), cert_file.read_bytes())]
    if client_ca_file is None or not client_required:
        return grpc.ssl_server_credentials(pair)
    return grpc.ssl_server_credentials(pair, root_certificates=client_ca_file.read_bytes(), require_client_auth=True)


def certified_device(context: grpc.aio.ServicerContext) -> str | None:
    """The device id (subject CN) of the client certificate the handshake verified: None without a certificate
    (see auth.device_named). Read from the certificate itself: gRPC's `x509_common_name` holds one CN at most."""
    pem = (context.auth_context() or {}).get("x509_pem_cert")
    if not pem:
        return None
    subject = x509.load_pem_x509_certificate(pem[0]).subject
    return device_named([str(name.value) for name in subject.get_attributes_for_oid(NameOID.COMMON_NAME)])


@dataclass(frozen=True)
class _Call:
    """A device's call: its method, the connection it came over, and the trace its metadata continues."""

    method: str
    peer: Peer
    trace_context: Context


def _peer_address(peer: str) -> tuple[str, int | None]:
    """gRPC's peer string ("ipv4:10.0.0.7:52140", "ipv6:[::1]:52140") as an address and a port."""
    _, _, hostport = peer.partition(":")
    host, _, port = hostport.rpartition(":")
    if not port.isdigit():
        return hostport, None
    return host.strip("[]"), int(port)


def _metadata(context: grpc.aio.ServicerContext) -> dict[str, str]:
    return {key: value for key, value in (context.invocation_metadata() or ()) if isinstance(value, str)}


async def start_server(service: DeviceGatewayService, host: str, port: int, tls: grpc.ServerCredentials | None,
                       max_body_bytes: int) -> tuple[grpc.aio.Server, int]:  # fmt: skip
    """Serve the device API (over TLS when `tls` is given); returns the server and the port it bound.

    A message up to twice maxBodyBytes is read, so the intake can refuse it with its reason while the stream
    goes on; gRPC itself refuses anything larger (RESOURCE_EXHAUSTED), so no device can make it buffer more."""
    # A connection must finish its handshake (TLS and HTTP/2's) as soon as an HTTP device must send its headers,
    # not in grpc's default 120 s: else a client that sends nothing holds it that long.
    handshake = ("grpc.server_handshake_timeout_ms", int(httpserver.HEADER_TIMEOUT_S * 1000))
    server = grpc.aio.server(
        options=[*SERVER_OPTIONS, handshake, ("grpc.max_receive_message_length", 2 * max_body_bytes)]
    )
    pb_grpc.add_DeviceGatewayServicer_to_server(service, server)
    address = f"{host}:{port}"
    bound = server.add_secure_port(address, tls) if tls else server.add_insecure_port(address)
    await server.start()
    service.address = (host, bound)
    return server, bound


def params_of(command: pb.Command) -> dict[str, Any]:
    """A pushed command's parameters as plain Python values (numbers arrive as floats)."""
    return json_format.MessageToDict(command.params)
