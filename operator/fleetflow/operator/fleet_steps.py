"""The DeviceFleet reconcile, as an ordered list of small named idempotent steps."""

import base64
import datetime

import structlog

from fleetflow.api import DeviceFleet, Pipeline, SpecError, parse_resource
from fleetflow.operator import (
    device_secret,
    fleet_ca,
    nats_credentials,
    nats_storage,
    sitelinks,
    streams,
    tls_secrets,
)
from fleetflow.operator.builders import appapi, exposure, gateway, nats, network, sites
from fleetflow.operator.builders.resources import resources_of
from fleetflow.operator.builders.shaping import PatchError
from fleetflow.operator.conditions import Problem
from fleetflow.operator.kube import ApiError, JsonObject, Ref
from fleetflow.operator.readiness import Readiness, workload
from fleetflow.operator.reconcile import Context, Step, Stop, parse_own_spec, resource_document
from fleetflow.runtime import natsauth

log = structlog.get_logger(__name__)


def fleet_of(ctx: Context) -> DeviceFleet:
    assert ctx.fleet is not None, "parse_spec runs first"
    return ctx.fleet


async def parse_spec(ctx: Context) -> None:
    resource = parse_own_spec(ctx, "DeviceFleet")
    assert isinstance(resource, DeviceFleet)
    ctx.fleet = resource


async def ensure_device_secret(ctx: Context) -> None:
    """Generated once when the spec names no Secret, rotated only when asked; a named Secret must exist and hold
    the named key. Once the fleet has run, a Secret that is gone is reported, never replaced (see device_secret)."""
    fleet = fleet_of(ctx)
    ref = gateway.device_secret_ref(fleet)
    recorded = device_secret.Recorded.of(ctx.body)
    rotation, retire = device_secret.asked(ctx.body)
    found = await ctx.api.get_or_none(Ref("v1", "Secret", ctx.namespace, ref.name))
    generates = gateway.operator_generates_secret(fleet)
    if found is None and generates and await may_generate(ctx, recorded, rotation):
        fresh = device_secret.with_rotation(gateway.device_secret(fleet, device_secret.new_value()), rotation)
        found = await ctx.apply_owned(fresh, create_only=True)
    if found is None:
        lost_device_secret(ctx, recorded)
        return
    if ref.key not in (found.get("data") or {}):
        keys = ", ".join(sorted(found.get("data") or {})) or "none"
        ctx.outcome.problems.append(
            Problem(
                "DeviceSecretMissing",
                f"spec.auth.secretRef.key = {ref.key!r}: Secret {ref.name!r} has no such key (it has: {keys})",
            )
        )
        return
    if generates:
        found = await rotate_as_asked(ctx, found, ref.key, rotation, retire)
    elif rotation or retire:
        ctx.outcome.problems.append(
            Problem(
                "RotationNotApplicable",
                f"annotation {device_secret.ROTATE_ANNOTATION} or {device_secret.RETIRE_ANNOTATION}: the operator "
                f"rotates only the Secret it generates, and this fleet names its own (spec.auth.secretRef.name = "
                f"{ref.name!r}); rotate it by editing it: the new secret under {ref.key!r}, the old one under "
                f"{device_secret.previous_key(ref.key)!r} until every device has its new token",
            )
        )
    ctx.device_secret_digest = device_secret.digest(found, ref.key)
    previous_accepted = device_secret.previous_key(ref.key) in (found.get("data") or {})
    ctx.status[device_secret.STATUS_KEY] = device_secret.status_of(
        ref.name, ctx.device_secret_digest, device_secret.rotation_of(found), previous_accepted
    )


async def may_generate(ctx: Context, recorded: device_secret.Recorded | None, rotation: str | None) -> bool:
    """A new fleet gets a generated secret. One that has run has issued tokens from the Secret, so only an
    explicit rotation may replace it; fleets reconciled before the status recorded the Secret show it by their
    gateway."""
    if recorded is None:
        name = gateway.name(fleet_of(ctx))
        for kind in ("StatefulSet", "Deployment"):  # a Deployment: the gateway of earlier operator versions
            if await ctx.api.get_or_none(Ref("apps/v1", kind, ctx.namespace, name)) is not None:
                return False
        return True
    return rotation is not None and rotation != recorded.rotation


def lost_device_secret(ctx: Context, recorded: device_secret.Recorded | None) -> None:
    """The gateways keep the key they started with (their pods do not roll); new pods cannot start until the
    Secret is back."""
    fleet = fleet_of(ctx)
    ref = gateway.device_secret_ref(fleet)
    if recorded is not None:
        ctx.status[device_secret.STATUS_KEY] = recorded.to_status()
        ctx.device_secret_digest = recorded.hash
    if not gateway.operator_generates_secret(fleet):
        message = (
            f"spec.auth.secretRef.name = {ref.name!r}: no such Secret in namespace {ctx.namespace!r}; "
            f"create it with the fleet secret under key {ref.key!r}"
        )
    else:
        message = (
            f"Secret {ref.name!r} is gone, and the devices' tokens derive from it: the operator does not make a new "
            f"one, which would lock every device out. Restore it from your copy (kubectl apply -f), or issue new "
            f"tokens to every device: kubectl annotate devicefleet/{fleet.name} "
            f"{device_secret.ROTATE_ANNOTATION}=<a new value>"
        )
    ctx.outcome.problems.append(Problem("DeviceSecretMissing", message))


async def rotate_as_asked(
    ctx: Context, secret: JsonObject, key: str, rotation: str | None, retire: str | None
) -> JsonObject:
    """Rotate once per distinct value of the rotate annotation; drop the previous key when the retire
    annotation names the rotation that made it."""
    done = device_secret.rotation_of(secret)
    if rotation and rotation != done:
        secret = await device_secret.rotate(ctx.api, secret, key, rotation)
        ctx.changes.append(
            f"rotated the device secret ({device_secret.ROTATE_ANNOTATION}={rotation}); tokens of the previous one "
            f"are accepted until {device_secret.RETIRE_ANNOTATION}={rotation}"
        )
        done = rotation
    if retire and retire == done and device_secret.previous_key(key) in (secret.get("data") or {}):
        secret = await device_secret.retire_previous(ctx.api, secret, key)
        ctx.changes.append(f"retired the device secret before rotation {retire}: only new tokens are accepted")
    return secret


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


async def ensure_site_secrets(ctx: Context) -> None:
    """Each edge site's leaf-node password, in a Secret created once and never rewritten (the admin copied it to the
    site). A site no longer in spec.sites loses its Secret, and with it its user: that is how a site is revoked. A
    Secret deleted by hand is made anew with a new password, and the NATS pods roll to it: that rotates it."""
    fleet = fleet_of(ctx)
    declared = [site.name for site in fleet.spec.sites] if sites.served(fleet) else []
    wanted = {sites.secret_name(fleet, site) for site in declared}
    stored = []
    for site in declared:
        name = sites.secret_name(fleet, site)
        secret = await ctx.apply_owned(sites.site_secret(fleet, site, natsauth.new_password()), create_only=True)
        password = base64.b64decode((secret.get("data") or {}).get(sites.PASSWORD_KEY, "")).decode(errors="replace")
        if not nats_credentials.PASSWORD.match(password):
            message = (
                f"Secret {name!r}, key {sites.PASSWORD_KEY!r}: it must hold site {site!r}'s leaf-node password, 16 or "
                "more letters and digits, a letter first (delete the Secret and the operator makes one)"
            )
            raise Stop(Problem("SiteSecretInvalid", message))
        stored.append(secret)
    ctx.site_secrets_digest = sites.secrets_digest(stored) if stored else None
    for secret in await ctx.api.list("v1", "Secret", ctx.namespace):
        labels = secret.get("metadata", {}).get("labels") or {}
        name = secret["metadata"]["name"]
        if sites.SITE_LABEL in labels and labels.get(network.FLEET_LABEL) == fleet.name and name not in wanted:
            await ctx.remove_owned("v1", "Secret", name)


def _site_stamped(ctx: Context, obj: JsonObject) -> JsonObject:
    """The NATS servers roll when a site's password changes: they read it from their environment at start."""
    if ctx.site_secrets_digest is None or obj["kind"] != "StatefulSet":
        return obj
    template = obj["spec"]["template"]
    annotations = {**template["metadata"].get("annotations", {}), sites.HASH_ANNOTATION: ctx.site_secrets_digest}
    template = {**template, "metadata": {**template["metadata"], "annotations": annotations}}
    return {**obj, "spec": {**obj["spec"], "template": template}}


async def fleet_authority(ctx: Context) -> fleet_ca.Authority:
    """The fleet's CA: made once, never rewritten (one an admin put there first is used as it is). If it is lost,
    a new one is made and every certificate it issued is issued anew (the old key is gone), which the Event says."""
    fleet = fleet_of(ctx)
    ref = Ref("v1", "Secret", ctx.namespace, fleet_ca.ca_secret_name(fleet))
    stored = await ctx.api.get_or_none(ref)
    if stored is None:
        fresh = fleet_ca.ca_secret(fleet, fleet_ca.new_authority(fleet, datetime.datetime.now(datetime.UTC)))
        stored = await ctx.apply_owned(fresh, create_only=True)
        ctx.changes.append(f"devices verifying the fleet's TLS need the CA in Secret {ref.name} (key ca.crt)")
    try:
        return fleet_ca.load_authority(stored)
    except fleet_ca.CertificateError as exc:
        raise Stop(Problem(exc.reason, str(exc))) from None


async def issue_certificates(ctx: Context) -> None:
    """For each `tls: {generate: true}`, a certificate from the fleet's CA, issued anew at two thirds of its
    lifetime or when the names it must hold change; read_tls_secrets then rolls the pods that mount it."""
    fleet = fleet_of(ctx)
    wanted = fleet_ca.wanted(fleet)
    if not wanted:
        return
    authority = await fleet_authority(ctx)
    now = datetime.datetime.now(datetime.UTC)
    for want in wanted:
        current = await ctx.api.get_or_none(Ref("v1", "Secret", ctx.namespace, want.secret_name))
        if current is not None and not ctx.owns(current):
            message = (
                f"{want.field}: Secret {want.secret_name!r} exists and is not this fleet's; the operator "
                "writes its certificate there: delete it, or name it in secretName instead of generate: true"
            )
            raise Stop(Problem(fleet_ca.CertificateError.reason, message))
        reason = fleet_ca.renewal_reason(current, authority, want.dns_names, now)
        if reason is not None:
            await ctx.apply_owned(
                fleet_ca.certificate_secret(fleet, want, fleet_ca.issue(authority, want.dns_names, now))
            )
            ctx.changes.append(f"issued the certificate in Secret {want.secret_name} ({reason})")


async def read_tls_secrets(ctx: Context) -> None:
    """The certificates and the external NATS's login the spec names must exist before pods mount them."""
    try:
        ctx.fleet_secrets = await tls_secrets.read(ctx.api, fleet_of(ctx))
    except tls_secrets.TlsSecretError as exc:
        raise Stop(Problem(exc.reason, str(exc))) from None


def _stamped(ctx: Context, obj: JsonObject) -> JsonObject:
    """Pods roll when the NATS credentials or the TLS Secrets they read at start change."""
    return tls_secrets.stamped(nats_credentials.stamped(obj, ctx.nats_credentials), ctx.fleet_secrets)


async def plan_nats_storage(ctx: Context) -> None:
    """Never a patch the API server refuses: a changed volume size is expanded in place or reported."""
    fleet = fleet_of(ctx)
    if not nats.managed(fleet):
        return
    plan = await nats_storage.plan(ctx.api, fleet, ctx.namespace)
    ctx.nats_storage = plan
    ctx.changes += plan.changes
    if plan.problem is not None:
        ctx.outcome.problems.append(plan.problem)
    if plan.waiting is not None:
        ctx.wait_for(plan.waiting)


async def apply_nats(ctx: Context) -> None:
    fleet = fleet_of(ctx)
    opts = ctx.options
    plan = ctx.nats_storage
    built = nats_storage.with_storage(fleet, plan.storage) if plan is not None else fleet
    try:
        desired = nats.nats_objects(
            built,
            opts.nats_image,
            opts.image_pull_policy,
            resources_of(opts.resources, "nats"),
            opts.image_pull_secrets,
            opts.nats_exporter_image,
        )
    except PatchError as exc:
        raise Stop(Problem("PatchFailed", str(exc)), invalid=True) from None
    for obj in desired:
        if obj["kind"] == "StatefulSet" and plan is not None:
            if plan.statefulset_going:
                continue  # being re-created with new volumes: created again once it is gone
            obj = nats_storage.carried_over(obj, plan)
        await ctx.apply_owned(_site_stamped(ctx, _stamped(ctx, obj)))
    if not sites.served(fleet):
        await ctx.remove_owned("v1", "Service", sites.service_name(fleet))
    if not desired or fleet.spec.nats.managed_or_default.mqtt_service is None:
        await ctx.remove_owned("v1", "Service", nats.mqtt_service_name(fleet))
    if not desired:  # switched to an external NATS: the managed one goes (its PVCs stay, as StatefulSets do)
        await ctx.remove_owned("policy/v1", "PodDisruptionBudget", nats.statefulset_name(fleet))
        await ctx.remove_owned("apps/v1", "StatefulSet", nats.statefulset_name(fleet))
        await ctx.remove_owned("policy/v1", "PodDisruptionBudget", nats.statefulset_name(fleet))
        await ctx.remove_owned("v1", "Service", nats.client_service_name(fleet))
        await ctx.remove_owned("v1", "Service", nats.headless_service_name(fleet))
        await ctx.remove_owned("v1", "ConfigMap", nats.config_map_name(fleet))
        await ctx.remove_owned("v1", "Secret", nats_credentials.secret_name(fleet))


async def apply_gateway(ctx: Context) -> None:
    fleet = fleet_of(ctx)
    opts = ctx.options
    try:
        desired = gateway.gateway_objects(
            fleet,
            opts.image,
            opts.image_pull_policy,
            resources_of(opts.resources, "gateway"),
            opts.service_env(),
            pull_secrets=opts.image_pull_secrets,
        )
    except PatchError as exc:
        raise Stop(Problem("PatchFailed", str(exc)), invalid=True) from None
    for obj in desired:
        await ctx.apply_owned(_stamped(ctx, device_secret.stamped(obj, ctx.device_secret_digest)))
    if fleet.spec.gateway.autoscaling is None:
        await ctx.remove_owned("autoscaling/v2", "HorizontalPodAutoscaler", gateway.name(fleet))


async def apply_network_policies(ctx: Context) -> None:
    """The allowances go first, the default deny last; a policy the spec no longer asks for goes."""
    fleet = fleet_of(ctx)
    desired = network.network_policies(fleet, ctx.options.operator_namespace)
    for obj in desired:
        await ctx.apply_owned(obj)
    wanted = {obj["metadata"]["name"] for obj in desired}
    for name in network.all_names(fleet):
        if name not in wanted:
            await ctx.remove_owned(network.API_VERSION, "NetworkPolicy", name)


async def apply_exposure(ctx: Context) -> None:
    """The gateway's Ingresses and Gateway API routes the spec asks for; one it no longer asks for goes."""
    fleet = fleet_of(ctx)
    for protocol in exposure.PROTOCOLS:
        ingress = exposure.gateway_ingress(fleet, protocol)
        if ingress is not None:
            await ctx.apply_owned(ingress)
        else:
            await ctx.remove_owned(exposure.API_VERSION, "Ingress", exposure.ingress_name(fleet, protocol))
        route = exposure.gateway_route(fleet, protocol)
        if route is not None:
            await apply_route(ctx, route)
        else:
            kind = exposure.ROUTE_KINDS[protocol]
            await ctx.remove_owned(exposure.ROUTES_API_VERSION, kind, exposure.route_name(fleet, protocol))


async def apply_route(ctx: Context, route: JsonObject) -> None:
    """A cluster without the Gateway API's CRDs answers 404: that is a condition naming what to install, and the
    rest of the fleet is reconciled all the same."""
    try:
        await ctx.apply_owned(route)
    except ApiError as exc:
        if exc.status != 404:
            raise
        message = (
            f"spec.gateway.routes: the cluster does not serve {route['apiVersion']} {route['kind']}; install the "
            "Gateway API's standard CRDs (v1.1 or later, for GRPCRoute) and an implementation, or publish the "
            "gateway with spec.gateway.ingress or spec.gateway.service"
        )
        ctx.outcome.problems.append(Problem("GatewayApiMissing", message))


async def observe_exposure(ctx: Context) -> None:
    """Where devices outside the cluster connect, once the load balancers or node ports are assigned."""
    fleet = fleet_of(ctx)
    service = await ctx.api.get_or_none(Ref("v1", "Service", ctx.namespace, gateway.name(fleet)))
    mqtt = None
    if nats.managed(fleet) and fleet.spec.nats.managed_or_default.mqtt_service is not None:
        mqtt = await ctx.api.get_or_none(Ref("v1", "Service", ctx.namespace, nats.mqtt_service_name(fleet)))
    gateways = {where: await parent_gateway(ctx, *where) for where in exposure.parent_gateways(fleet)}
    status = ctx.status.setdefault("gateway", {})
    found = exposure.external_endpoints(fleet, service, mqtt, gateways)
    status["endpoints"] = {**status.get("endpoints", {}), **found}


async def parent_gateway(ctx: Context, namespace: str, name: str) -> JsonObject | None:
    """A Gateway the routes attach to, for its listeners; None when it is not there or, in another namespace
    than the operator may read (the chart's per-namespace Roles), not readable: its endpoints stay unreported."""
    try:
        return await ctx.api.get_or_none(Ref(exposure.ROUTES_API_VERSION, "Gateway", namespace, name))
    except ApiError as exc:
        if exc.status != 403:
            raise
        return None


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
    try:
        objects = appapi.appapi_objects(fleet, pipelines, opts.image, opts.image_pull_policy, resources,
                                        opts.service_env(), opts.image_pull_secrets)  # fmt: skip
    except PatchError as exc:
        raise Stop(Problem("PatchFailed", str(exc)), invalid=True) from None
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
            nats.nats_url(fleet), fleet, ctx.options.nats_timeout_seconds, ctx.nats_login, ctx.nats_tls
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


async def observe_sites(ctx: Context) -> None:
    """Each edge site's link, in status.sites and the Sites column. A site that is cut off is not a fault of the
    fleet (sites are built to run alone), so it never makes the fleet not Ready; while NATS cannot be asked, the
    status keeps what was last seen."""
    fleet = fleet_of(ctx)
    if not sites.served(fleet):
        sitelinks.SITE_METRICS.record(ctx.namespace, fleet.name, None)
        return
    links = before = sitelinks.last_seen(fleet, (ctx.body.get("status") or {}).get("sites") or [])
    login = ctx.nats_login
    if nats_reachable(ctx) and login is not None:
        url, timeout = nats.nats_url(fleet), ctx.options.nats_timeout_seconds
        try:
            links = await sitelinks.observe(url, fleet, timeout, login, ctx.nats_tls)
            sitelinks.SITE_METRICS.record(ctx.namespace, fleet.name, links)
            if back := sitelinks.reconnected(before, links):
                rearmed = await sitelinks.rearm(url, fleet, timeout, login, ctx.nats_tls)
                ctx.changes.append(f"site(s) {', '.join(back)} connected: re-armed the sources of {', '.join(rearmed)}")
        except streams.StreamError as exc:
            log.warning("cannot read the edge sites' links or re-arm their sources", fleet=fleet.name, error=str(exc))
    ctx.status["sites"] = [link.as_status() for link in links]
    ctx.status["sitesConnected"] = sitelinks.connected_of(links)


async def observe_gateway(ctx: Context) -> None:
    fleet = fleet_of(ctx)
    current = await ctx.api.get_or_none(Ref("apps/v1", "StatefulSet", ctx.namespace, gateway.name(fleet)))
    readiness = workload("gateway", current)
    ctx.wait_for(readiness)
    if readiness.ready:
        # Earlier operator versions ran the gateway as a Deployment (its buffer in an emptyDir): it goes once the
        # StatefulSet serves, so devices never meet a fleet without a gateway.
        await ctx.remove_owned("apps/v1", "Deployment", gateway.name(fleet))
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
    ("ensure-site-secrets", ensure_site_secrets),
    ("issue-certificates", issue_certificates),
    ("read-tls-secrets", read_tls_secrets),
    ("plan-nats-storage", plan_nats_storage),
    ("apply-nats", apply_nats),
    ("apply-gateway", apply_gateway),
    ("apply-network-policies", apply_network_policies),
    ("apply-exposure", apply_exposure),
    ("observe-nats", observe_nats),
    ("provision-streams", provision_streams),
    ("observe-sites", observe_sites),
    ("observe-gateway", observe_gateway),
    ("observe-exposure", observe_exposure),
    ("apply-appapi", apply_appapi),
    ("observe-appapi", observe_appapi),
]
