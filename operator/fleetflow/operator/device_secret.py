"""The fleet's device Secret after day 1: never silently replaced, rotated only when an admin asks, with an overlap.

Every device token derives from this Secret, so a new value locks every device out. Once a fleet has run (its
status records the Secret), a Secret that is gone is a problem to report, not something to re-create. A rotation
is asked for with an annotation on the DeviceFleet and done once per distinct value: the new secret goes under
the key, the old one under `<key>.previous`, and the gateways accept tokens of both until the admin retires the
old one with a second annotation. The rotation done is recorded on the Secret itself, in the same write as the
new value, so a reconcile that fails after it never rotates twice (which would lose the old key)."""

import base64
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fleetflow.operator.builders.common import JsonObject, config_hash
from fleetflow.operator.kube import KubeApi, Ref
from fleetflow.runtime import credentials

ROTATE_ANNOTATION = "fleetflow.io/rotate-device-secret"
RETIRE_ANNOTATION = "fleetflow.io/retire-previous-device-secret"
ROTATION_ANNOTATION = "fleetflow.io/rotation"  # on the Secret: the rotation its keys are the result of
HASH_ANNOTATION = "fleetflow.io/device-secret-hash"  # on the gateway pod template
STATUS_KEY = "deviceSecret"


def previous_key(key: str) -> str:
    """The Secret key of the previous secret: mounted beside the current one, where the gateway looks for it."""
    return key + credentials.PREVIOUS_SUFFIX


def new_value() -> bytes:
    """Base64 text, as `fleetflow up` writes its local secret file."""
    return base64.b64encode(secrets.token_bytes(credentials.SECRET_BYTES))


@dataclass(frozen=True)
class Recorded:
    """`status.deviceSecret`: what the operator saw of the Secret at its last reconcile."""

    name: str
    hash: str
    rotation: str | None

    @classmethod
    def of(cls, body: JsonObject) -> "Recorded | None":
        found = ((body.get("status") or {}).get(STATUS_KEY)) or None
        if not isinstance(found, dict) or not found.get("hash"):
            return None
        return cls(str(found.get("name") or ""), str(found["hash"]), found.get("rotation") or None)

    def to_status(self) -> JsonObject:
        return status_of(self.name, self.hash, self.rotation, previous_accepted=False)


def status_of(name: str, digest: str, rotation: str | None, previous_accepted: bool) -> JsonObject:
    found: JsonObject = {"name": name, "hash": digest, "previousKeyAccepted": previous_accepted}
    if rotation:
        found["rotation"] = rotation
    return found


def digest(secret: JsonObject, key: str) -> str:
    """Changes when the key or its previous one does: the gateways read both only at start."""
    data = secret.get("data") or {}
    return config_hash(f"{key}={data.get(key, '')}", f"{previous_key(key)}={data.get(previous_key(key), '')}")


def rotation_of(secret: JsonObject) -> str | None:
    return ((secret.get("metadata") or {}).get("annotations") or {}).get(ROTATION_ANNOTATION) or None


def asked(body: JsonObject) -> tuple[str | None, str | None]:
    """(rotation asked for, rotation whose previous key may go), from the DeviceFleet's annotations."""
    annotations: dict[str, Any] = (body.get("metadata") or {}).get("annotations") or {}
    return annotations.get(ROTATE_ANNOTATION) or None, annotations.get(RETIRE_ANNOTATION) or None


def request_pending(body: Mapping[str, Any]) -> bool:
    """True when the rotate or retire annotation asks for something the status does not show done yet. (kopf's
    change detection does not see the operator's own `fleetflow.io/*` annotations.)"""
    rotation, retire = asked(dict(body))
    recorded = ((body.get("status") or {}).get(STATUS_KEY)) or {}
    if not isinstance(recorded, dict) or not recorded:
        return False  # never reconciled: the create handler runs anyway
    done = recorded.get("rotation")
    return bool(rotation and rotation != done) or bool(
        retire and retire == done and recorded.get("previousKeyAccepted")
    )


def with_rotation(secret: JsonObject, rotation: str | None) -> JsonObject:
    """A Secret to create, marked with the rotation that asked for it (so that rotation is not done again)."""
    if not rotation:
        return secret
    meta = secret["metadata"]
    return {
        **secret,
        "metadata": {**meta, "annotations": {**meta.get("annotations", {}), ROTATION_ANNOTATION: rotation}},
    }


async def rotate(api: KubeApi, secret: JsonObject, key: str, rotation: str) -> JsonObject:
    """A new secret under `key`, the current one under its previous key, and the rotation noted, in one write
    that fails (409) if the Secret changed since it was read."""
    data = secret.get("data") or {}
    patch = {
        "metadata": {"resourceVersion": secret["metadata"]["resourceVersion"],
                     "annotations": {ROTATION_ANNOTATION: rotation}},
        "data": {key: base64.b64encode(new_value()).decode(), previous_key(key): data[key]},
    }  # fmt: skip
    return await api.merge_patch(Ref.of(secret), patch)


async def retire_previous(api: KubeApi, secret: JsonObject, key: str) -> JsonObject:
    """Tokens of the previous secret stop working once the gateways rolled without it."""
    patch = {"metadata": {"resourceVersion": secret["metadata"]["resourceVersion"]}, "data": {previous_key(key): None}}
    return await api.merge_patch(Ref.of(secret), patch)


def stamped(obj: JsonObject, secret_digest: str | None) -> JsonObject:
    """The gateway StatefulSet, whose pods roll when the device Secret's keys change; other objects as they are."""
    if secret_digest is None or obj["kind"] != "StatefulSet":
        return obj
    template = obj["spec"]["template"]
    annotations = {**template.get("metadata", {}).get("annotations", {}), HASH_ANNOTATION: secret_digest}
    template = {**template, "metadata": {**template.get("metadata", {}), "annotations": annotations}}
    return {**obj, "spec": {**obj["spec"], "template": template}}
