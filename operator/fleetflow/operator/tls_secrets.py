"""The Secrets behind a fleet's TLS and an external NATS's login, as the operator reads them through the API:
to verify and log in to the fleet's NATS when it provisions streams, and to roll the pods that read them at
start when their content changes (cert-manager renewing a certificate, an admin rotating a password)."""

import base64
import ssl
from dataclasses import dataclass

from fleetflow.api import DeviceFleet
from fleetflow.api.tls import CA_KEY, CERT_KEY, KEY_KEY, CaSecretRef, TlsSecret
from fleetflow.operator.builders import gateway, nats
from fleetflow.operator.builders.common import JsonObject, config_hash, namespace_of
from fleetflow.operator.kube import KubeApi, Ref
from fleetflow.runtime import certificates
from fleetflow.runtime.natsauth import NatsLogin

HASH_ANNOTATION = "fleetflow.io/tls-hash"
WORKLOADS = ("Deployment", "StatefulSet")
DEVICE_CA = "device-ca"  # the digest's name for the CA of devices' client certificates


class TlsSecretError(ValueError):
    """A Secret the spec names is missing or unusable; the message names the field, the Secret and the key (never
    a value)."""

    reason = "TlsSecretInvalid"


@dataclass(frozen=True)
class FleetSecrets:
    """What the operator read. The digests change with the content each kind of pod reads at start."""

    tls: ssl.SSLContext | None = None  # verifies the fleet's NATS
    login: NatsLogin | None = None  # an external NATS's user
    server_digest: str = ""  # the managed NATS's certificate: its servers roll
    client_digest: str = ""  # the CA and an external password: every service rolls
    gateway_digest: str = ""  # the gateway's own certificate: the gateways roll

    def digest_for(self, component: str) -> str:
        if component == "nats":
            return self.server_digest
        if component == "gateway":
            return config_hash(self.client_digest, self.gateway_digest) if self.gateway_digest else self.client_digest
        return self.client_digest


async def _keys(api: KubeApi, fleet: DeviceFleet, field: str, name: str, keys: list[str]) -> dict[str, bytes]:
    secret = await api.get_or_none(Ref("v1", "Secret", namespace_of(fleet), name))
    if secret is None:
        raise TlsSecretError(f"{field} = {name!r}: no such Secret in namespace {namespace_of(fleet)!r}")
    data = secret.get("data") or {}
    missing = [key for key in keys if key not in data]
    if missing:
        present = ", ".join(sorted(data)) or "none"
        raise TlsSecretError(f"{field} = {name!r}: the Secret lacks the keys {missing} (it has: {present})")
    return {key: base64.b64decode(data[key]) for key in keys}


def _context(field: str, name: str, key: str, pem: bytes) -> ssl.SSLContext:
    try:
        return ssl.create_default_context(cadata=pem.decode(errors="replace"))
    except (ssl.SSLError, ValueError) as exc:
        raise TlsSecretError(f"{field} = {name!r}: key {key!r} is not a PEM CA certificate ({exc})") from None


def _expiry(fleet: DeviceFleet, certificate: str, field: str, name: str, key: str, pem: bytes) -> None:
    """Export when a certificate of the fleet expires; each read replaces the value, so a renewal shows at once."""
    try:
        certificates.record(certificate, pem, f"{field} = {name!r}, key {key!r}", fleet=fleet.name,
                            namespace=namespace_of(fleet))  # fmt: skip
    except ValueError as exc:
        raise TlsSecretError(str(exc)) from None


def _field(path: str, certificate: TlsSecret | None) -> str:
    """The spec field a missing or unusable Secret comes from, for messages."""
    return f"{path}.generate" if certificate is not None and certificate.generate else f"{path}.secretName"


def _digest(values: dict[str, bytes]) -> str:
    return config_hash(*(f"{key}={base64.b64encode(value).decode()}" for key, value in sorted(values.items())))


async def read(api: KubeApi, fleet: DeviceFleet, with_gateway: bool = True) -> FleetSecrets:
    """The fleet's TLS and login Secrets; TlsSecretError when one the spec names is missing or unusable."""
    certificate, external = nats.tls_secret_name(fleet), fleet.spec.nats.external
    tls, server_digest, client = None, "", {}
    if certificate is not None:
        field = _field("spec.nats.managed.tls", nats.tls(fleet))
        values = await _keys(api, fleet, field, certificate, [CERT_KEY, KEY_KEY, CA_KEY])
        tls = _context(field, certificate, CA_KEY, values[CA_KEY])
        _expiry(fleet, "nats", field, certificate, CERT_KEY, values[CERT_KEY])
        _expiry(fleet, "ca", field, certificate, CA_KEY, values[CA_KEY])
        client[CA_KEY] = values[CA_KEY]
        if with_gateway and (device_ca := nats.mqtt_device_ca(fleet)) is not None:  # the MQTT listener reads it
            values[DEVICE_CA] = await _device_ca(api, fleet, device_ca)
        server_digest = _digest(values)
    if external is not None and external.ca_secret_ref is not None:
        ca, field = external.ca_secret_ref, "spec.nats.external.caSecretRef.name"
        client[CA_KEY] = (await _keys(api, fleet, field, ca.name, [ca.key]))[ca.key]
        tls = _context(field, ca.name, ca.key, client[CA_KEY])
        _expiry(fleet, "ca", field, ca.name, ca.key, client[CA_KEY])
    login = None
    if external is not None and external.user and external.password_secret_ref is not None:
        ref, field = external.password_secret_ref, "spec.nats.external.passwordSecretRef.name"
        client["password"] = (await _keys(api, fleet, field, ref.name, [ref.key]))[ref.key]
        login = NatsLogin(external.user, client["password"].decode(errors="replace").strip())
    gateway_digest = ""
    name = gateway.tls_secret_name(fleet)
    if with_gateway and name is not None:
        served = await _gateway_values(api, fleet, name)
        gateway_digest = _digest(served)
        _expiry(fleet, "gateway", _field("spec.gateway.tls", fleet.spec.gateway.tls), name, CERT_KEY, served[CERT_KEY])
    _forget_dropped(fleet, with_gateway, nats=certificate is not None, ca=CA_KEY in client)
    client_digest = _digest(client) if client else ""
    return FleetSecrets(tls, login, server_digest, client_digest, gateway_digest)


def _forget_dropped(fleet: DeviceFleet, with_gateway: bool, nats: bool, ca: bool) -> None:
    """A certificate the spec no longer names stops being exported (a pipeline's read does not see the gateway's)."""
    dropped = [name for name, used in (("nats", nats), ("ca", ca)) if not used]
    if with_gateway and fleet.spec.gateway.tls is None:
        dropped.append("gateway")
    certificates.forget(dropped, fleet=fleet.name, namespace=namespace_of(fleet))


async def _gateway_values(api: KubeApi, fleet: DeviceFleet, name: str) -> dict[str, bytes]:
    """The gateway's certificate (Secret `name`) and, with client auth, the CA of the devices' certificates (a new
    CA rolls the gateways too: they read it at start)."""
    tls = fleet.spec.gateway.tls
    assert tls is not None
    values = await _keys(api, fleet, _field("spec.gateway.tls", tls), name, [CERT_KEY, KEY_KEY])
    if tls.client_auth is not None:
        values[DEVICE_CA] = await _device_ca(api, fleet, tls.client_auth.ca_secret_ref)
    return values


async def _device_ca(api: KubeApi, fleet: DeviceFleet, ref: CaSecretRef) -> bytes:
    field = "spec.gateway.tls.clientAuth.caSecretRef.name"
    pem = (await _keys(api, fleet, field, ref.name, [ref.key]))[ref.key]
    _context(field, ref.name, ref.key, pem)
    return pem


def stamped(obj: JsonObject, secrets: FleetSecrets | None) -> JsonObject:
    """A workload whose pods roll when the Secrets they read at start change; other objects as they are."""
    if secrets is None or obj["kind"] not in WORKLOADS:
        return obj
    component = obj["metadata"]["labels"].get("app.kubernetes.io/name", "").removeprefix("fleetflow-")
    digest = secrets.digest_for(component)
    if not digest:
        return obj
    template = obj["spec"]["template"]
    annotations = {**template.get("metadata", {}).get("annotations", {}), HASH_ANNOTATION: digest}
    template = {**template, "metadata": {**template.get("metadata", {}), "annotations": annotations}}
    return {**obj, "spec": {**obj["spec"], "template": template}}
