"""Thin kopf handlers: each one hands the resource to the reconcile chain or the cleanup, nothing more."""

import asyncio
import contextlib
import copy
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import kopf
import structlog
from kubernetes import client as k8s_client

from fleetflow.api import GROUP, VERSION, DeviceFleet, Pipeline, SpecError, parse_resource
from fleetflow.operator import children, conditions, device_secret, nats_credentials, sitelinks, streams, tls_secrets
from fleetflow.operator.builders import nats
from fleetflow.operator.fleet_steps import FLEET_STEPS
from fleetflow.operator.kube import ApiError, JsonObject, KubeApi, Ref, authorization
from fleetflow.operator.metrics import Reconcile, ReconcileMetrics
from fleetflow.operator.options import OperatorOptions
from fleetflow.operator.pipeline_steps import PIPELINE_STEPS
from fleetflow.operator.reconcile import (
    Context,
    PipelineCompiler,
    Step,
    build_status,
    paused_status,
    resource_document,
    run_steps,
    write_status,
)
from fleetflow.runtime.natsauth import NatsLogin

log = structlog.get_logger(__name__)

RESOURCES: dict[str, tuple[str, list[tuple[str, Step]]]] = {
    "DeviceFleet": ("devicefleets", FLEET_STEPS),
    "Pipeline": ("pipelines", PIPELINE_STEPS),
}
# Give up cleaning up streams after this many failed attempts, so that an unreachable NATS cannot keep
# a custom resource from being deleted forever.
CLEANUP_ATTEMPTS = 5


def plain(body: Mapping[str, Any]) -> JsonObject:
    """kopf hands out read-only views; steps get a private deep copy."""
    return {key: copy.deepcopy(value) for key, value in body.items()}


@dataclass
class Operator:
    api: KubeApi
    options: OperatorOptions
    compile_pipeline: PipelineCompiler | None = None
    retry_delay: float = 10.0
    metrics: ReconcileMetrics | None = None
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    _nudged: set[str] = field(default_factory=set)

    def _lock(self, body: JsonObject) -> asyncio.Lock:
        # A change handler and the timer may fire together for one resource; they take turns.
        return self._locks.setdefault(_key(body), asyncio.Lock())

    async def nudge(self, owner: JsonObject) -> None:
        """Reconcile `owner` (a stub: kind, name, namespace, uid) because something it owns changed. A burst of
        child events costs one reconcile: while one is queued and has not started, it will see them all."""
        key = _key(owner)
        if key in self._nudged:
            return
        self._nudged.add(key)
        with contextlib.suppress(kopf.TemporaryError):  # recorded in the conditions; the timer retries it
            await self.reconcile(str(owner["kind"]), kopf.Body(cast(kopf.RawBody, owner)))

    async def reconcile(self, kind: str, raw: kopf.Body) -> None:
        meta = raw.get("metadata", {})
        if self.metrics is None:
            await self._reconcile(kind, raw, Reconcile())
            return
        async with self.metrics.observe(kind, meta.get("namespace", ""), meta.get("name", "")) as result:
            await self._reconcile(kind, raw, result)

    async def _reconcile(self, kind: str, raw: kopf.Body, result: Reconcile) -> None:
        body = plain(raw)
        async with self._lock(body):
            self._nudged.discard(_key(body))  # from here on, this reconcile reads every change made so far
            fresh = await self.api.get_or_none(Ref.of({**body, "kind": kind}))
            if fresh is None or fresh["metadata"].get("deletionTimestamp"):
                result.outcome = "gone"
                self._report_ready(kind, body, None)
                return  # going away: the cleanup owns it now, nothing may be re-provisioned
            body = fresh
            if conditions.is_paused(body):
                status = paused_status(body)
                self._report_ready(kind, body, conditions.is_true(status, conditions.READY))
                await write_status(self.api, body, status)
                result.outcome = "paused"
                return
            ctx = Context(self.api, self.options, body, self.compile_pipeline)
            await run_steps(ctx, RESOURCES[kind][1])
            event_target = kopf.Body(cast(kopf.RawBody, body))
            if ctx.changes:  # one Event per reconcile that changed something, for `kubectl describe`
                kopf.info(event_target, reason="Reconciled", message="; ".join(ctx.changes)[:1000])
            previous = (body.get("status") or {}).get("conditions") or []
            trouble = conditions.new_trouble(previous, conditions.derive(ctx.outcome))
            if trouble is not None:  # something a user must act on: `kubectl get events --field-selector type=Warning`
                kopf.warn(event_target, reason=trouble["reason"], message=trouble["message"][:1000])
            status = build_status(ctx, body.get("status"))
            self._report_ready(kind, body, conditions.is_true(status, conditions.READY))
            try:
                await write_status(self.api, body, status)
            except ApiError as exc:
                if exc.status != 404:
                    raise
        result.outcome = "retry" if ctx.outcome.retry else "invalid" if ctx.outcome.invalid else "ready"
        if ctx.outcome.retry:
            raise kopf.TemporaryError("; ".join(p.message for p in ctx.outcome.problems), delay=self.retry_delay)

    def _report_ready(self, kind: str, body: JsonObject, ready: bool | None) -> None:
        meta = body["metadata"]
        if ready is None and kind == "DeviceFleet":  # gone: so are its sites' series
            sitelinks.SITE_METRICS.record(meta.get("namespace", ""), meta.get("name", ""), None)
        if self.metrics is not None:
            self.metrics.resource_ready(kind, meta.get("namespace", ""), meta.get("name", ""), ready)

    async def follow_fleet(self, fleet: Mapping[str, Any]) -> None:
        """A changed fleet reaches its pipelines now (their config, consumers and hashes derive from it), not at
        their next resync."""
        meta = fleet["metadata"]
        try:
            pipelines = await self.api.list(f"{GROUP}/{VERSION}", "Pipeline", meta["namespace"])
        except ApiError as exc:
            log.warning("could not list the fleet's pipelines; they follow at their resync", error=str(exc))
            return
        for pipeline in pipelines:
            if (pipeline.get("spec") or {}).get("fleetRef", {}).get("name") == meta["name"]:
                await self.nudge({**pipeline, "kind": "Pipeline"})

    async def cleanup(self, kind: str, raw: Mapping[str, Any], retry: int) -> None:
        """Runs before the CR goes (its children follow through their owner references). Streams and consumers
        are deleted only when `deleteOnRemoval` asks for it: by default the data stays."""
        body = plain(raw)
        try:
            resource = parse_resource(resource_document(body), source=f"{kind} {body['metadata'].get('name')}")
        except SpecError:
            return  # never provisioned anything
        try:
            async with self._lock(body):  # after any reconcile in flight, which could re-create what goes
                await self._remove_streams(resource)
        except (streams.StreamError, nats_credentials.CredentialsError, tls_secrets.TlsSecretError, ApiError) as exc:
            if retry + 1 < CLEANUP_ATTEMPTS:
                raise kopf.TemporaryError(str(exc), delay=self.retry_delay) from exc
            log.warning("giving up removing streams; delete them by hand", resource=kind, error=str(exc))
        self._locks.pop(_key(body), None)
        self._report_ready(kind, body, None)

    async def _remove_streams(self, resource: DeviceFleet | Pipeline) -> None:
        timeout = self.options.nats_timeout_seconds
        if isinstance(resource, DeviceFleet):
            if resource.spec.streams.delete_on_removal:
                login, tls = await self._nats_access(resource)
                removed = await streams.delete_fleet_streams(nats.nats_url(resource), resource, timeout, login, tls)
                log.info("fleet streams deleted", fleet=resource.name, streams=removed)
            return
        if not resource.spec.delivery.delete_on_removal:
            return
        namespace = resource.metadata.namespace or "default"
        fleet_body = await self.api.get_or_none(Ref(f"{GROUP}/{VERSION}", "DeviceFleet", namespace, resource.fleet))
        if fleet_body is None:
            log.warning("fleet gone: the pipeline's consumers cannot be reached", pipeline=resource.name)
            return
        fleet = parse_resource(resource_document(fleet_body))
        assert isinstance(fleet, DeviceFleet)
        login, tls = await self._nats_access(fleet)
        removed = await streams.delete_pipeline_streams(nats.nats_url(fleet), fleet, resource, timeout, login, tls)
        log.info("pipeline streams and consumers deleted", pipeline=resource.name, removed=removed)

    async def _nats_access(self, fleet: DeviceFleet) -> tuple[NatsLogin | None, ssl.SSLContext | None]:
        """A managed NATS's login, from the fleet's Secret (its child: there while the fleet is), or an external
        NATS's; and the CA the server is verified with, when it speaks TLS."""
        secrets = await tls_secrets.read(self.api, fleet, with_gateway=False)
        if not nats.managed(fleet):
            return secrets.login, secrets.tls
        return (await nats_credentials.fetch(self.api, fleet)).login, secrets.tls


def _key(body: Mapping[str, Any]) -> str:
    return str(body["metadata"].get("uid") or body["metadata"]["name"])


def connection_info(configuration: k8s_client.Configuration) -> kopf.ConnectionInfo:
    """kopf connects with the same credentials as the operator's own client."""
    token = authorization(configuration) or ""
    scheme, _, value = token.partition(" ")
    return kopf.ConnectionInfo(
        server=configuration.host,
        ca_path=configuration.ssl_ca_cert,
        insecure=not configuration.verify_ssl,
        scheme=scheme or None,
        token=value or None,
        certificate_path=configuration.cert_file,
        private_key_path=configuration.key_file,
    )


def build_registry(operator: Operator, configuration: k8s_client.Configuration) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return connection_info(configuration)

    for kind, (plural, _) in RESOURCES.items():
        _register(registry, operator, kind, plural)
    for group, version, plural in children.CHILD_RESOURCES:
        _watch_children(registry, operator, group, version, plural)
    return registry


def _watch_children(registry: kopf.OperatorRegistry, operator: Operator, group: str, version: str, plural: str) -> None:
    @kopf.on.event(group, version, plural, id=f"{plural}-owner", registry=registry, labels=children.MANAGED_LABELS)
    async def child_changed(body: kopf.Body, **_: Any) -> None:
        # A deleted Deployment is back, and a StatefulSet's pods turning ready show in Ready, within seconds.
        owner = children.owner_of(body)
        if owner is not None:
            await operator.nudge(owner)


def _register(registry: kopf.OperatorRegistry, operator: Operator, kind: str, plural: str) -> None:
    resource = (GROUP, VERSION, plural)
    backoff = operator.retry_delay

    @kopf.on.resume(*resource, id=f"{plural}-resume", registry=registry, backoff=backoff)
    @kopf.on.create(*resource, id=f"{plural}-create", registry=registry, backoff=backoff)
    @kopf.on.update(*resource, id=f"{plural}-update", registry=registry, backoff=backoff)
    async def changed(body: kopf.Body, **_: Any) -> None:
        try:
            await operator.reconcile(kind, body)
        finally:
            if kind == "DeviceFleet":
                await operator.follow_fleet(body)

    @kopf.on.event(*resource, id=f"{plural}-pause", registry=registry)
    async def pause_changed(body: kopf.Body, **_: Any) -> None:
        # kopf's change detection ignores the operator's own `fleetflow.io/*` annotations (where it keeps its
        # bookkeeping), so a pause, a resume or a device-key rotation would wait for the timer without this.
        if children.pause_not_yet_reported(body) or device_secret.request_pending(body):
            with contextlib.suppress(kopf.TemporaryError):  # recorded in the conditions; the timer retries it
                await operator.reconcile(kind, body)

    @kopf.timer(*resource, id=f"{plural}-resync", interval=operator.options.resync_seconds, registry=registry)
    async def resync(body: kopf.Body, **_: Any) -> None:
        # Level-triggered: a deleted or edited child, or a stream deleted in NATS, returns to the spec.
        await operator.reconcile(kind, body)

    @kopf.on.delete(*resource, id=f"{plural}-cleanup", registry=registry, backoff=backoff)
    async def deleted(body: kopf.Body, retry: int, **_: Any) -> None:
        await operator.cleanup(kind, body, retry)
