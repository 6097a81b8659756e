"""The reconcile machinery: a context, an ordered chain of small named idempotent steps, and the status
write at the end. The steps themselves live in fleet_steps.py and pipeline_steps.py."""

import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from fleetflow.api import DeviceFleet, Pipeline, SpecError, parse_resource
from fleetflow.operator import conditions
from fleetflow.operator.apply import apply, remove, with_retries
from fleetflow.operator.builders.common import owned
from fleetflow.operator.conditions import Outcome, Problem
from fleetflow.operator.kube import ApiError, JsonObject, KubeApi, Ref
from fleetflow.operator.nats_credentials import NatsCredentials
from fleetflow.operator.nats_storage import StoragePlan
from fleetflow.operator.options import OperatorOptions
from fleetflow.operator.readiness import Readiness
from fleetflow.operator.tls_secrets import FleetSecrets
from fleetflow.runtime.natsauth import NatsLogin

log = structlog.get_logger(__name__)

# `fleetflow.processor.compiler.compile_pipeline`, handed in by `fleetflow operator` (the operator may not import
# the processor): raises a ValueError whose `problems` name each offending field.
PipelineCompiler = Callable[[Pipeline, DeviceFleet], object]


class Stop(Exception):
    """A step found a problem that the following steps cannot work around."""

    def __init__(self, problem: Problem, invalid: bool = False):
        self.problem = problem
        self.invalid = invalid
        super().__init__(problem.message)


@dataclass
class Context:
    """Everything a step may read; steps record what they find in `outcome` and `status`."""

    api: KubeApi
    options: OperatorOptions
    body: JsonObject
    compile_pipeline: PipelineCompiler | None = None
    outcome: Outcome = field(init=False)
    status: JsonObject = field(default_factory=dict)
    components: list[Readiness] = field(default_factory=list)
    fleet: DeviceFleet | None = None
    pipeline: Pipeline | None = None
    nats_credentials: NatsCredentials | None = None  # of a managed NATS; None for an external one
    fleet_secrets: FleetSecrets | None = None  # the fleet's TLS and external-NATS login, once read
    device_secret_digest: str | None = None  # of the device Secret's keys; the gateway pods roll when it changes
    nats_storage: StoragePlan | None = None  # the volumes a managed NATS has, and what changes them
    site_secrets_digest: str | None = None  # of the edge sites' passwords; the NATS pods roll when it changes
    changes: list[str] = field(default_factory=list)  # what this reconcile changed, for one Event

    def __post_init__(self) -> None:
        self.outcome = Outcome(generation=self.body.get("metadata", {}).get("generation"))

    @property
    def namespace(self) -> str:
        return str(self.body["metadata"]["namespace"])

    @property
    def name(self) -> str:
        return str(self.body["metadata"]["name"])

    @property
    def nats_login(self) -> NatsLogin | None:
        """How the operator connects to the fleet's NATS: a managed one has no default user; an external one may
        name a user."""
        if self.nats_credentials:
            return self.nats_credentials.login
        return self.fleet_secrets.login if self.fleet_secrets else None

    @property
    def nats_tls(self) -> ssl.SSLContext | None:
        """What the operator verifies the fleet's NATS with, if it speaks TLS."""
        return self.fleet_secrets.tls if self.fleet_secrets else None

    async def apply_owned(self, desired: JsonObject, *, create_only: bool = False) -> JsonObject:
        outcome, stored = await apply(self.api, owned(desired, self.body), create_only=create_only)
        if outcome != "unchanged":
            self.changes.append(f"{outcome} {desired['kind']} {desired['metadata']['name']}")
        return stored

    def owns(self, child: JsonObject) -> bool:
        owners = child.get("metadata", {}).get("ownerReferences") or []
        return any(o.get("uid") == self.body["metadata"].get("uid") for o in owners)

    async def remove_owned(self, api_version: str, kind: str, name: str) -> None:
        """Delete a child the spec no longer asks for, but only one this resource owns."""
        ref = Ref(api_version, kind, self.namespace, name)
        current = await with_retries(lambda: self.api.get_or_none(ref), f"get {ref}")
        if current is None:
            return
        if self.owns(current):
            await remove(self.api, ref)
            self.changes.append(f"deleted {kind} {name}")
            log.info("child no longer in the spec deleted", object=str(ref))

    def wait_for(self, readiness: Readiness) -> None:
        self.components.append(readiness)
        if not readiness.ready:
            self.outcome.waiting.append(f"{readiness.name}: {readiness.message}")


Step = Callable[[Context], Awaitable[None]]
STICKY_STATUS = ("deviceSecret",)


async def run_steps(ctx: Context, steps: list[tuple[str, Step]]) -> None:
    """Run the steps in order. A Stop ends the chain with its problem; an API error that outlived its retries
    ends it too, and asks the caller to retry later with backoff."""
    for name, step in steps:
        try:
            await step(ctx)
        except Stop as stop:
            if stop.invalid:
                ctx.outcome.invalid = stop.problem
            else:
                ctx.outcome.problems.append(stop.problem)
            log.info("reconcile stopped", step=name, reason=stop.problem.reason, message=stop.problem.message)
            return
        except ApiError as exc:
            ctx.outcome.problems.append(Problem("KubernetesApiError", f"step {name}: {exc}"))
            ctx.outcome.retry = True
            log.warning("reconcile step failed", step=name, error=str(exc))
            return


def build_status(ctx: Context, previous: JsonObject | None) -> JsonObject:
    """The complete status; conditions keep their lastTransitionTime while their status holds."""
    previous = previous or {}
    wanted = conditions.derive(ctx.outcome)
    # What a reconcile that stopped early did not look at stays as recorded: the device Secret's record is what
    # tells, later, that a fleet has issued tokens.
    sticky = {key: previous[key] for key in STICKY_STATUS if key in previous}
    status = {
        **sticky,
        **ctx.status,
        "observedGeneration": ctx.outcome.generation,
        "conditions": conditions.merge(previous.get("conditions") or [], wanted, conditions.now()),
        "components": [c.to_status() for c in ctx.components],
    }
    return {key: value for key, value in status.items() if value is not None}


def paused_status(body: JsonObject) -> JsonObject:
    """While paused only the Paused condition changes; everything else keeps its last reconciled value."""
    previous = body.get("status") or {}
    generation = body.get("metadata", {}).get("generation")
    paused = conditions.paused_condition(True, generation)
    return {**previous, "conditions": conditions.merge(previous.get("conditions") or [], [paused], conditions.now())}


async def write_status(api: KubeApi, body: JsonObject, status: JsonObject) -> None:
    """Merge-patch the status subresource, skipping the write when nothing changed (no needless events)."""
    if (body.get("status") or {}) == status:
        return
    ref = Ref.of(body)
    await with_retries(lambda: api.merge_patch(ref, {"status": status}, subresource="status"), f"status of {ref}")


def parse_problem(exc: ValueError, kind: str) -> Problem:
    """A SpecError lists one line per field; each line already names the field, the value and the rule."""
    problems: list[str] = getattr(exc, "problems", None) or [str(exc)]
    return Problem("InvalidSpec", f"{kind} spec is invalid: " + "; ".join(problems))


def parse_own_spec(ctx: Context, kind: str) -> DeviceFleet | Pipeline:
    """The reconciled resource as its API model; an invalid spec stops the chain with a condition."""
    try:
        return parse_resource(resource_document(ctx.body), source=f"{kind} {ctx.namespace}/{ctx.name}")
    except SpecError as exc:
        raise Stop(parse_problem(exc, kind), invalid=True) from None


def resource_document(body: JsonObject) -> dict[str, Any]:
    """The CR as the API models read it: server-managed metadata passes through, status stays out."""
    return {key: value for key, value in body.items() if key != "status"}
