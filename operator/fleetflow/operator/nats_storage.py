"""A changed `nats.managed.storageSize` or `storageClassName` on a running fleet, without wedging the reconcile.

A StatefulSet's volumeClaimTemplates are immutable: the API server refuses (422) any patch that changes them, so
the operator never sends one. It carries the running StatefulSet's templates over as they are, and keeps NATS
configured for the volumes it really has until they are changed. A larger size is applied the way Strimzi does
it: each PVC is expanded in place where its StorageClass has `allowVolumeExpansion: true`; once every volume
reports the new capacity, the StatefulSet is deleted with its pods orphaned (they keep running) and re-created
with the new template, so servers added later get volumes of the new size too, and NATS's store limit follows.
A size the volumes cannot take (no expansion, a smaller size, another class) is a condition that says why and
what to do; the other reconcile steps go on."""

from dataclasses import dataclass

from fleetflow.api import DeviceFleet
from fleetflow.api.quantities import parse_bytes
from fleetflow.operator.builders import nats
from fleetflow.operator.conditions import Problem
from fleetflow.operator.kube import JsonObject, KubeApi, Ref
from fleetflow.operator.readiness import Readiness

CLAIM = "data"  # the StatefulSet's volumeClaimTemplate: PVCs are named data-<statefulset>-<ordinal>
COMPONENT = "nats-storage"


@dataclass(frozen=True)
class Storage:
    size: str
    class_name: str | None

    @classmethod
    def wanted(cls, fleet: DeviceFleet) -> "Storage":
        managed = fleet.spec.nats.managed_or_default
        return cls(str(managed.storage_size), managed.storage_class_name)

    @classmethod
    def of_statefulset(cls, statefulset: JsonObject) -> "Storage | None":
        for template in statefulset["spec"].get("volumeClaimTemplates") or []:
            if _named(template, CLAIM):
                spec = template.get("spec") or {}
                size = ((spec.get("resources") or {}).get("requests") or {}).get("storage", "0")
                return cls(str(size), spec.get("storageClassName"))
        return None

    @property
    def bytes(self) -> int:
        return parse_bytes(self.size)


@dataclass
class StoragePlan:
    """What apply-nats does with the StatefulSet: build it for `storage`, keep the running one's
    `claim_templates` (never patched), or leave it alone while it is being re-created."""

    storage: Storage
    claim_templates: list[JsonObject] | None = None
    statefulset_going: bool = False
    problem: Problem | None = None
    waiting: Readiness | None = None
    changes: tuple[str, ...] = ()


def _named(template: JsonObject, name: str) -> bool:
    return bool((template.get("metadata") or {}).get("name") == name)


def pvc_name(fleet: DeviceFleet, ordinal: int) -> str:
    return f"{CLAIM}-{nats.statefulset_name(fleet)}-{ordinal}"


def with_storage(fleet: DeviceFleet, storage: Storage) -> DeviceFleet:
    """The fleet as apply-nats builds it: with the volumes it has, not (yet) the ones it asks for."""
    managed = fleet.spec.nats.managed_or_default.model_copy(
        update={"storage_size": storage.size, "storage_class_name": storage.class_name}
    )
    spec = fleet.spec.model_copy(update={"nats": fleet.spec.nats.model_copy(update={"managed": managed})})
    return fleet.model_copy(update={"spec": spec})


def carried_over(statefulset: JsonObject, plan: StoragePlan) -> JsonObject:
    """The desired StatefulSet with the running one's volumeClaimTemplates, so no patch ever touches them."""
    if plan.claim_templates is None:
        return statefulset
    return {**statefulset, "spec": {**statefulset["spec"], "volumeClaimTemplates": plan.claim_templates}}


async def plan(api: KubeApi, fleet: DeviceFleet, namespace: str) -> StoragePlan:
    wanted = Storage.wanted(fleet)
    ref = Ref("apps/v1", "StatefulSet", namespace, nats.statefulset_name(fleet))
    current = await api.get_or_none(ref)
    if current is None:
        return StoragePlan(wanted)
    if current["metadata"].get("deletionTimestamp"):
        waiting = Readiness(COMPONENT, False, f"re-creating StatefulSet {ref.name} for volumes of {wanted.size}")
        return StoragePlan(wanted, statefulset_going=True, waiting=waiting)
    have = Storage.of_statefulset(current)
    if have is None:  # not made by this operator: still never patched where the API server would refuse
        return StoragePlan(wanted, claim_templates=current["spec"].get("volumeClaimTemplates") or [])
    kept = StoragePlan(have, claim_templates=current["spec"]["volumeClaimTemplates"])
    if have == wanted or (have.class_name == wanted.class_name and have.bytes == wanted.bytes):
        return kept
    kept.problem = refusal(fleet, have, wanted)
    if kept.problem is not None:
        return kept
    return await expand(api, fleet, current, kept, wanted)


def refusal(fleet: DeviceFleet, have: Storage, wanted: Storage) -> Problem | None:
    """Why the volumes cannot take `wanted` at all, or None when expanding them may."""
    back = f"set it back to {have.size!r}"
    if wanted.class_name != have.class_name:
        return Problem(
            "StorageChangeRefused",
            f"spec.nats.managed.storageClassName = {wanted.class_name!r}: the NATS volumes were made with "
            f"{have.class_name!r} and a volume cannot change its class; set it back to {have.class_name!r}. To "
            f"move to another class, back up the streams and re-create the fleet (docs/operator.md, Resizing)",
        )
    if wanted.bytes < have.bytes:
        return Problem(
            "StorageChangeRefused",
            f"spec.nats.managed.storageSize = {wanted.size!r} is smaller than the NATS volumes ({have.size!r}) and "
            f"a volume cannot shrink; {back}. To move to smaller volumes, back up the streams and re-create the "
            f"fleet (docs/operator.md, Resizing)",
        )
    return None


async def expand(
    api: KubeApi, fleet: DeviceFleet, statefulset: JsonObject, kept: StoragePlan, wanted: Storage
) -> StoragePlan:
    namespace = statefulset["metadata"]["namespace"]
    replicas = int(statefulset["spec"].get("replicas") or 0)
    claims = [c for c in [await api.get_or_none(Ref("v1", "PersistentVolumeClaim", namespace, pvc_name(fleet, i)))
                          for i in range(replicas)] if c is not None]  # fmt: skip
    class_name = kept.storage.class_name or next(
        (c["spec"].get("storageClassName") for c in claims if c["spec"].get("storageClassName")), None
    )
    problem = await expansion_refused(api, wanted, kept.storage, class_name)
    if problem is not None:
        kept.problem = problem
        return kept
    changes = []
    for claim in claims:
        if _requested(claim) < wanted.bytes:
            patch = {"spec": {"resources": {"requests": {"storage": wanted.size}}}}
            await api.merge_patch(Ref.of({**claim, "apiVersion": "v1", "kind": "PersistentVolumeClaim"}), patch)
            changes.append(f"expanded PersistentVolumeClaim {claim['metadata']['name']} to {wanted.size}")
    grown = sum(1 for c in claims if _capacity(c) >= wanted.bytes)
    if grown < len(claims):
        kept.changes = tuple(changes)
        kept.waiting = Readiness(COMPONENT, False, f"expanding NATS volumes to {wanted.size}: {grown}/{len(claims)}")
        return kept
    await api.delete(Ref.of({**statefulset, "apiVersion": "apps/v1", "kind": "StatefulSet"}), propagation="Orphan")
    change = f"re-created StatefulSet {statefulset['metadata']['name']} for volumes of {wanted.size} (its pods stay)"
    waiting = Readiness(COMPONENT, False, f"re-creating StatefulSet for volumes of {wanted.size}")
    return StoragePlan(wanted, statefulset_going=True, waiting=waiting, changes=(*changes, change))


async def expansion_refused(api: KubeApi, wanted: Storage, have: Storage, class_name: str | None) -> Problem | None:
    intro = f"spec.nats.managed.storageSize = {wanted.size!r}: the NATS volumes ({have.size!r}) cannot grow"
    back = f"set it back to {have.size!r}, or let the class expand volumes (allowVolumeExpansion: true)"
    if class_name is None:
        return Problem("StorageNotExpandable", f"{intro}: their StorageClass is not known yet; {back}")
    found = await api.get_or_none(Ref("storage.k8s.io/v1", "StorageClass", "", class_name))
    if found is None:
        return Problem("StorageNotExpandable", f"{intro}: their StorageClass {class_name!r} does not exist; {back}")
    if found.get("allowVolumeExpansion") is not True:
        return Problem(
            "StorageNotExpandable", f"{intro}: StorageClass {class_name!r} does not allow volume expansion; {back}"
        )
    return None


def _requested(claim: JsonObject) -> int:
    return _quantity(((claim.get("spec") or {}).get("resources") or {}).get("requests", {}).get("storage"))


def _capacity(claim: JsonObject) -> int:
    return _quantity(((claim.get("status") or {}).get("capacity") or {}).get("storage"))


def _quantity(value: object) -> int:
    """Bytes of a PVC's quantity; 0 for one absent (not provisioned yet) or in a notation we do not read (1e9)."""
    try:
        return parse_bytes(str(value or "0"))
    except ValueError:
        return 0
