"""`fleetflow operator`: run the operator until SIGTERM (or until `stop_flag` is set)."""

import asyncio
import contextlib
import os
import threading
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import kopf
import structlog
from kubernetes import client as k8s_client

from fleetflow.operator.handlers import Operator, build_registry
from fleetflow.operator.kube import KubeApi, load_configuration
from fleetflow.operator.leadership import Leadership, LeadershipLost, LeaseSettings
from fleetflow.operator.metrics import ReconcileMetrics
from fleetflow.operator.options import OperatorOptions
from fleetflow.operator.reconcile import PipelineCompiler
from fleetflow.runtime import ops, telemetry

FINALIZER = "fleetflow.io/finalizer"
OPS_PORT = 8081  # /healthz, /readyz and /metrics, served by leader and standby alike

log = structlog.get_logger(__name__)


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
    lease: LeaseSettings | None = None,
) -> None:
    """Watch `namespaces` (None or empty: all of them) until `stop_flag` is set or the task is cancelled.
    With `ops_port`, /metrics (and /healthz, /readyz) are served on it. With `lease`, only while this replica
    holds that Lease: it stands by until then, and raises LeadershipLost when it can no longer renew it."""
    configuration = configuration or load_configuration()
    api = KubeApi(configuration)
    metrics = ReconcileMetrics(telemetry.configure("operator"))
    operator = Operator(api, options or OperatorOptions.from_environment(), compile_pipeline, retry_delay, metrics)
    leadership = Leadership(api, lease) if lease is not None else None

    def role() -> tuple[bool, str]:  # a standby is healthy and ready: it is ready to take over
        return True, "watching" if leadership is None or leadership.leading else "standing by"

    ops_runner = None
    if ops_port is not None:
        ops_runner, _ = await ops.start_site(ops.ops_app(role), "0.0.0.0", ops_port)

    def acting() -> Coroutine[Any, Any, None]:
        return kopf.operator(
            registry=build_registry(operator, configuration),
            settings=settings or kopf_settings(),
            clusterwide=not namespaces,
            namespaces=list(namespaces or []),
            standalone=True,
            liveness_endpoint=liveness_endpoint,
            stop_flag=stop_flag,
            ready_flag=ready_flag,
        )

    try:
        if leadership is None:
            await acting()
        elif await unless_stopped(leadership.acquire(), stop_flag):
            await lead(leadership, acting)
    finally:
        if leadership is not None:
            await leadership.release()
        await api.close()
        if ops_runner is not None:
            await ops_runner.cleanup()


async def unless_stopped(work: Coroutine[Any, Any, None], stop_flag: asyncio.Event | threading.Event | None) -> bool:
    """Await `work` unless `stop_flag` is set first (a standby stops as promptly as a leader); True if it finished."""
    task = asyncio.create_task(work)
    try:
        while not task.done():
            if stop_flag is not None and stop_flag.is_set():
                return False
            await asyncio.wait({task}, timeout=0.1)
        task.result()
        return True
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def lead(leadership: Leadership, acting: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run `acting()` (kopf) while renewing the Lease; stop it the moment leadership is lost."""
    # Created before kopf starts: kopf cancels, when it stops, every task that appeared after its start.
    holding = asyncio.create_task(leadership.hold(), name="lease renewal")
    operating = asyncio.create_task(acting(), name="kopf")
    try:
        done, _ = await asyncio.wait({holding, operating}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (operating, holding):
            task.cancel()
        await asyncio.gather(operating, holding, return_exceptions=True)
    if holding in done:
        holding.result()  # LeadershipLost (it never returns otherwise)
    operating.result()


def run(
    namespaces: Sequence[str] | None,
    *,
    options: OperatorOptions | None = None,
    compile_pipeline: PipelineCompiler | None = None,
    liveness_endpoint: str | None = None,
) -> int:
    """Blocking entry point of `fleetflow operator [--namespace NS ...]`; kopf handles SIGINT/SIGTERM.
    Returns the process exit status (0 after a clean stop)."""
    ops_port = int(os.environ.get("FLEETFLOW_OPS_PORT", str(OPS_PORT)))
    lease = LeaseSettings.from_environment()
    try:
        asyncio.run(
            operate(namespaces, options=options, compile_pipeline=compile_pipeline,
                    liveness_endpoint=liveness_endpoint, ops_port=ops_port, lease=lease)
        )  # fmt: skip
    except LeadershipLost as exc:
        # Another replica may be acting already: exit, and come back (restarted by the Deployment) as a standby.
        log.error("stopped acting: leadership lost", reason=str(exc))
        return 1
    finally:
        telemetry.shutdown()
    return 0
