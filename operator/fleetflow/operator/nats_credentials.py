"""The Secret `<fleet>-nats-credentials` behind a managed NATS's authentication (`fleetflow.runtime.natsauth`).

The operator creates it once per fleet, owned by the DeviceFleet, and never rewrites it while it exists. It holds
the MQTT callout issuer's account nkey (seed and public key) and the passwords of the services' user, of the
cluster routes and of the anonymous MQTT user. nats-server reads them from environment variables that the
StatefulSet fills from the Secret; the services read files the Secret is mounted as (the gateway alone gets the
issuer seed); the operator reads the Secret through the API to provision streams."""

import base64
import re
from dataclasses import dataclass
from pathlib import Path

import nkeys

from fleetflow.api import DeviceFleet
from fleetflow.operator.builders.common import JsonObject, config_hash, fleet_labels, metadata, namespace_of
from fleetflow.operator.kube import KubeApi, Ref
from fleetflow.runtime import natsauth
from fleetflow.runtime.natsauth import NatsLogin

ISSUER_SEED_KEY = "mqtt-issuer.nk"  # signs the MQTT devices' user JWTs
ISSUER_KEY = "mqtt-issuer.pub"  # what nats-server trusts those signatures by
SERVICES_PASSWORD_KEY = "services-password"
ROUTES_PASSWORD_KEY = "routes-password"
ANONYMOUS_PASSWORD_KEY = "anonymous-password"
PASSWORD_KEYS = (SERVICES_PASSWORD_KEY, ROUTES_PASSWORD_KEY, ANONYMOUS_PASSWORD_KEY)
KEYS = (ISSUER_SEED_KEY, ISSUER_KEY, *PASSWORD_KEYS)
# What natsauth.new_password makes: nats-server's environment substitution must read it as a string.
PASSWORD = re.compile(r"^[A-Za-z][A-Za-z0-9]{15,}$")
DIR = "/var/run/fleetflow/nats"  # where service pods find their keys of the Secret
VOLUME = "nats-credentials"
HASH_ANNOTATION = "fleetflow.io/nats-credentials-hash"
WORKLOADS = ("Deployment", "StatefulSet")


class CredentialsError(ValueError):
    """The Secret holds something nats-server or the services cannot use; the message names the Secret and the
    key (never the value: it is a secret)."""

    reason = "NatsCredentialsInvalid"


class CredentialsMissing(CredentialsError):
    reason = "NatsCredentialsMissing"


def secret_name(fleet: DeviceFleet) -> str:
    return f"{fleet.name}-nats-credentials"


def new_values() -> dict[str, str]:
    """Fresh random credentials for a new Secret."""
    seed = natsauth.new_issuer_seed()
    return {
        ISSUER_SEED_KEY: seed.decode(),
        ISSUER_KEY: natsauth.issuer_public_key(seed),
        **{key: natsauth.new_password() for key in PASSWORD_KEYS},
    }


def credentials_secret(fleet: DeviceFleet, values: dict[str, str]) -> JsonObject:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata(secret_name(fleet), namespace_of(fleet), fleet_labels(fleet, "nats")),
        "type": "Opaque",
        "data": {key: base64.b64encode(value.encode()).decode() for key, value in values.items()},
    }


@dataclass(frozen=True)
class NatsCredentials:
    values: dict[str, str]

    @property
    def login(self) -> NatsLogin:
        """How the services and the operator connect."""
        return NatsLogin(natsauth.SERVICE_USER, self.values[SERVICES_PASSWORD_KEY])

    @property
    def digest(self) -> str:
        """Changes when the Secret's content does (it was re-created), to roll the pods that read it at start."""
        return config_hash(*(f"{key}={value}" for key, value in sorted(self.values.items())))


def read(secret: JsonObject) -> NatsCredentials:
    """The credentials of a stored Secret; CredentialsError if a key is missing or unusable."""
    name = secret["metadata"]["name"]
    data = secret.get("data") or {}
    missing = [key for key in KEYS if key not in data]
    if missing:
        present = ", ".join(sorted(data)) or "none"
        raise CredentialsError(
            f"Secret {name!r} lacks the keys {missing} (it has: {present}); delete it and the operator creates a "
            "complete one (the fleet's NATS and service pods then restart)"
        )
    values = {key: base64.b64decode(data[key]).decode(errors="replace").strip() for key in KEYS}
    for key in PASSWORD_KEYS:
        if not PASSWORD.fullmatch(values[key]):
            raise CredentialsError(
                f"Secret {name!r} key {key!r}: a password must be 16 or more letters and digits, starting with "
                "a letter (nats-server reads it from an environment variable, and route URLs carry it)"
            )
    _check_issuer(name, values)
    return NatsCredentials(values)


def _check_issuer(name: str, values: dict[str, str]) -> None:
    try:
        public = natsauth.issuer_public_key(values[ISSUER_SEED_KEY].encode())
    except nkeys.NkeysError:
        public = ""
    if not public.startswith("A"):
        raise CredentialsError(f"Secret {name!r} key {ISSUER_SEED_KEY!r}: not an account nkey seed ('SA...')")
    if public != values[ISSUER_KEY]:
        raise CredentialsError(
            f"Secret {name!r} key {ISSUER_KEY!r}: not the public key of {ISSUER_SEED_KEY!r} (it should be {public})"
        )


async def fetch(api: KubeApi, fleet: DeviceFleet) -> NatsCredentials:
    """The fleet's credentials as stored; CredentialsMissing if the Secret does not exist (yet)."""
    name = secret_name(fleet)
    found = await api.get_or_none(Ref("v1", "Secret", namespace_of(fleet), name))
    if found is None:
        raise CredentialsMissing(
            f"Secret {name!r} does not exist in namespace {namespace_of(fleet)!r}: the reconcile of DeviceFleet "
            f"{fleet.name!r} creates it"
        )
    return read(found)


def file(key: str) -> Path:
    """Where a service pod finds a key of the Secret."""
    return Path(DIR) / key


def volume(fleet: DeviceFleet, keys: list[str]) -> JsonObject:
    """Only `keys` of the Secret, readable by the pod's group (its fsGroup) and no one else."""
    items = [{"key": key, "path": key} for key in keys]
    return {"name": VOLUME, "secret": {"secretName": secret_name(fleet), "defaultMode": 0o440, "items": items}}


def mount() -> JsonObject:
    return {"name": VOLUME, "mountPath": DIR, "readOnly": True}


def stamped(obj: JsonObject, credentials: NatsCredentials | None) -> JsonObject:
    """A workload whose pods roll when the credentials change; other objects as they are."""
    if credentials is None or obj["kind"] not in WORKLOADS:
        return obj
    template = obj["spec"]["template"]
    annotations = {**template.get("metadata", {}).get("annotations", {}), HASH_ANNOTATION: credentials.digest}
    template = {**template, "metadata": {**template.get("metadata", {}), "annotations": annotations}}
    return {**obj, "spec": {**obj["spec"], "template": template}}
