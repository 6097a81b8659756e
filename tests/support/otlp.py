"""A real OTLP/gRPC trace receiver for tests: the services export to it as they would to a Collector."""

import threading
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass, field

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


@dataclass(frozen=True)
class ReceivedSpan:
    service: str
    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_span_id: str
    links: tuple[str, ...]  # trace ids this span links to
    attributes: dict[str, object]
    status: tuple[int, str] = (0, "")  # OTLP status code (2: error) and message


@dataclass
class TraceReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    spans: list[ReceivedSpan] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def Export(self, request, context):  # type: ignore[no-untyped-def]
        received = []
        for resource_spans in request.resource_spans:
            attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            service = str(attributes.get("service.name", "?"))
            for scope in resource_spans.scope_spans:
                for span in scope.spans:
                    received.append(ReceivedSpan(
                        service, span.name, span.kind, span.trace_id.hex(), span.span_id.hex(),
                        span.parent_span_id.hex(), tuple(link.trace_id.hex() for link in span.links),
                        {a.key: _value(a.value) for a in span.attributes}, (span.status.code, span.status.message),
                    ))  # fmt: skip
        with self.lock:
            self.spans.extend(received)
        return trace_service_pb2.ExportTraceServiceResponse()

    def snapshot(self) -> list[ReceivedSpan]:
        with self.lock:
            return list(self.spans)


def _value(value) -> object:  # type: ignore[no-untyped-def]
    return getattr(value, value.WhichOneof("value")) if value.WhichOneof("value") else None


@contextmanager
def otlp_receiver() -> Iterator[tuple[str, TraceReceiver]]:
    """Serve OTLP/gRPC on a free loopback port; yields the endpoint URL and the receiver."""
    receiver = TraceReceiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"http://127.0.0.1:{port}", receiver
    finally:
        server.stop(grace=None)
