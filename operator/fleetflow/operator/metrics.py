"""The operator's own telemetry: reconciles by kind and outcome, their duration, and a span for each."""

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from opentelemetry import trace
from opentelemetry.metrics import Meter

from fleetflow.runtime import telemetry

tracer = telemetry.tracer("operator")


@dataclass
class Reconcile:
    """What a reconcile came to: "ready", "invalid" (the spec; see the resource's conditions), "retry"
    (a transient problem: tried again later), "paused", "gone" or "error"."""

    outcome: str = "error"


class ReconcileMetrics:
    def __init__(self, meter: Meter):
        self.reconciles = meter.create_counter(
            "fleetflow_operator_reconciles", unit="1", description="Reconciles, by kind and outcome"
        )
        self.errors = meter.create_counter(
            "fleetflow_operator_reconcile_errors", unit="1", description="Reconciles that failed or must retry"
        )
        self.duration = meter.create_histogram(
            "fleetflow_operator_reconcile_duration_seconds", unit="s", description="One reconcile, by kind"
        )
        for kind in ("DeviceFleet", "Pipeline"):  # export 0, not nothing, until the first error
            self.errors.add(0, {"kind": kind})

    @asynccontextmanager
    async def observe(self, kind: str, namespace: str, name: str) -> AsyncIterator[Reconcile]:
        result = Reconcile()
        started = time.perf_counter()
        attributes = {"fleetflow.kind": kind, "k8s.namespace.name": namespace, "fleetflow.resource": name}
        with tracer.start_as_current_span(f"reconcile {kind}", kind=trace.SpanKind.INTERNAL,
                                          attributes=attributes) as span:  # fmt: skip
            try:
                yield result
            finally:
                span.set_attribute("fleetflow.outcome", result.outcome)
                self.reconciles.add(1, {"kind": kind, "outcome": result.outcome})
                if result.outcome in ("retry", "error"):
                    self.errors.add(1, {"kind": kind})
                self.duration.record(time.perf_counter() - started, {"kind": kind})
