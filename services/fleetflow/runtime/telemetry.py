"""OpenTelemetry for every service: metrics (Prometheus on /metrics, OTLP when configured), traces whose
W3C context rides in NATS headers, and the resource that says which service, fleet, pipeline and pod."""

import functools
import os
import random
import re
from collections.abc import Iterable, Iterator, Mapping
from importlib import metadata

import prometheus_client
from nats.aio.msg import Msg
from opentelemetry import metrics, trace
from opentelemetry.context import Context
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Histogram, Meter, Observation
from opentelemetry.sdk.environment_variables import OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Tracer as SdkTracer
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased, Sampler
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from fleetflow.runtime import certificates

# Seconds: fine resolution where JetStream acks and SQLite commits live, up to a minute of backlog.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# Device to store: the same fine start, then store-and-forward backlogs of minutes to a day (a device or a
# gateway buffers while offline and sends hours late; those readings must not all land in +Inf).
END_TO_END_BUCKETS = (*LATENCY_BUCKETS, 120, 300, 600, 1800, 3600, 7200, 14400, 43200, 86400)
# Bytes of a processor checkpoint: 1 KiB to 256 MiB in factors of 4 (the default buckets stop at 10000).
CHECKPOINT_BYTES_BUCKETS = tuple(float(1024 * 4**i) for i in range(10))

# The downward API puts these into a pod's environment (the operator's builders do), so spans and
# metrics name the pod they came from.
_KUBERNETES_ENV = {"k8s.pod.name": "POD_NAME", "k8s.namespace.name": "POD_NAMESPACE", "k8s.node.name": "NODE_NAME"}

_PROPAGATOR = TraceContextTextMapPropagator()
_configured = False
_series_labels: dict[str, str] = {}


def version() -> str:
    """The installed fleetflow's version (service.version), or "unknown" when run from a bare source tree."""
    try:
        return metadata.version("fleetflow")
    except metadata.PackageNotFoundError:
        return "unknown"


def _otlp(signal: str) -> bool:
    return bool(
        os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get(f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT")
    )


def resource(service: str, fleet: str | None = None, pipeline: str | None = None) -> Resource:
    attributes = {
        "service.name": f"fleetflow-{service}",
        "service.namespace": "fleetflow",
        "service.version": version(),
    }
    if fleet:
        attributes["fleetflow.fleet"] = fleet
    if pipeline:
        attributes["fleetflow.pipeline"] = pipeline
    attributes.update({key: os.environ[env] for key, env in _KUBERNETES_ENV.items() if os.environ.get(env)})
    return Resource.create(attributes)  # also reads OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME


def configure(service: str, fleet: str | None = None, pipeline: str | None = None) -> metrics.Meter:
    """Install the meter and tracer providers once per process; return the service's meter.

    Exporters follow the standard OTEL_* variables: with OTEL_EXPORTER_OTLP_ENDPOINT (or the per-signal
    variant) set, metrics and traces also go over OTLP. Spans are recorded even without an exporter, so every
    log line carries a trace id that matches the one in the NATS headers."""
    global _configured
    if not _configured:
        res = resource(service, fleet, pipeline)
        readers: list[MetricReader] = [PrometheusMetricReader()]
        if _otlp("METRICS"):
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

            readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
        metrics.set_meter_provider(MeterProvider(resource=res, metric_readers=readers))
        tracer_provider = TracerProvider(resource=res, sampler=_sampler())
        if _otlp("TRACES"):
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        trace.set_tracer_provider(tracer_provider)
        _series_labels.update(series_labels(service, fleet, pipeline))
        certificates.register(metrics.get_meter("fleetflow.certificates"))
        _configured = True
    return metrics.get_meter(f"fleetflow.{service}")


def latency_histogram(meter: Meter, name: str, description: str) -> Histogram:
    """A histogram of seconds with LATENCY_BUCKETS.

    Buckets are given to each histogram where it is made, not by views: the SDK applies every view whose
    selector matches, so a specific view beside a `*_seconds` one exported such a histogram twice."""
    return meter.create_histogram(
        name, unit="s", description=description, explicit_bucket_boundaries_advisory=LATENCY_BUCKETS
    )


def series_labels(service: str, fleet: str | None = None, pipeline: str | None = None) -> dict[str, str]:
    """The labels every series of a service carries: `component`, and `fleet`/`pipeline` where it serves one.

    They are part of the exposition itself, so a plain Prometheus pointed at `fleetflow up` and one on a
    cluster see the same series; the dashboards and rules filter and group by them."""
    labels = {"component": service}
    if fleet:
        labels["fleet"] = fleet
    if pipeline:
        labels["pipeline"] = pipeline
    return labels


class _LabelledCollector(Collector):
    """Every family of `registry` with `labels` added to each sample (a label a sample has already wins)."""

    def __init__(self, registry: prometheus_client.CollectorRegistry, labels: Mapping[str, str]):
        self.registry, self.labels = registry, dict(labels)

    def collect(self) -> Iterator[Metric]:
        for family in self.registry.collect():
            family.samples = [s._replace(labels={**self.labels, **s.labels}) for s in family.samples]
            yield family


def prometheus_text() -> bytes:
    """The service's /metrics body: every series with the labels of series_labels()."""
    registry = prometheus_client.CollectorRegistry(auto_describe=False)
    registry.register(_LabelledCollector(prometheus_client.REGISTRY, _series_labels))
    return prometheus_client.generate_latest(registry)


def _sampler() -> Sampler | None:
    """The SDK's sampler from OTEL_TRACES_SAMPLER, or, with nowhere to export to, one that records nothing.

    Unrecorded spans still get ids, so log lines and downstream messages carry a trace id, at a fraction of
    the cost of recording every request."""
    if _otlp("TRACES") or os.environ.get("OTEL_TRACES_SAMPLER"):
        return None
    return ParentBased(ALWAYS_OFF)


def shutdown() -> None:
    """Flush spans and metrics still buffered (a stopping service must not lose its last batch's trace)."""
    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        provider.shutdown()
    meter_provider = metrics.get_meter_provider()
    if isinstance(meter_provider, MeterProvider):
        meter_provider.shutdown()


class SummedCounter:
    """A monotonic counter for the hot path: `add` sums into a dict, and the metric readers read the sums when
    they collect (an observable counter), so /metrics and OTLP show exactly what was added, as a counter.

    The SDK's `Counter.add` builds a measurement, checks and hashes its attributes and takes a lock, about as
    much CPU as validating a small batch of readings; this costs a dict update. Attributes are passed as a
    tuple of (name, value) pairs, built once by the caller, never per call. Add from one thread (the event
    loop's); the readers may collect from another."""

    def __init__(self, meter: metrics.Meter, name: str, unit: str, description: str):
        self._sums: dict[tuple[tuple[str, str], ...], int | float] = {}
        meter.create_observable_counter(name, callbacks=[self._observe], unit=unit, description=description)

    def add(self, amount: int | float, attributes: tuple[tuple[str, str], ...] = ()) -> None:
        self._sums[attributes] = self._sums.get(attributes, 0) + amount

    def _observe(self, _options: CallbackOptions) -> Iterable[Observation]:
        # list() copies the items in one step under the GIL: an OTLP exporter collects from its own thread.
        return [Observation(value, dict(attributes)) for attributes, value in list(self._sums.items())]


def tracer(service: str) -> trace.Tracer:
    return trace.get_tracer(f"fleetflow.{service}")


def inject(headers: dict[str, str], context: Context | None = None) -> dict[str, str]:
    """Add `traceparent` (and `tracestate`) of the current span, or of `context`, to NATS headers."""
    _PROPAGATOR.inject(headers, context=context)
    return headers


def headers_of(span_context: trace.SpanContext) -> dict[str, str]:
    """What inject() writes for a span with `span_context`, without making the span current first (the
    processor's hot path, where an unrecorded span is never made current)."""
    if span_context == trace.INVALID_SPAN_CONTEXT:
        return {}
    headers = {
        "traceparent": f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-{span_context.trace_flags:02x}"
    }
    if span_context.trace_state:
        headers["tracestate"] = span_context.trace_state.to_header()
    return headers


_TRACEPARENT = "traceparent"
# A W3C traceparent of version 00: "00-<32 hex trace id>-<16 hex span id>-<2 hex flags>".
_TRACEPARENT_LENGTH = 55
_SPAN_ID = slice(36, 52)
_SAMPLED_BIT_CLEAR = "02468ace"  # the flags' last hex digit when bit 0 (sampled) is 0


def unsampled(headers: Mapping[str, str]) -> bool:
    """True if `headers` carry a version 00 traceparent whose sampled flag is clear. A child of that span is not
    recorded with the sampler fleetflow configures nor with any the SDK offers by name in OTEL_TRACES_SAMPLER:
    the parent-based ones follow the parent, always_on would have sampled the parent too, and traceidratio
    decides the same for the same trace id."""
    found = headers.get(_TRACEPARENT, "")
    return len(found) == _TRACEPARENT_LENGTH and found.startswith("00-") and found[-1] in _SAMPLED_BIT_CLEAR


def unsampled_child(headers: dict[str, str]) -> dict[str, str]:
    """`headers` (with an unsampled traceparent, see unsampled()) now naming a new span of the same trace: what
    inject() would write for a child span the sampler dropped, without building that span."""
    span_id = 0
    while not span_id:  # as the SDK's RandomIdGenerator: a random 64-bit id, never the invalid 0
        span_id = random.getrandbits(64)
    parent = headers[_TRACEPARENT]
    headers[_TRACEPARENT] = f"{parent[: _SPAN_ID.start]}{span_id:016x}{parent[_SPAN_ID.stop :]}"
    return headers


# A version 00 traceparent the propagator accepts whose sampled flag (bit 0 of the flags) is clear.
_UNSAMPLED_00 = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f][02468ace])")
_ZERO_TRACE_ID, _ZERO_SPAN_ID = "0" * 32, "0" * 16


def unsampled_child_context(headers: Mapping[str, str] | None, tracer: trace.Tracer) -> trace.SpanContext | None:
    """The span context `tracer.start_span(name, extract(headers))` gives a child of the span `headers` name
    when the child is certain not to be recorded, without extracting or starting it: `headers` carry a version
    00 traceparent that extract() accepts, with the sampled flag clear and no `tracestate`, and the sampler of
    `tracer` (an SDK tracer, or the global provider's behind a proxy) is parent-based with an always-off delegate
    for an unsampled remote parent (fleetflow's and the SDK's default; see _sampler). None whenever the span
    must really be started."""
    if not headers or "tracestate" in headers:
        return None
    match = _UNSAMPLED_00.fullmatch(headers.get(_TRACEPARENT, ""))
    if match is None or match[1] == _ZERO_TRACE_ID or match[2] == _ZERO_SPAN_ID:
        return None
    sampling = _sampling_of(tracer)
    if sampling is None or not _drops_unsampled_remote_children(sampling[0]):
        return None
    # The SDK keeps the parent's random-trace-id flag (W3C level 2) and clears the sampled one.
    flags = trace.TraceFlags(int(match[3], 16) & trace.TraceFlags.RANDOM_TRACE_ID)
    return trace.SpanContext(int(match[1], 16), sampling[1].generate_span_id(), is_remote=False, trace_flags=flags)


def unsampled_root_context(tracer: trace.Tracer) -> trace.SpanContext | None:
    """The span context `tracer.start_span(name, context)` gives a span without a valid parent in `context` (a
    device request that carries no trace context) when that span is certain not to be recorded: the sampler of
    `tracer` is parent-based with an always-off root sampler (fleetflow's when nothing is exported; see _sampler).
    A new trace id and span id from the tracer's id generator, not sampled. None whenever the span must really be
    started (any other sampler, a tracer of no SDK, the SDK's own span metrics on)."""
    sampling = _sampling_of(tracer)
    if sampling is None or not _drops_roots(sampling[0]):
        return None
    ids = sampling[1]
    # As the SDK: a root's trace id is the generator's, flagged random (W3C level 2) if the generator says so.
    flags = trace.TraceFlags(trace.TraceFlags.RANDOM_TRACE_ID if ids.is_trace_id_random() else trace.TraceFlags.DEFAULT)
    return trace.SpanContext(ids.generate_trace_id(), ids.generate_span_id(), is_remote=False, trace_flags=flags)


def _sampling_of(tracer: trace.Tracer) -> tuple[Sampler, IdGenerator] | None:
    """The sampler and id generator `tracer` starts spans with, if it is an SDK tracer (or the proxy of one)."""
    if isinstance(tracer, trace.ProxyTracer):  # what telemetry.tracer() gives before configure(): the global one's
        provider = trace.get_tracer_provider()
        return (provider.sampler, provider.id_generator) if isinstance(provider, TracerProvider) else None
    if isinstance(tracer, SdkTracer):
        return tracer.sampler, tracer.id_generator
    return None


@functools.cache
def _drops_unsampled_remote_children(sampler: Sampler) -> bool:
    return _parent_based(sampler) and f"remoteParentNotSampled:{ALWAYS_OFF.get_description()}," in (
        sampler.get_description()
    )


@functools.cache
def _drops_roots(sampler: Sampler) -> bool:
    # The root delegate is named first; a ParentBased nested as another delegate would be named later.
    return _parent_based(sampler) and sampler.get_description().startswith(
        f"ParentBased{{root:{ALWAYS_OFF.get_description()},"
    )


def _parent_based(sampler: Sampler) -> bool:
    # The description is the one public view of a ParentBased sampler's delegates. The SDK's own span metrics
    # (off by default) count every started span, so with them on, the span is started.
    if os.environ.get(OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED, "").strip().lower() == "true":
        return False
    return type(sampler).should_sample is ParentBased.should_sample


def extract(headers: Mapping[str, str] | None) -> Context:
    """The trace context a message or request carries; an empty context when it carries none."""
    if not headers or _TRACEPARENT not in headers:
        # What the propagator gives without a traceparent (it looks the key up as written; a case-insensitive
        # mapping that has it in another case goes the long way), without copying every header first.
        return Context()
    return _PROPAGATOR.extract(dict(headers))


def consumer_attributes(msg: Msg, consumer_group: str = "") -> dict[str, str | int]:
    """OpenTelemetry messaging attributes of a span that processes `msg` from a JetStream consumer."""
    attributes: dict[str, str | int] = {
        "messaging.system": "nats",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": msg.subject,
    }
    if consumer_group:
        attributes["messaging.consumer.group.name"] = consumer_group
    message_id = (msg.headers or {}).get("Nats-Msg-Id")
    if message_id:
        attributes["messaging.message.id"] = message_id
    return attributes


def producer_attributes(subject: str, message_id: str | None = None) -> dict[str, str | int]:
    """OpenTelemetry messaging attributes of a span that publishes one message to `subject`."""
    attributes: dict[str, str | int] = {
        "messaging.system": "nats",
        "messaging.operation.type": "send",
        "messaging.operation.name": "publish",
        "messaging.destination.name": subject,
    }
    if message_id:
        attributes["messaging.message.id"] = message_id
    return attributes


def link_to(headers: Mapping[str, str] | None) -> trace.Link | None:
    """A span link to the span that produced a message, for consumers that combine many messages."""
    span_context = trace.get_current_span(extract(headers)).get_span_context()
    return trace.Link(span_context) if span_context.is_valid else None


__all__ = [
    "SummedCounter",
    "configure",
    "consumer_attributes",
    "extract",
    "headers_of",
    "inject",
    "link_to",
    "producer_attributes",
    "prometheus_text",
    "resource",
    "series_labels",
    "shutdown",
    "tracer",
    "unsampled",
    "unsampled_child",
    "unsampled_child_context",
    "unsampled_root_context",
    "version",
]
