"""The DeviceFleet reconcile, as an ordered list of small named idempotent steps."""

import base64
import secrets

from fleetflow.api import DeviceFleet, Pipeline, SpecError, parse_resource
from fleetflow.operator import nats_credentials, streams
from fleetflow.operator.builders import appapi, gateway, nats
from fleetflow.operator.builders.resources import resources_of
from fleetflow.operator.conditions import Problem
from fleetflow.operator.kube import Ref
from fleetflow.operator.readiness import Readiness, workload
from fleetflow.operator.reconcile import Context, Step, Stop, parse_own_spec, resource_document

SECRET_BYTES = 32


def fleet_of(ctx: Context) -> DeviceFleet:
    assert ctx.fleet is not None, "parse_spec runs first"
    return ctx.fleet


async def parse_spec(ctx: Context) -> None:
    resource = parse_own_spec(ctx, "DeviceFleet")
    assert isinstance(resource, DeviceFleet)
    ctx.fleet = resource


async def ensure_device_secret(ctx: Context) -> None:
    """Generated once when the spec names no Secret; a named Secret must exist and hold the named key."""
    fleet = fleet_of(ctx)
    if gateway.operator_generates_secret(fleet):
        # The value is base64 text, as `fleetflow up` writes its local secret file.
        value = base64.b64encode(secrets.token_bytes(SECRET_BYTES))
        await ctx.apply_owned(gateway.device_secret(fleet, value), create_only=True)
        return
    ref = gateway.device_secret_ref(fleet)
    found = await ctx.api.get_or_none(Ref("v1", "Secret", ctx.namespace, ref.name))
    if found is None:
        ctx.outcome.problems.append(
            Problem(
                "DeviceSecretMissing",
                f"spec.auth.secretRef.name = {ref.name!r}: no such Secret in namespace {ctx.namespace!r}; "
                f"create it with the fleet secret under key {ref.key!r}",
            )
        )
    elif ref.key not in (found.get("data") or {}):
        keys = ", ".join(sorted(found.get("data") or {})) or "none"
        ctx.outcome.problems.append(
            Problem(
                "DeviceSecretMissing",
                f"spec.auth.secretRef.key = {ref.key!r}: Secret {ref.name!r} has no such key (it has: {keys})",
            )
        )


async def ensure_nats_credentials(ctx: Context) -> None:
    """A managed NATS's Secret is created once with random credentials and never rewritten; what it holds is
    checked on every reconcile, since nats-server, the services and the operator all log in with it."""
    fleet = fleet_of(ctx)
    if not nats.managed(fleet):
        return
    fresh = nats_credentials.credentials_secret(fleet, nats_credentials.new_values())
    stored = await ctx.apply_owned(fresh, create_only=True)
    try:
        ctx.nats_credentials = nats_credentials.read(stored)
    except nats_credentials.CredentialsError as exc:
        raise Stop(Problem(exc.reason, str(exc))) from None


async def apply_nats(ctx: Context) -> None:
    fleet = fleet_of(ctx)
    opts = ctx.options
    desired = nats.nats_objects(fleet, opts.nats_image, opts.image_pull_policy, resources_of(opts.resources, "nats"))
    for obj in desired:
        await ctx.apply_owned(nats_credentials.stamped(obj, ctx.nats_credentials))
    if not desired:  # switched to an external NATS: the managed one goes (its PVCs stay, as StatefulSets do)
        await ctx.remove_owned("apps/v1", "StatefulSet", nats.statefulset_name(fleet))
        await ctx.remove_owned("policy/v1", "PodDisruptionBudget", nats.statefulset_name(fleet))
        await ctx.remove_owned("v1", "Service", nats.client_service_name(fleet))
        await ctx.remove_owned("v1", "Service", nats.headless_service_name(fleet))
        await ctx.remove_owned("v1", "ConfigMap", nats.config_map_name(fleet))
        await ctx.remove_owned("v1", "Secret", nats_credentials.secret_name(fleet))


async def apply_gateway(ctx: Context) -> None:
    fleet = fleet_of(ctx)
    opts = ctx.options
    for obj in gateway.gateway_objects(
        fleet, opts.image, opts.image_pull_policy, resources_of(opts.resources, "gateway"), opts.service_env()
    ):
        await ctx.apply_owned(nats_credentials.stamped(obj, ctx.nats_credentials))
    if fleet.spec.gateway.autoscaling is None:
        await ctx.remove_owned("autoscaling/v2", "HorizontalPodAutoscaler", gateway.name(fleet))


async def fleet_pipelines(ctx: Context) -> list[Pipeline]:
    """The valid Pipelines of the fleet in its namespace (an invalid one has a condition of its own)."""
    found = []
    for body in await ctx.api.list("fleetflow.io/v1alpha1", "Pipeline", ctx.namespace):
        try:
            resource = parse_resource(resource_document(body), source="Pipeline")
        except SpecError:
            continue
        if isinstance(resource, Pipeline) and resource.fleet == fleet_of(ctx).name:
            found.append(resource)
    return found


async def apply_appapi(ctx: Context) -> None:
    """The application API, over the stores of the fleet's pipelines as they are now (the timer's re-reconcile
    brings a new or changed pipeline in); its keys Secret is created once, empty, and then is the user's."""
    fleet, opts = fleet_of(ctx), ctx.options
    await ctx.apply_owned(appapi.keys_secret(fleet), create_only=True)
    chosen = opts.resources.get(appapi.COMPONENT, appapi.DEFAULT_RESOURCES)
    resources = {kind: dict(values) for kind, values in chosen.items()}
    pipelines = await fleet_pipelines(ctx)
    objects = appapi.appapi_objects(fleet, pipelines, opts.image, opts.image_pull_policy, resources, opts.service_env())
    for obj in objects:
        await ctx.apply_owned(nats_credentials.stamped(obj, ctx.nats_credentials))


async def observe_appapi(ctx: Context) -> None:
    """Its readiness, and its URL beside the gateway's endpoints in the fleet's status."""
    fleet = fleet_of(ctx)
    current = await ctx.api.get_or_none(Ref("apps/v1", "Deployment", ctx.namespace, appapi.name(fleet)))
    ctx.wait_for(workload(appapi.COMPONENT, current))
    ctx.status.setdefault("gateway", {}).setdefault("endpoints", {})["api"] = appapi.url(fleet)


async def observe_nats(ctx: Context) -> None:
    fleet = fleet_of(ctx)
    if fleet.spec.nats.external is not None:
        return
    current = await ctx.api.get_or_none(Ref("apps/v1", "StatefulSet", ctx.namespace, nats.statefulset_name(fleet)))
    ctx.wait_for(workload("nats", current))


def nats_reachable(ctx: Context) -> bool:
    """An external NATS is assumed up; a managed one once all its servers are ready."""
    return all(c.ready for c in ctx.components if c.name == "nats")


async def provision_streams(ctx: Context) -> None:
    """Create, update or re-create (if deleted behind the operator's back) the fleet's streams."""
    fleet = fleet_of(ctx)
    if not nats_reachable(ctx):
        ctx.status["streams"] = (ctx.body.get("status") or {}).get("streams", [])
        ctx.wait_for(Readiness("streams", False, "waiting for NATS to be ready"))
        return
    try:
        states = await streams.provision_fleet(
            nats.nats_url(fleet), fleet, ctx.options.nats_timeout_seconds, ctx.nats_login
        )
    except streams.StreamError as exc:
        ctx.outcome.problems.append(Problem("StreamProvisioningFailed", str(exc)))
        ctx.outcome.retry = True
        ctx.components.append(Readiness("streams", False, str(exc)))
        return
    ctx.status["streams"] = states
    ctx.changes += [f"created stream {s['name']}" for s in states if s.get("created")]
    for state in states:
        state.pop("created", None)
    ready = sum(1 for s in states if s["state"] == "Ready")
    ctx.wait_for(Readiness("streams", ready == len(states), f"{ready}/{len(states)} streams ready"))


async def observe_gateway(ctx: Context) -> None:
    fleet = fleet_of(ctx)
    current = await ctx.api.get_or_none(Ref("apps/v1", "Deployment", ctx.namespace, gateway.name(fleet)))
    readiness = workload("gateway", current)
    ctx.wait_for(readiness)
    live = (current or {}).get("status") or {}
    ctx.status["gateway"] = {
        "replicas": int(live.get("replicas") or 0),
        "readyReplicas": readiness.ready_replicas,
        "endpoints": gateway.endpoints(fleet),
    }


FLEET_STEPS: list[tuple[str, Step]] = [
    ("parse-spec", parse_spec),
    ("ensure-device-secret", ensure_device_secret),
    ("ensure-nats-credentials", ensure_nats_credentials),
    ("apply-nats", apply_nats),
    ("apply-gateway", apply_gateway),
    ("observe-nats", observe_nats),
    ("provision-streams", provision_streams),
    ("observe-gateway", observe_gateway),
    ("apply-appapi", apply_appapi),
    ("observe-appapi", observe_appapi),
]
