"""OpenTelemetry metrics: exported in Prometheus format on /metrics and over OTLP when configured."""

import os

from opentelemetry import metrics
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource

# Seconds: fine resolution where JetStream acks and SQLite commits live, up to a minute of backlog.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

_configured = False


def configure(service: str, **attributes: str) -> metrics.Meter:
    """Install the meter provider once per process and return the service's meter."""
    global _configured
    if not _configured:
        readers: list[MetricReader] = [PrometheusMetricReader()]
        if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"):
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

            readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
        resource = Resource.create({"service.name": f"fleetflow-{service}", **attributes})
        view = View(instrument_name="*_seconds", aggregation=ExplicitBucketHistogramAggregation(LATENCY_BUCKETS))
        metrics.set_meter_provider(MeterProvider(resource=resource, metric_readers=readers, views=[view]))
        _configured = True
    return metrics.get_meter(f"fleetflow.{service}")
