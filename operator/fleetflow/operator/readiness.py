"""Per-component readiness, read from the status the Kubernetes controllers write on Deployments and
StatefulSets."""

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Readiness:
    name: str
    ready: bool
    message: str
    desired: int = 0
    ready_replicas: int = 0

    def to_status(self) -> dict[str, Any]:
        return {"name": self.name, "ready": self.ready, "message": self.message}


def workload(name: str, obj: dict[str, Any] | None) -> Readiness:
    """Ready when the controller has seen the latest spec and enough replicas are ready."""
    if obj is None:
        return Readiness(name, False, "not created yet")
    desired = int((obj.get("spec") or {}).get("replicas", 1))
    status = obj.get("status") or {}
    ready = int(status.get("readyReplicas") or 0)
    generation = (obj.get("metadata") or {}).get("generation")
    observed = status.get("observedGeneration")
    if generation is not None and observed is not None and observed < generation:
        return Readiness(name, False, f"rolling out: {ready}/{desired} replicas ready", desired, ready)
    if ready < desired:
        return Readiness(name, False, f"{ready}/{desired} replicas ready", desired, ready)
    return Readiness(name, True, f"{ready}/{desired} replicas ready", desired, ready)
