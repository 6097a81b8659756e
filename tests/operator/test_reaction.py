"""The operator reacts in seconds, not at its resync: here the resync is a minute, so only the watches on the
children and on the operator's own annotations can make these tests pass."""

import time
from typing import Any

from fleetflow.operator.options import OperatorOptions
from tests.operator.apiserver import ApiServerEmulator
from tests.operator.conftest import OperatorStarter, wait_until
from tests.operator.test_operator_reconcile import Api, create, delete, has_condition, mark_ready, patch
from tests.operator.variants import fleet_doc, pipeline_doc
from tests.support.natsserver import NatsServer

SLOW_RESYNC = OperatorOptions(image="fleetflow:test", resync_seconds=60)
WITHIN = 5.0  # seconds from the cause to the operator's answer, as the issue asks


async def settled(emulator: ApiServerEmulator, quiet_for: float = 0.5) -> None:
    """Wait until the operator has sent no request for `quiet_for` seconds."""
    seen = [len(emulator._requests), time.monotonic()]

    def quiet() -> bool:
        if len(emulator._requests) != seen[0]:
            seen[:] = [len(emulator._requests), time.monotonic()]
        return time.monotonic() - seen[1] >= quiet_for

    await wait_until(quiet, timeout=10, what="the operator to go quiet")


async def test_a_deleted_child_is_back_within_seconds(apiserver: Api, start_operator: OperatorStarter) -> None:
    emulator, _ = apiserver
    async with start_operator(options=SLOW_RESYNC):
        await create(emulator, fleet_doc())
        await create(emulator, pipeline_doc())
        await wait_until(lambda: emulator.get("apps/v1", "statefulsets", "ns1", "cold-gateway"), what="the gateway")
        await wait_until(lambda: emulator.get("apps/v1", "statefulsets", "ns1", "store-processor"), what="processor")

        await delete(emulator, "/apis/apps/v1/namespaces/ns1/statefulsets/cold-gateway")
        await delete(emulator, "/apis/apps/v1/namespaces/ns1/statefulsets/store-processor")
        await delete(emulator, "/api/v1/namespaces/ns1/configmaps/cold-gateway-config")
        await wait_until(lambda: emulator.get("apps/v1", "statefulsets", "ns1", "cold-gateway"), timeout=WITHIN,
                         what="the deleted gateway Deployment to be back")  # fmt: skip
        await wait_until(lambda: emulator.get("apps/v1", "statefulsets", "ns1", "store-processor"), timeout=WITHIN,
                         what="the deleted processor StatefulSet to be back")  # fmt: skip
        await wait_until(lambda: emulator.get("v1", "configmaps", "ns1", "cold-gateway-config"), timeout=WITHIN,
                         what="the deleted ConfigMap to be back")  # fmt: skip


async def test_ready_is_reported_within_seconds_of_the_pods(
    apiserver: Api, start_operator: OperatorStarter, nats_server: NatsServer
) -> None:
    emulator, _ = apiserver
    async with start_operator(options=SLOW_RESYNC):
        await create(emulator, fleet_doc(nats={"external": {"url": nats_server.url}}, gateway={"replicas": 2}))
        waiting = await wait_until(lambda: has_condition(emulator, "devicefleets", "cold", "Ready", "False"))
        assert "gateway: 0/2 replicas ready" in waiting["message"]
        await mark_ready(emulator, "apps/v1", "statefulsets", "cold-gateway")
        await mark_ready(emulator, "apps/v1", "deployments", "cold-api")  # the application API
        await wait_until(lambda: has_condition(emulator, "devicefleets", "cold", "Ready", "True"), what="Ready")

        started = time.monotonic()
        await emulator.write("apps/v1", "statefulsets", "ns1", "cold-gateway", {"status": {"readyReplicas": 1}})
        lost = await wait_until(lambda: has_condition(emulator, "devicefleets", "cold", "Ready", "False"),
                                timeout=WITHIN, what="a gateway pod's loss in Ready")  # fmt: skip
        assert "gateway: 1/2 replicas ready" in lost["message"]
        await mark_ready(emulator, "apps/v1", "statefulsets", "cold-gateway")
        await wait_until(lambda: has_condition(emulator, "devicefleets", "cold", "Ready", "True"), timeout=WITHIN,
                         what="Ready again once the pod is back")  # fmt: skip
        assert time.monotonic() - started < 2 * WITHIN


async def test_pausing_and_resuming_take_effect_within_seconds(apiserver: Api, start_operator: OperatorStarter) -> None:
    emulator, _ = apiserver
    async with start_operator(options=SLOW_RESYNC):
        await create(emulator, fleet_doc())
        await wait_until(lambda: has_condition(emulator, "devicefleets", "cold", "Paused", "False"), what="reconciled")

        await patch(emulator, "devicefleets", "cold", {"metadata": {"annotations": {"fleetflow.io/paused": "true"}}})
        await wait_until(lambda: has_condition(emulator, "devicefleets", "cold", "Paused", "True"), timeout=WITHIN,
                         what="the pause to be reported")  # fmt: skip
        await delete(emulator, "/apis/apps/v1/namespaces/ns1/statefulsets/cold-gateway")

        await patch(emulator, "devicefleets", "cold", {"metadata": {"annotations": {"fleetflow.io/paused": None}}})
        await wait_until(lambda: has_condition(emulator, "devicefleets", "cold", "Paused", "False"), timeout=WITHIN,
                         what="the resume to be reported")  # fmt: skip
        await wait_until(lambda: emulator.get("apps/v1", "statefulsets", "ns1", "cold-gateway"), timeout=WITHIN,
                         what="the gateway deleted while paused to be back")  # fmt: skip


async def test_a_changed_fleet_reaches_its_pipelines_within_seconds(
    apiserver: Api, start_operator: OperatorStarter
) -> None:
    emulator, _ = apiserver
    async with start_operator(options=SLOW_RESYNC):
        await create(emulator, fleet_doc())
        await create(emulator, pipeline_doc())
        await wait_until(lambda: emulator.get("v1", "configmaps", "ns1", "store-writer-config"), what="the writer")
        await settled(emulator)  # the start-up reconciles are over: only a reaction to the change can follow it

        await patch(emulator, "devicefleets", "cold", {"spec": {"streams": {"maxAge": "2d"}}})

        def followed(name: str) -> bool:
            config = emulator.get("v1", "configmaps", "ns1", name) or {"data": {}}
            return "maxAge: 2d" in config["data"].get("config.yaml", "")

        await wait_until(lambda: followed("store-processor-config") and followed("store-writer-config"),
                         timeout=WITHIN, what="the pipeline's ConfigMaps to carry the fleet's new retention")  # fmt: skip


async def test_a_problem_to_act_on_is_a_warning_event_once(apiserver: Api, start_operator: OperatorStarter) -> None:
    emulator, _ = apiserver
    async with start_operator():  # a resync every 0.5 s: the same problem is found again and again
        await create(emulator, fleet_doc(auth={"secretRef": {"name": "tokens", "key": "secret"}}))

        def warnings() -> list[dict[str, Any]]:
            return [e for e in emulator.items("v1", "events", "ns1") if e.get("type") == "Warning"]

        (warning,) = await wait_until(warnings, what="a Warning Event")
        assert warning["reason"] == "DeviceSecretMissing"
        assert "spec.auth.secretRef.name = 'tokens'" in warning["message"]
        assert warning["involvedObject"]["name"] == "cold"
        seen = reconciles(emulator)
        await wait_until(lambda: reconciles(emulator) >= seen + 4, what="four more reconciles")
        assert len(warnings()) == 1, "one Warning per new problem, not one per retry"


def reconciles(emulator: ApiServerEmulator) -> int:
    """Each reconcile starts by reading its resource afresh."""
    return sum(1 for r in emulator._requests if str(r.method).endswith("GET") and r.url.path.endswith("/cold"))
