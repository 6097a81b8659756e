"""The operator's own telemetry: reconciles by kind and outcome, their duration, and a span for each."""

import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from opentelemetry import trace
from opentelemetry.metrics import CallbackOptions, Meter, Observation

from fleetflow.runtime import certificates, telemetry

tracer = telemetry.tracer("operator")


@dataclass
class Reconcile:
    """What a reconcile came to: "ready", "invalid" (the spec; see the resource's conditions), "retry"
    (a transient problem: tried again later), "paused", "gone" or "error"."""

    outcome: str = "error"


# (kind, namespace, name) -> 1 while the resource's Ready condition is True, else 0. Per process: only the acting
# replica reconciles, so only it exports the series; a deleted resource's series goes away.
_READY: dict[tuple[str, str, str], int] = {}
_READY_GAUGES: set[int] = set()


def _observe_ready(_: CallbackOptions) -> Iterable[Observation]:
    return [Observation(value, {"kind": kind, "namespace": namespace, "name": name})
            for (kind, namespace, name), value in list(_READY.items())]  # fmt: skip


class ReconcileMetrics:
    def __init__(self, meter: Meter):
        self.reconciles = meter.create_counter(
            "fleetflow_operator_reconciles", unit="1", description="Reconciles, by kind and outcome"
        )
        self.errors = meter.create_counter(
            "fleetflow_operator_reconcile_errors", unit="1", description="Reconciles that failed or must retry"
        )
        self.duration = telemetry.latency_histogram(
            meter, "fleetflow_operator_reconcile_duration_seconds", "One reconcile, by kind"
        )
        for kind in ("DeviceFleet", "Pipeline"):  # export 0, not nothing, until the first error
            self.errors.add(0, {"kind": kind})
        if id(meter) not in _READY_GAUGES:  # an instrument name registers once per meter, and then keeps its callback
            _READY_GAUGES.add(id(meter))
            meter.create_observable_gauge(
                "fleetflow_operator_resource_ready",
                [_observe_ready],
                unit="1",
                description="1 while the DeviceFleet or Pipeline is Ready, 0 otherwise; by kind, namespace and name",
            )

    def resource_ready(self, kind: str, namespace: str, name: str, ready: bool | None) -> None:
        """Record the Ready condition a reconcile wrote; None forgets the resource (it is gone), and a fleet's
        certificates with it."""
        if ready is None:
            _READY.pop((kind, namespace, name), None)
            if kind == "DeviceFleet":
                certificates.forget(fleet=name, namespace=namespace)
        else:
            _READY[(kind, namespace, name)] = int(ready)

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
