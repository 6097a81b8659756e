"""`fleetflow operator`: run the operator until SIGTERM (or until `stop_flag` is set)."""

import asyncio
import os
import threading
from collections.abc import Sequence

import kopf
from kubernetes import client as k8s_client

from fleetflow.operator.handlers import Operator, build_registry
from fleetflow.operator.kube import KubeApi, load_configuration
from fleetflow.operator.metrics import ReconcileMetrics
from fleetflow.operator.options import OperatorOptions
from fleetflow.operator.reconcile import PipelineCompiler
from fleetflow.runtime import ops, telemetry

FINALIZER = "fleetflow.io/finalizer"
OPS_PORT = 8081  # /metrics; kopf's own liveness endpoint is on 8080


def kopf_settings() -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    settings.persistence.finalizer = FINALIZER
    # kopf keeps its bookkeeping in annotations: the CRDs' status schema has no room for it.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="fleetflow.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="fleetflow.io", key="last-handled-configuration"
    )
    settings.peering.standalone = True
    settings.posting.enabled = True
    return settings


async def operate(
    namespaces: Sequence[str] | None,
    *,
    options: OperatorOptions | None = None,
    configuration: k8s_client.Configuration | None = None,
    compile_pipeline: PipelineCompiler | None = None,
    liveness_endpoint: str | None = None,
    retry_delay: float = 10.0,
    settings: kopf.OperatorSettings | None = None,
    stop_flag: asyncio.Event | threading.Event | None = None,
    ready_flag: asyncio.Event | threading.Event | None = None,
    ops_port: int | None = None,
) -> None:
    """Watch `namespaces` (None or empty: all of them) until `stop_flag` is set or the task is cancelled.
    With `ops_port`, /metrics (and /healthz, /readyz) are served on it."""
    configuration = configuration or load_configuration()
    api = KubeApi(configuration)
    metrics = ReconcileMetrics(telemetry.configure("operator"))
    operator = Operator(api, options or OperatorOptions.from_environment(), compile_pipeline, retry_delay, metrics)
    ops_runner = None
    if ops_port is not None:
        ops_runner, _ = await ops.start_site(ops.ops_app(lambda: (True, "watching")), "0.0.0.0", ops_port)
    try:
        await kopf.operator(
            registry=build_registry(operator, configuration),
            settings=settings or kopf_settings(),
            clusterwide=not namespaces,
            namespaces=list(namespaces or []),
            standalone=True,
            liveness_endpoint=liveness_endpoint,
            stop_flag=stop_flag,
            ready_flag=ready_flag,
        )
    finally:
        await api.close()
        if ops_runner is not None:
            await ops_runner.cleanup()


def run(
    namespaces: Sequence[str] | None,
    *,
    options: OperatorOptions | None = None,
    compile_pipeline: PipelineCompiler | None = None,
    liveness_endpoint: str | None = "http://0.0.0.0:8080/healthz",
) -> int:
    """Blocking entry point of `fleetflow operator [--namespace NS ...]`; kopf handles SIGINT/SIGTERM.
    Returns the process exit status (0 after a clean stop)."""
    ops_port = int(os.environ.get("FLEETFLOW_OPS_PORT", str(OPS_PORT)))
    try:
        asyncio.run(
            operate(namespaces, options=options, compile_pipeline=compile_pipeline,
                    liveness_endpoint=liveness_endpoint, ops_port=ops_port)
        )  # fmt: skip
    finally:
        telemetry.shutdown()
    return 0
