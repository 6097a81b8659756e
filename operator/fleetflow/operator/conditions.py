"""Status conditions after the Kubernetes API conventions: one per type, with status, reason, message and
lastTransitionTime, which changes only when the status does."""

import datetime
from dataclasses import dataclass, field
from typing import Any

READY = "Ready"
RECONCILING = "Reconciling"
DEGRADED = "Degraded"
PAUSED = "Paused"
PAUSE_ANNOTATION = "fleetflow.io/paused"


@dataclass(frozen=True)
class Problem:
    """Something that keeps a resource from being Ready; `reason` is CamelCase, `message` names the field."""

    reason: str
    message: str


@dataclass
class Outcome:
    """What one reconcile found, from which the status conditions are derived."""

    generation: int | None
    invalid: Problem | None = None
    problems: list[Problem] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)
    retry: bool = False


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def is_paused(body: dict[str, Any]) -> bool:
    annotations = body.get("metadata", {}).get("annotations") or {}
    return str(annotations.get(PAUSE_ANNOTATION, "")).lower() == "true"


def is_true(status: dict[str, Any], kind: str) -> bool:
    """Whether the status's condition of this type is True."""
    return any(c.get("type") == kind and c.get("status") == "True" for c in status.get("conditions") or [])


def condition(kind: str, status: bool, reason: str, message: str, generation: int | None) -> dict[str, Any]:
    cond: dict[str, Any] = {"type": kind, "status": "True" if status else "False", "reason": reason, "message": message}
    if generation is not None:
        cond["observedGeneration"] = generation
    return cond


def derive(outcome: Outcome) -> list[dict[str, Any]]:
    """Ready, Reconciling and Degraded from a reconcile outcome (Paused is set apart)."""
    gen = outcome.generation
    blocker = outcome.invalid or (outcome.problems[0] if outcome.problems else None)
    if blocker is not None:
        ready = condition(READY, False, blocker.reason, blocker.message, gen)
    elif outcome.waiting:
        ready = condition(READY, False, "ComponentsNotReady", "; ".join(outcome.waiting), gen)
    else:
        ready = condition(READY, True, "AllComponentsReady", "every component is ready", gen)
    if outcome.invalid is not None:
        reconciling = condition(
            RECONCILING, False, outcome.invalid.reason, "stopped: children keep their last valid state", gen
        )
    elif outcome.waiting or outcome.retry:
        reconciling = condition(RECONCILING, True, "Progressing", "; ".join(outcome.waiting) or "retrying", gen)
    else:
        reconciling = condition(RECONCILING, False, "ReconcileComplete", "children match the spec", gen)
    troubles = [p for p in (outcome.invalid, *outcome.problems) if p is not None]
    if troubles:
        degraded = condition(DEGRADED, True, troubles[0].reason, "; ".join(p.message for p in troubles), gen)
    else:
        degraded = condition(DEGRADED, False, "NoProblems", "no problems found", gen)
    return [ready, reconciling, degraded, paused_condition(False, gen)]


def paused_condition(paused: bool, generation: int | None) -> dict[str, Any]:
    if paused:
        message = f'annotation {PAUSE_ANNOTATION} is "true": reconciliation is suspended; remove it to resume'
        return condition(PAUSED, True, "PausedByAnnotation", message, generation)
    return condition(PAUSED, False, "NotPaused", "reconciling", generation)


def merge(previous: list[dict[str, Any]], wanted: list[dict[str, Any]], timestamp: str) -> list[dict[str, Any]]:
    """`wanted` with lastTransitionTime kept from `previous` where a condition's status did not change;
    conditions of types not in `wanted` are kept as they were."""
    old = {c.get("type"): c for c in previous or []}
    merged = []
    for cond in wanted:
        before = old.pop(cond["type"], None)
        unchanged = before is not None and before.get("status") == cond["status"]
        stamp = before.get("lastTransitionTime", timestamp) if unchanged and before else timestamp
        merged.append({**cond, "lastTransitionTime": stamp})
    return merged + list(old.values())


def new_trouble(previous: list[dict[str, Any]], wanted: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The Degraded condition of `wanted` if it reports a problem the previous status did not, else None: a
    Warning Event goes out once per new problem, not on every retry of the same one."""
    degraded = next((c for c in wanted if c["type"] == DEGRADED and c["status"] == "True"), None)
    if degraded is None:
        return None
    before = next((c for c in previous if c["type"] == DEGRADED), {})
    same = before.get("status") == "True" and before.get("message") == degraded["message"]
    return None if same else degraded
