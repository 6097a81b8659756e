"""The hub's side of edge sites on a cluster, as the builders render it (docs/edge.md, "Kubernetes"): the leaf-node
listener and domain `hub` in the managed NATS's config, one account and user per site with the permissions local
mode renders, the passwords from each site's Secret (never in the ConfigMap), the Service and NetworkPolicy sites
dial through; and what a site's removal (its revocation) takes away."""

import base64
from typing import Any

import kubernetes_validate
import pytest

from fleetflow.api import DeviceFleet
from fleetflow.operator.builders import common, nats, network, sites
from fleetflow.runtime import edgelink, natsauth
from tests.operator.test_builders import KUBERNETES_VERSIONS, OWNER
from tests.operator.variants import EDGE_FLEET_SPEC, fleet, fleet_doc, variants

HUB = variants()["edge-sites"][0]


def without_site(spec: dict[str, Any], name: str) -> DeviceFleet:
    kept = [site for site in spec["sites"] if site["name"] != name]
    return fleet(fleet_doc(**{**spec, "sites": kept}))


def site_objects(f: DeviceFleet) -> list[dict[str, Any]]:
    service, policy = sites.leafnode_service(f), network.edge_sites(f)
    assert service is not None and policy is not None
    secrets = [sites.site_secret(f, site.name, natsauth.new_password()) for site in f.spec.sites]
    return [common.owned(obj, OWNER) for obj in (*secrets, service, policy)]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_site_object_validates_against_the_kubernetes_openapi_schema(version: str) -> None:
    for obj in site_objects(HUB):
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{obj['kind']} {obj['metadata']['name']} is invalid for {version}: {exc}")


def test_the_hub_listens_for_leaf_nodes_over_tls_in_domain_hub() -> None:
    conf = nats.server_config(HUB)
    jetstream = conf[conf.index("jetstream {") : conf.index("}", conf.index("jetstream {"))]
    assert f"domain: {edgelink.HUB_DOMAIN}" in jetstream
    leafnodes = conf[conf.index("leafnodes {") :]
    assert leafnodes.startswith(
        f"leafnodes {{\n  listen: 0.0.0.0:{sites.LEAFNODE_PORT}\n  no_advertise: true\n  tls {{"
    )
    assert f'cert_file: "{nats.TLS_DIR}/tls.crt"' in leafnodes.split("}", 1)[0]


def test_without_a_certificate_the_listener_is_plain_and_without_sites_there_is_none() -> None:
    plain = fleet(fleet_doc(sites=[{"name": "depot-a"}]))
    leafnodes = nats.server_config(plain).split("leafnodes {", 1)[1].split("}", 1)[0]
    assert "tls" not in leafnodes
    for bare in (
        fleet(fleet_doc()),
        fleet(fleet_doc(nats={"external": {"url": "nats://n:4222"}}, sites=[{"name": "a"}])),
    ):
        assert sites.leafnode_service(bare) is None and network.edge_sites(bare) is None
        if nats.managed(bare):
            assert "leafnodes" not in nats.server_config(bare) and "domain:" not in nats.server_config(bare)


def test_each_site_gets_the_account_and_permissions_local_mode_renders_with_its_password_from_its_secret() -> None:
    conf = nats.server_config(HUB)
    for site in ("depot-a", "depot-b"):
        domain = edgelink.site_domain(HUB.name, site)
        # The same function as `fleetflow up`'s hub (fleetflow.local.sitelogins): one rendering of what a site may do.
        expected = edgelink.hub_site_accounts({domain: f"${sites.password_env(site)}"})
        assert f"  {expected.accounts[0]}\n" in conf
        assert all(line in conf for line in expected.imports)
    statefulset = nats.nats_statefulset(HUB, "nats:x", "IfNotPresent", {})
    env = {e["name"]: e for e in statefulset["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["NATS_SITE_DEPOT_A_PASSWORD"]["valueFrom"] == {
        "secretKeyRef": {"name": "cold-site-depot-a", "key": sites.PASSWORD_KEY}
    }
    ports = statefulset["spec"]["template"]["spec"]["containers"][0]["ports"]
    assert {"name": "leafnodes", "containerPort": 7422, "protocol": "TCP"} in ports


def test_no_password_is_in_the_config_map() -> None:
    password = natsauth.new_password()
    assert password not in str(nats.nats_config_map(HUB))
    secret = sites.site_secret(HUB, "depot-a", password)
    assert base64.b64decode(secret["data"][sites.PASSWORD_KEY]).decode() == password
    assert secret["metadata"]["labels"][sites.SITE_LABEL] == "depot-a"


def test_the_operators_links_user_may_only_ask_for_leafz() -> None:
    conf = nats.server_config(HUB)
    (sys_line,) = [line for line in conf.splitlines() if line.startswith(f"  {natsauth.SYSTEM_ACCOUNT} {{")]
    assert f"user: {sites.LINKS_USER}, password: ${nats.SERVICES_PASSWORD_ENV}" in sys_line
    assert f'publish: {{ allow: ["{sites.LEAFZ_SUBJECT}"] }}' in sys_line
    assert 'subscribe: { allow: ["_INBOX.>"] }' in sys_line
    assert f"auth_users: [ fleetflow, cold-depot-a, cold-depot-b, {sites.LINKS_USER} ]" in conf
    assert f"  {natsauth.SYSTEM_ACCOUNT} {{ }}" in nats.server_config(fleet(fleet_doc())), "no user without sites"


def test_removing_a_site_from_the_spec_revokes_it_its_user_account_and_password_go() -> None:
    revoked = without_site(EDGE_FLEET_SPEC, "depot-b")
    conf = nats.server_config(revoked)
    assert "cold-depot-b" not in conf and "NATS_SITE_DEPOT_B_PASSWORD" not in conf
    assert "user: cold-depot-a," in conf
    env = nats.nats_statefulset(revoked, "nats:x", "IfNotPresent", {})["spec"]["template"]["spec"]["containers"][0]
    assert "NATS_SITE_DEPOT_B_PASSWORD" not in {e["name"] for e in env["env"]}
    # A changed config rolls the servers (the config hash on the pod template): the site's link is cut at once.
    hashes = [
        nats.nats_statefulset(f, "nats:x", "IfNotPresent", {})["spec"]["template"]["metadata"]["annotations"]
        for f in (HUB, revoked)
    ]
    assert hashes[0]["fleetflow.io/config-hash"] != hashes[1]["fleetflow.io/config-hash"]


def test_the_leafnode_service_is_published_as_the_overrides_ask_and_the_policy_admits_the_sites_ranges() -> None:
    service = sites.leafnode_service(HUB)
    assert service is not None
    assert service["metadata"]["name"] == "cold-leafnodes"
    assert service["spec"]["type"] == "LoadBalancer"
    assert service["spec"]["loadBalancerSourceRanges"] == ["203.0.113.0/24"]
    assert service["spec"]["ports"] == [
        {"name": "leafnodes", "port": 7422, "targetPort": "leafnodes", "protocol": "TCP"}
    ]
    assert service["spec"]["selector"] == common.selector_labels("cold", "nats")
    plain = sites.leafnode_service(fleet(fleet_doc(sites=[{"name": "a"}])))
    assert plain is not None and plain["spec"]["type"] == "ClusterIP"
    policy = network.edge_sites(HUB)
    assert policy is not None
    (rule,) = policy["spec"]["ingress"]
    assert rule == {
        "ports": [{"port": "leafnodes", "protocol": "TCP"}],
        "from": [{"ipBlock": {"cidr": "203.0.113.0/24"}}],
    }
    names = [p["metadata"]["name"] for p in network.network_policies(HUB, "fleetflow-system")]
    assert names.index("cold-edge-sites") < names.index("cold-default-deny"), "allowed before the deny"


def test_a_sites_password_variable_is_unique_and_a_valid_environment_name() -> None:
    assert sites.password_env("depot-a") == "NATS_SITE_DEPOT_A_PASSWORD"
    assert sites.password_env("depot-a") != sites.password_env("depota")
