"""A changed NATS volume size never wedges a fleet: the PVCs grow in place where their StorageClass allows it,
otherwise a condition says why, and the other steps go on. The emulator refuses, as the real API server does,
any StatefulSet patch that touches its volumeClaimTemplates (a 422); the tests play the StatefulSet controller
(the PVCs) and the CSI driver (their capacity)."""

from typing import Any

import pytest

from fleetflow.api.quantities import parse_bytes
from fleetflow.operator.builders.nats import STORE_SHARE
from fleetflow.operator.options import OperatorOptions
from tests.operator.apiserver import ApiServerEmulator
from tests.operator.conftest import OperatorStarter, wait_until
from tests.operator.test_operator_reconcile import Api, cr, create, has_condition, patch
from tests.operator.variants import fleet_doc

OPTIONS = OperatorOptions(image="fleetflow:test", resync_seconds=0.3)
WITHIN = 5.0
SERVERS = 3


def managed(size: str = "10Gi", storage_class: str = "expandable") -> dict[str, Any]:
    return {"nats": {"managed": {"replicas": SERVERS, "storageSize": size, "storageClassName": storage_class}},
            "streams": {"replicas": 3, "maxBytes": "1Gi"}}  # fmt: skip


async def post(emulator: ApiServerEmulator, path: str, doc: dict[str, Any]) -> None:
    async with emulator.post(path, json=doc) as response:
        assert response.status == 201, await response.text()


async def storage_classes(emulator: ApiServerEmulator) -> None:
    for name, expands in (("expandable", True), ("fixed", False)):
        await post(emulator, "/apis/storage.k8s.io/v1/storageclasses", {
            "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": name},
            "provisioner": "csi.example.com", "allowVolumeExpansion": expands})  # fmt: skip


async def volumes(emulator: ApiServerEmulator, size: str, storage_class: str) -> None:
    """What the StatefulSet controller and the provisioner do: one bound PVC per server."""
    for ordinal in range(SERVERS):
        await post(emulator, "/api/v1/namespaces/ns1/persistentvolumeclaims", {
            "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": f"data-cold-nats-{ordinal}"},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": storage_class,
                     "resources": {"requests": {"storage": size}}},
            "status": {"phase": "Bound", "capacity": {"storage": size}}})  # fmt: skip


def requested(emulator: ApiServerEmulator) -> list[str]:
    claims = [emulator.get("v1", "persistentvolumeclaims", "ns1", f"data-cold-nats-{i}") for i in range(SERVERS)]
    return [c["spec"]["resources"]["requests"]["storage"] for c in claims if c]


def statefulset(emulator: ApiServerEmulator) -> dict[str, Any]:
    return emulator.get("apps/v1", "statefulsets", "ns1", "cold-nats") or {}


def template_size(emulator: ApiServerEmulator) -> str | None:
    templates = statefulset(emulator).get("spec", {}).get("volumeClaimTemplates") or [{}]
    return templates[0].get("spec", {}).get("resources", {}).get("requests", {}).get("storage")


def store_limit(emulator: ApiServerEmulator) -> int:
    config = (emulator.get("v1", "configmaps", "ns1", "cold-nats-config") or {"data": {}})["data"]["nats.conf"]
    (line,) = [line for line in config.splitlines() if "max_file_store" in line]
    return int(line.split(":")[1])


def limit_for(size: str) -> int:
    return int(parse_bytes(size) * STORE_SHARE)


def gateway_replicas(emulator: ApiServerEmulator) -> int | None:
    return (emulator.get("apps/v1", "statefulsets", "ns1", "cold-gateway") or {}).get("spec", {}).get("replicas")


def conditions_text(emulator: ApiServerEmulator) -> str:
    return str((cr(emulator, "devicefleets", "cold").get("status") or {}).get("conditions"))


async def running(emulator: ApiServerEmulator, size: str, storage_class: str) -> None:
    await storage_classes(emulator)
    await create(emulator, fleet_doc(**managed(size, storage_class)))
    await wait_until(lambda: statefulset(emulator), what="the NATS StatefulSet")
    await volumes(emulator, size, storage_class)


async def test_a_larger_size_expands_the_volumes_in_place_then_the_statefulset_follows(
    apiserver: Api, start_operator: OperatorStarter
) -> None:
    emulator, _ = apiserver
    async with start_operator(options=OPTIONS):
        await running(emulator, "10Gi", "expandable")
        first_uid = statefulset(emulator)["metadata"]["uid"]

        await patch(emulator, "devicefleets", "cold", {"spec": {"nats": {"managed": {"storageSize": "20Gi"}}}})
        await wait_until(lambda: requested(emulator) == ["20Gi"] * SERVERS, timeout=WITHIN, what="PVCs expanded")
        await wait_until(lambda: "expanding NATS volumes to 20Gi: 0/3" in conditions_text(emulator),
                         what="the expansion in Ready")  # fmt: skip
        # Until the volumes have grown, NATS keeps the store limit of the volumes it has.
        assert store_limit(emulator) == limit_for("10Gi")
        assert template_size(emulator) == "10Gi" and statefulset(emulator)["metadata"]["uid"] == first_uid
        assert "KubernetesApiError" not in conditions_text(emulator)

        for ordinal in range(SERVERS):  # the CSI driver has resized the volumes
            await emulator.write("v1", "persistentvolumeclaims", "ns1", f"data-cold-nats-{ordinal}",
                                 {"status": {"capacity": {"storage": "20Gi"}}})  # fmt: skip
        await wait_until(lambda: template_size(emulator) == "20Gi", timeout=WITHIN,
                         what="the StatefulSet re-created with the new volume size")  # fmt: skip
        assert statefulset(emulator)["metadata"]["uid"] != first_uid
        await wait_until(lambda: store_limit(emulator) == limit_for("20Gi"), timeout=WITHIN, what="the store limit")
        assert "expanding" not in conditions_text(emulator)


async def test_a_storage_class_that_cannot_expand_is_a_condition_and_the_other_steps_go_on(
    apiserver: Api, start_operator: OperatorStarter
) -> None:
    emulator, _ = apiserver
    async with start_operator(options=OPTIONS):
        await running(emulator, "10Gi", "fixed")
        await patch(emulator, "devicefleets", "cold",
                    {"spec": {"nats": {"managed": {"storageSize": "20Gi"}}, "gateway": {"replicas": 3}}})  # fmt: skip

        refused = await wait_until(lambda: has_condition(emulator, "devicefleets", "cold", "Degraded", "True"),
                                   timeout=WITHIN, what="the refusal in the conditions")  # fmt: skip
        assert refused["reason"] == "StorageNotExpandable"
        assert "spec.nats.managed.storageSize = '20Gi'" in refused["message"]
        assert "StorageClass 'fixed' does not allow volume expansion" in refused["message"]
        assert "set it back to '10Gi'" in refused["message"]
        await wait_until(lambda: gateway_replicas(emulator) == 3, timeout=WITHIN, what="the gateway step to go on")
        (warning,) = await wait_until(
            lambda: [e for e in emulator.items("v1", "events", "ns1") if e.get("reason") == "StorageNotExpandable"],
            what="a Warning Event",
        )
        assert warning["type"] == "Warning"
        assert requested(emulator) == ["10Gi"] * SERVERS
        assert template_size(emulator) == "10Gi" and store_limit(emulator) == limit_for("10Gi"), "NATS as it was"
        assert "KubernetesApiError" not in conditions_text(emulator)

        await patch(emulator, "devicefleets", "cold", {"spec": {"nats": {"managed": {"storageSize": "10Gi"}}}})
        await wait_until(lambda: has_condition(emulator, "devicefleets", "cold", "Degraded", "False"),
                         timeout=WITHIN, what="set back: no problem")  # fmt: skip


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"storageSize": "5Gi"}, "spec.nats.managed.storageSize = '5Gi' is smaller than the NATS volumes ('10Gi')"),
        ({"storageClassName": "fixed"}, "spec.nats.managed.storageClassName = 'fixed': the NATS volumes were made "
                                        "with 'expandable' and a volume cannot change its class"),
    ],
    ids=["shrink", "class"],
)  # fmt: skip
async def test_what_no_volume_can_do_is_refused_with_the_way_back(
    apiserver: Api, start_operator: OperatorStarter, change: dict[str, str], says: str
) -> None:
    emulator, _ = apiserver
    async with start_operator(options=OPTIONS):
        await running(emulator, "10Gi", "expandable")
        await patch(emulator, "devicefleets", "cold", {"spec": {"nats": {"managed": change}}})
        refused = await wait_until(lambda: has_condition(emulator, "devicefleets", "cold", "Degraded", "True"),
                                   timeout=WITHIN, what="the refusal")  # fmt: skip
        assert refused["reason"] == "StorageChangeRefused"
        assert says in refused["message"]
        assert requested(emulator) == ["10Gi"] * SERVERS
        assert template_size(emulator) == "10Gi" and store_limit(emulator) == limit_for("10Gi")
