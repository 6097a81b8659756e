"""Bringing one child object to its desired state: create it, and on 409 read it and merge-patch the drift."""

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import structlog

from fleetflow.operator.kube import ApiError, JsonObject, KubeApi, Ref

log = structlog.get_logger(__name__)
T = TypeVar("T")

ATTEMPTS = 4
FIRST_DELAY = 0.2


async def with_retries(action: Callable[[], Awaitable[T]], what: str) -> T:
    """Retry transient API errors (429, 5xx, unreachable) and 409s with exponential backoff, then give up."""
    delay = FIRST_DELAY
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return await action()
        except ApiError as exc:
            if attempt == ATTEMPTS or not (exc.transient or exc.status == 409):
                raise
            log.info("retrying after an API error", what=what, error=str(exc), attempt=attempt, delay=delay)
            await asyncio.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable: the last attempt returns or raises")


def covers(current: Any, desired: Any) -> bool:
    """True if `current` already holds everything `desired` says. Servers add defaults to objects (also inside
    list items, such as a container's terminationMessagePath), so extra keys in `current` are not drift."""
    if isinstance(desired, dict):
        return isinstance(current, dict) and all(covers(current.get(k), v) for k, v in desired.items())
    if isinstance(desired, list):
        return (
            isinstance(current, list)
            and len(current) == len(desired)
            and all(covers(c, d) for c, d in zip(current, desired, strict=True))
        )
    if isinstance(desired, int | float) and isinstance(current, int | float) and not isinstance(desired, bool):
        return bool(current == desired)
    return bool(current == desired)


def drift_patch(desired: JsonObject) -> JsonObject:
    """The merge patch that restores `desired`: its spec-like content and its labels, annotations and owners.
    Lists travel whole, so a removed container or port really goes away."""
    body = {key: value for key, value in desired.items() if key not in ("apiVersion", "kind", "metadata", "status")}
    meta = desired["metadata"]
    body["metadata"] = {key: meta[key] for key in ("labels", "annotations", "ownerReferences") if key in meta}
    return body


async def apply(api: KubeApi, desired: JsonObject, *, create_only: bool = False) -> tuple[str, JsonObject]:
    """Returns ("created" | "patched" | "unchanged", the object as stored)."""
    ref = Ref.of(desired)

    async def attempt() -> tuple[str, JsonObject]:
        try:
            return "created", await api.create(desired)
        except ApiError as exc:
            if exc.status != 409:
                raise
        current = await api.get(ref)
        if create_only or covers(current, drift_patch(desired)):
            return "unchanged", current
        patched = await api.merge_patch(ref, drift_patch(desired))
        log.info("child patched back to its desired state", object=str(ref))
        return "patched", patched

    return await with_retries(attempt, f"apply {ref}")


async def remove(api: KubeApi, ref: Ref) -> bool:
    """Delete a child the spec no longer asks for; False if it did not exist."""
    return await with_retries(lambda: api.delete(ref), f"delete {ref}")
