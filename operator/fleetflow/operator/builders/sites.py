"""The centre's side of a fleet's edge sites on a cluster (docs/edge.md, "Kubernetes"): the managed NATS's leaf-node
listener and JetStream domain `hub`, one account and user per site (rendered by fleetflow.runtime.edgelink, as local
mode renders them: one source of truth for what a site may publish), each site's password in a Secret of its own, the
Service and NetworkPolicy sites dial through, and the read-only user the operator sees the leaf connections as.

No password is in the ConfigMap: nats.conf names `$NATS_SITE_<SITE>_PASSWORD`, which the StatefulSet fills from the
site's Secret, as it fills the services' password from the fleet's Secret."""

import base64
import dataclasses

from fleetflow.api import DeviceFleet
from fleetflow.operator.builders import shaping
from fleetflow.operator.builders.common import (
    JsonObject,
    config_hash,
    fleet_labels,
    metadata,
    namespace_of,
    selector_labels,
)
from fleetflow.runtime import edgelink, natsauth

LEAFNODE_PORT = 7422
PORT_NAME = "leafnodes"
PASSWORD_KEY = "password"
SITE_LABEL = "fleetflow.io/site"
HASH_ANNOTATION = "fleetflow.io/site-secrets-hash"
# The operator's view of the leaf connections: a user of the system account that may only ask every server for its
# /leafz (the monitoring port stays on each pod's loopback). It logs in with the services' password: the operator is
# the services' user already, and this user can read nothing else.
LINKS_USER = "fleetflow-site-links"
LEAFZ_SUBJECT = "$SYS.REQ.SERVER.PING.LEAFZ"


def served(fleet: DeviceFleet) -> bool:
    """The operator runs the hub's side only for a NATS it manages; an external NATS is configured by its owner."""
    return bool(fleet.spec.sites) and fleet.spec.nats.external is None


def secret_name(fleet: DeviceFleet, site: str) -> str:
    return f"{fleet.name}-site-{site}"


def password_env(site: str) -> str:
    """Site names are lowercase letters, digits and '-', so the variable is unique per site."""
    return f"NATS_SITE_{site.upper().replace('-', '_')}_PASSWORD"


def site_secret(fleet: DeviceFleet, site: str, password: str) -> JsonObject:
    """Created once, never rewritten: the admin copies its password to the site (`--credentials`)."""
    labels = {**fleet_labels(fleet, "nats"), SITE_LABEL: site}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata(secret_name(fleet, site), namespace_of(fleet), labels),
        "type": "Opaque",
        "data": {PASSWORD_KEY: base64.b64encode(password.encode()).decode()},
    }


def secrets_digest(secrets: list[JsonObject]) -> str:
    """Changes when a site's password does (its Secret deleted and made anew): the NATS pods roll and read it."""
    return config_hash(*(f"{s['metadata']['name']}={(s.get('data') or {}).get(PASSWORD_KEY, '')}" for s in secrets))


def linked_accounts(fleet: DeviceFleet, links_password: str) -> natsauth.LinkedAccounts:
    """Each site's account, user and what the fleets' account imports from it, plus the operator's links user.
    `links_password` is a nats.conf value."""
    passwords = {
        edgelink.site_domain(fleet.name, site.name): natsauth.from_environment(password_env(site.name))
        for site in fleet.spec.sites
    }
    accounts = edgelink.hub_site_accounts(passwords)
    permissions = f'permissions: {{ publish: {{ allow: ["{LEAFZ_SUBJECT}"] }}, subscribe: {{ allow: ["_INBOX.>"] }} }}'
    links = f"{{ user: {LINKS_USER}, password: {links_password}, allowed_connection_types: [STANDARD], {permissions} }}"
    return dataclasses.replace(accounts, users=(*accounts.users, LINKS_USER), system_users=(links,))


def leafnodes_config(tls_files: tuple[str, str] | None) -> str:
    """The listener every site dials; TLS only when the fleet's NATS has a certificate."""
    return edgelink.hub_leafnodes_config("0.0.0.0", LEAFNODE_PORT, tls_files)


def env(fleet: DeviceFleet) -> list[JsonObject]:
    """The sites' passwords for nats.conf, each from its site's Secret."""
    return [
        {
            "name": password_env(site.name),
            "valueFrom": {"secretKeyRef": {"name": secret_name(fleet, site.name), "key": PASSWORD_KEY}},
        }
        for site in fleet.spec.sites
    ]


def container_ports(fleet: DeviceFleet) -> list[JsonObject]:
    return [{"name": PORT_NAME, "containerPort": LEAFNODE_PORT, "protocol": "TCP"}] if served(fleet) else []


def service_name(fleet: DeviceFleet) -> str:
    return f"{fleet.name}-leafnodes"


def leafnode_service(fleet: DeviceFleet) -> JsonObject | None:
    """The leaf-node listener alone, published as `spec.nats.managed.leafnodeService` asks (ClusterIP without it);
    None for a fleet without sites. The client port is never published."""
    if not served(fleet):
        return None
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(service_name(fleet), namespace_of(fleet), fleet_labels(fleet, "nats")),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(fleet.name, "nats"),
            "ports": [{"name": PORT_NAME, "port": LEAFNODE_PORT, "targetPort": PORT_NAME, "protocol": "TCP"}],
        },
    }
    overrides = fleet.spec.nats.managed_or_default.leafnode_service
    return shaping.published(service, overrides) if overrides else service


def hub_url(fleet: DeviceFleet, tls: bool) -> str:
    """Where a site inside the cluster dials; from outside, the published Service's address and the same port."""
    return f"{'tls' if tls else 'nats'}://{service_name(fleet)}.{namespace_of(fleet)}.svc:{LEAFNODE_PORT}"
