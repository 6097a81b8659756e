"""A fleet whose gateway is still a Deployment (earlier operator versions, buffer in an emptyDir) moves to the
StatefulSet with a buffer volume per replica, and the Deployment goes only once the StatefulSet serves: devices
never meet a fleet without a gateway."""

from tests.operator.conftest import OperatorStarter, wait_until
from tests.operator.test_operator_reconcile import Api, cr, create, mark_ready
from tests.operator.variants import fleet_doc


async def test_the_old_gateway_deployment_goes_once_the_statefulset_is_ready(
    apiserver: Api, start_operator: OperatorStarter
) -> None:
    emulator, _ = apiserver
    await create(emulator, fleet_doc())
    owner = cr(emulator, "devicefleets", "cold")["metadata"]
    old = {"apiVersion": "apps/v1", "kind": "Deployment",
           "metadata": {"name": "cold-gateway", "namespace": "ns1",
                        "ownerReferences": [{"apiVersion": "fleetflow.io/v1alpha1", "kind": "DeviceFleet",
                                             "name": "cold", "uid": owner["uid"], "controller": True}]},
           "spec": {"replicas": 1, "template": {"spec": {"containers": [{"name": "gateway", "image": "old"}]}}}}  # fmt: skip
    async with emulator.post("/apis/apps/v1/namespaces/ns1/deployments", json=old) as response:
        assert response.status == 201, await response.text()

    async with start_operator():
        await wait_until(lambda: emulator.get("apps/v1", "statefulsets", "ns1", "cold-gateway"), what="the StatefulSet")
        await wait_until(lambda: len(cr(emulator, "devicefleets", "cold").get("status", {}).get("components", [])) > 2,
                         what="a few reconciles")  # fmt: skip
        assert emulator.get("apps/v1", "deployments", "ns1", "cold-gateway"), "kept while the StatefulSet is not ready"

        await mark_ready(emulator, "apps/v1", "statefulsets", "cold-gateway")
        await wait_until(lambda: emulator.get("apps/v1", "deployments", "ns1", "cold-gateway") is None,
                         what="the old Deployment to go")  # fmt: skip
