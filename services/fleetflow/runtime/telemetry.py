"""OpenTelemetry for every service: metrics (Prometheus on /metrics, OTLP when configured), traces whose
W3C context rides in NATS headers, and the resource that says which service, fleet, pipeline and pod."""

import os
from collections.abc import Mapping

from opentelemetry import metrics, trace
from opentelemetry.context import Context
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased, Sampler
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

# Seconds: fine resolution where JetStream acks and SQLite commits live, up to a minute of backlog.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

# The downward API puts these into a pod's environment (the operator's builders do), so spans and
# metrics name the pod they came from.
_KUBERNETES_ENV = {"k8s.pod.name": "POD_NAME", "k8s.namespace.name": "POD_NAMESPACE", "k8s.node.name": "NODE_NAME"}

_PROPAGATOR = TraceContextTextMapPropagator()
_configured = False


def _otlp(signal: str) -> bool:
    return bool(
        os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get(f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT")
    )


def resource(service: str, fleet: str | None = None, pipeline: str | None = None) -> Resource:
    attributes = {"service.name": f"fleetflow-{service}", "service.namespace": "fleetflow"}
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
        view = View(instrument_name="*_seconds", aggregation=ExplicitBucketHistogramAggregation(LATENCY_BUCKETS))
        metrics.set_meter_provider(MeterProvider(resource=res, metric_readers=readers, views=[view]))
        tracer_provider = TracerProvider(resource=res, sampler=_sampler())
        if _otlp("TRACES"):
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        trace.set_tracer_provider(tracer_provider)
        _configured = True
    return metrics.get_meter(f"fleetflow.{service}")


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


def tracer(service: str) -> trace.Tracer:
    return trace.get_tracer(f"fleetflow.{service}")


def inject(headers: dict[str, str], context: Context | None = None) -> dict[str, str]:
    """Add `traceparent` (and `tracestate`) of the current span, or of `context`, to NATS headers."""
    _PROPAGATOR.inject(headers, context=context)
    return headers


def extract(headers: Mapping[str, str] | None) -> Context:
    """The trace context a message or request carries; an empty context when it carries none."""
    return _PROPAGATOR.extract(dict(headers or {}))


def link_to(headers: Mapping[str, str] | None) -> trace.Link | None:
    """A span link to the span that produced a message, for consumers that combine many messages."""
    span_context = trace.get_current_span(extract(headers)).get_span_context()
    return trace.Link(span_context) if span_context.is_valid else None


__all__ = ["configure", "extract", "inject", "link_to", "resource", "shutdown", "tracer"]
