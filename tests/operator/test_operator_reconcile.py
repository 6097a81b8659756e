"""The real operator (kopf, in its own thread) against the emulated API server over HTTP."""

from typing import Any

from tests.operator.apiserver import ApiServerEmulator
from tests.operator.conftest import OperatorStarter, wait_until
from tests.operator.variants import fleet_doc, pipeline_doc

DF = "fleetflow.io/v1alpha1"


async def create(emulator: ApiServerEmulator, doc: dict[str, Any]) -> None:
    plural = {"DeviceFleet": "devicefleets", "Pipeline": "pipelines"}[doc["kind"]]
    async with emulator.post(f"/apis/{DF}/namespaces/{doc['metadata']['namespace']}/{plural}", json=doc) as r:
        assert r.status == 201, await r.text()


def condition(obj: dict[str, Any] | None, kind: str) -> dict[str, Any]:
    for cond in ((obj or {}).get("status") or {}).get("conditions") or []:
        if cond["type"] == kind:
            return dict(cond)
    return {}


async def test_a_fleet_gets_its_children_with_owner_references(
    apiserver: tuple[ApiServerEmulator, str], start_operator: OperatorStarter
) -> None:
    emulator, _ = apiserver
    async with start_operator():
        await create(emulator, fleet_doc(gateway={"replicas": 2}))
        deployment = await wait_until(lambda: emulator.get("apps/v1", "deployments", "ns1", "cold-gateway"),
                                      what="the gateway Deployment")  # fmt: skip
        fleet = emulator.get(DF, "devicefleets", "ns1", "cold")
        assert fleet is not None
        assert deployment["spec"]["replicas"] == 2
        (owner,) = deployment["metadata"]["ownerReferences"]
        assert owner["uid"] == fleet["metadata"]["uid"] and owner["kind"] == "DeviceFleet"
        await wait_until(lambda: condition(emulator.get(DF, "devicefleets", "ns1", "cold"), "Ready"), what="Ready")
        print(emulator.get(DF, "devicefleets", "ns1", "cold"))
