"""`fleetflow operator`: run the operator until SIGTERM (or until `stop_flag` is set)."""

import asyncio
import threading
from collections.abc import Sequence

import kopf
from kubernetes import client as k8s_client

from fleetflow.operator.handlers import Operator, build_registry
from fleetflow.operator.kube import KubeApi, load_configuration
from fleetflow.operator.options import OperatorOptions
from fleetflow.operator.reconcile import PipelineCompiler

FINALIZER = "fleetflow.io/finalizer"


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
) -> None:
    """Watch `namespaces` (None or empty: all of them) until `stop_flag` is set or the task is cancelled."""
    configuration = configuration or load_configuration()
    api = KubeApi(configuration)
    operator = Operator(api, options or OperatorOptions.from_environment(), compile_pipeline, retry_delay)
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


def run(
    namespaces: Sequence[str] | None,
    *,
    options: OperatorOptions | None = None,
    compile_pipeline: PipelineCompiler | None = None,
    liveness_endpoint: str | None = "http://0.0.0.0:8080/healthz",
) -> int:
    """Blocking entry point of `fleetflow operator [--namespace NS ...]`; kopf handles SIGINT/SIGTERM.
    Returns the process exit status (0 after a clean stop)."""
    asyncio.run(
        operate(namespaces, options=options, compile_pipeline=compile_pipeline, liveness_endpoint=liveness_endpoint)
    )
    return 0
