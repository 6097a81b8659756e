"""The Pipeline reconcile, as an ordered list of small named idempotent steps."""

from fleetflow.api import DeviceFleet, Pipeline, SpecError, parse_resource
from fleetflow.operator import nats_credentials, streams, tls_secrets
from fleetflow.operator.builders import nats, pipeline
from fleetflow.operator.builders.resources import resources_of
from fleetflow.operator.builders.shaping import PatchError
from fleetflow.operator.conditions import Problem
from fleetflow.operator.kube import Ref
from fleetflow.operator.readiness import Readiness, workload
from fleetflow.operator.reconcile import Context, Step, Stop, parse_own_spec, parse_problem, resource_document
from fleetflow.runtime import edgelink

COMPONENT_LABEL = "app.kubernetes.io/name"


def pipeline_of(ctx: Context) -> Pipeline:
    assert ctx.pipeline is not None, "parse_spec runs first"
    return ctx.pipeline


def fleet_of(ctx: Context) -> DeviceFleet:
    assert ctx.fleet is not None, "read_fleet runs first"
    return ctx.fleet


async def parse_spec(ctx: Context) -> None:
    resource = parse_own_spec(ctx, "Pipeline")
    assert isinstance(resource, Pipeline)
    ctx.pipeline = resource


async def compile_steps(ctx: Context) -> None:
    """CEL and the other checks only the processor can make; its compiler is handed in by `fleetflow operator`
    (the operator does not import the processor). Its error message names the step and the field."""
    if ctx.compile_pipeline is None:
        return
    try:
        ctx.compile_pipeline(pipeline_of(ctx), fleet_of(ctx))
    except ValueError as exc:
        raise Stop(parse_problem(exc, "Pipeline"), invalid=True) from None


async def read_fleet(ctx: Context) -> None:
    name = pipeline_of(ctx).fleet
    body = await ctx.api.get_or_none(Ref("fleetflow.io/v1alpha1", "DeviceFleet", ctx.namespace, name))
    if body is None:
        message = f"spec.fleetRef.name = {name!r}: no DeviceFleet of that name in namespace {ctx.namespace!r}"
        raise Stop(Problem("FleetNotFound", message))
    try:
        fleet = parse_resource(resource_document(body), source=f"DeviceFleet {ctx.namespace}/{name}")
    except SpecError as exc:
        message = f"spec.fleetRef.name = {name!r}: that DeviceFleet is invalid ({exc})"
        raise Stop(Problem("FleetInvalid", message)) from None
    assert isinstance(fleet, DeviceFleet)
    ctx.fleet = fleet


def central_components(ctx: Context) -> tuple[str, ...]:
    """What of the pipeline runs in the centre, as `fleetflow up` decides (fleetflow.local.resources): an edge
    pipeline's processors run at its sites only, and its writer runs here only if a site forwards its records."""
    fleet, name = fleet_of(ctx), pipeline_of(ctx).name
    if name not in edgelink.edge_pipelines(fleet):
        return ("processor", "writer")
    return ("writer",) if name in edgelink.forwarded_pipelines(fleet) else ()


def edge_sites(ctx: Context) -> list[str]:
    return [site.name for site in fleet_of(ctx).spec.sites if pipeline_of(ctx).name in site.pipelines]


async def place_edge(ctx: Context) -> None:
    """Status says where an edge pipeline runs: `edgeSites`, and a component for what the centre does not run."""
    placed = edge_sites(ctx)
    ctx.status["edgeSites"] = placed
    if not placed:
        return
    fleet, central = fleet_of(ctx), central_components(ctx)
    where = f"edge pipeline of DeviceFleet {fleet.name!r}: runs at site(s) {', '.join(placed)} (spec.sites[].pipelines)"
    ctx.components.append(Readiness("processor", True, f"{where}; no processor in the centre"))
    if "writer" not in central:
        no_writer = f"{where}; no site forwards its records (spec.sites[].forward.records), so no writer in the centre"
        ctx.components.append(Readiness("writer", True, no_writer))


async def read_nats_credentials(ctx: Context) -> None:
    """The processor and the writer log in to a managed NATS with the password in the fleet's Secret."""
    fleet = fleet_of(ctx)
    if not nats.managed(fleet):
        return
    try:
        ctx.nats_credentials = await nats_credentials.fetch(ctx.api, fleet)
    except nats_credentials.CredentialsError as exc:
        raise Stop(Problem(exc.reason, f"the fleet's NATS credentials: {exc}")) from None


async def read_tls_secrets(ctx: Context) -> None:
    """The CA the processor and the writer verify the fleet's NATS with, and an external NATS's login."""
    try:
        ctx.fleet_secrets = await tls_secrets.read(ctx.api, fleet_of(ctx), with_gateway=False)
    except tls_secrets.TlsSecretError as exc:
        raise Stop(Problem(exc.reason, f"the fleet's {exc}")) from None


async def apply_workloads(ctx: Context) -> None:
    opts = ctx.options
    table = {c: resources_of(opts.resources, c) for c in ("processor", "writer")}
    try:
        objects = pipeline.pipeline_objects(
            fleet_of(ctx),
            pipeline_of(ctx),
            opts.image,
            opts.image_pull_policy,
            table,
            opts.service_env(),
            opts.image_pull_secrets,
        )
    except PatchError as exc:
        raise Stop(Problem("PatchFailed", str(exc)), invalid=True) from None
    central = central_components(ctx)
    for obj in objects:
        if obj["metadata"]["labels"][COMPONENT_LABEL].removeprefix("fleetflow-") not in central:
            await ctx.remove_owned(obj["apiVersion"], obj["kind"], obj["metadata"]["name"])
            continue
        stamped = nats_credentials.stamped(obj, ctx.nats_credentials)
        await ctx.apply_owned(tls_secrets.stamped(stamped, ctx.fleet_secrets))


async def provision_consumers(ctx: Context) -> None:
    fleet = fleet_of(ctx)
    if nats.managed(fleet):
        servers = await ctx.api.get_or_none(Ref("apps/v1", "StatefulSet", ctx.namespace, nats.statefulset_name(fleet)))
        nats_ready = workload("nats", servers)
        if not nats_ready.ready:
            ctx.wait_for(Readiness("consumers", False, f"waiting for the fleet's NATS ({nats_ready.message})"))
            return
    args = (nats.nats_url(fleet), fleet, pipeline_of(ctx), ctx.options.nats_timeout_seconds, ctx.nats_login)
    try:
        if not central_components(ctx):  # nothing of it runs here: `fleetflow up` provisions nothing for it either
            await streams.remove_processors(*args, ctx.nats_tls)
            ctx.wait_for(Readiness("consumers", True, "none in the centre: the pipeline runs at its edge sites"))
            return
        outcome = await streams.provision_pipeline(*args, ctx.nats_tls)
    except streams.StreamError as exc:
        ctx.outcome.problems.append(Problem("StreamProvisioningFailed", str(exc)))
        ctx.outcome.retry = True
        ctx.components.append(Readiness("consumers", False, str(exc)))
        return
    ctx.wait_for(Readiness("consumers", True, f"{len(outcome)} streams and consumers provisioned"))


async def observe_workloads(ctx: Context) -> None:
    pl, central = pipeline_of(ctx), central_components(ctx)
    if "processor" in central:
        ref = Ref("apps/v1", "StatefulSet", ctx.namespace, pipeline.processor_name(pl))
        ctx.wait_for(workload("processor", await ctx.api.get_or_none(ref)))
    if "writer" in central:
        ref = Ref("apps/v1", "Deployment", ctx.namespace, pipeline.writer_name(pl))
        ctx.wait_for(workload("writer", await ctx.api.get_or_none(ref)))


PIPELINE_STEPS: list[tuple[str, Step]] = [
    ("parse-spec", parse_spec),
    ("read-fleet", read_fleet),
    ("read-nats-credentials", read_nats_credentials),
    ("read-tls-secrets", read_tls_secrets),
    ("compile-steps", compile_steps),
    ("place-edge", place_edge),
    ("apply-workloads", apply_workloads),
    ("provision-consumers", provision_consumers),
    ("observe-workloads", observe_workloads),
]
