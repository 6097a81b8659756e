"""The real operator (kopf, in its own thread) against the emulated API server over HTTP, and a real
nats-server where streams are involved."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import nats
import pytest
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from fleetflow.processor.compiler import compile_pipeline
from tests.operator.apiserver import ApiServerEmulator
from tests.operator.conftest import OperatorStarter, wait_until
from tests.operator.variants import fleet_doc, pipeline_doc
from tests.support.natsserver import NatsServer

CR = "fleetflow.io/v1alpha1"
PLURALS = {"DeviceFleet": "devicefleets", "Pipeline": "pipelines"}
FLEET_STREAMS = ["ff-cold-telemetry", "ff-cold-commands", "ff-cold-alerts", "ff-cold-deadletter"]
Api = tuple[ApiServerEmulator, str]


async def create(emulator: ApiServerEmulator, doc: dict[str, Any]) -> None:
    path = f"/apis/{CR}/namespaces/{doc['metadata']['namespace']}/{PLURALS[doc['kind']]}"
    async with emulator.post(path, json=doc) as response:
        assert response.status == 201, await response.text()


async def patch(emulator: ApiServerEmulator, plural: str, name: str, body: dict[str, Any], ns: str = "ns1") -> None:
    headers = {"Content-Type": "application/merge-patch+json"}
    async with emulator.patch(f"/apis/{CR}/namespaces/{ns}/{plural}/{name}", json=body, headers=headers) as response:
        assert response.status == 200, await response.text()


async def delete(emulator: ApiServerEmulator, path: str) -> None:
    async with emulator.delete(path) as response:
        assert response.status == 200, await response.text()


def cr(emulator: ApiServerEmulator, plural: str, name: str, ns: str = "ns1") -> dict[str, Any]:
    return emulator.get(CR, plural, ns, name) or {}


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any]:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond["type"] == kind:
            return dict(cond)
    return {}


def has_condition(emulator: ApiServerEmulator, plural: str, name: str, kind: str, status: str, ns: str = "ns1") -> Any:
    found = condition(cr(emulator, plural, name, ns), kind)
    return found if found.get("status") == status else None


async def mark_ready(emulator: ApiServerEmulator, api_version: str, plural: str, name: str, ns: str = "ns1") -> None:
    """What the Deployment and StatefulSet controllers would write once every pod is ready."""
    obj = emulator.get(api_version, plural, ns, name)
    assert obj is not None, f"{plural} {name} does not exist"
    replicas = obj["spec"].get("replicas", 1)
    status = {"observedGeneration": obj["metadata"]["generation"], "replicas": replicas,
              "readyReplicas": replicas, "updatedReplicas": replicas, "availableReplicas": replicas}  # fmt: skip
    await emulator.write(api_version, plural, ns, name, {"status": status})


@asynccontextmanager
async def jetstream(server: NatsServer) -> AsyncIterator[JetStreamContext]:
    nc = await nats.connect(server.url)
    try:
        yield nc.jetstream()
    finally:
        await nc.close()


async def stream_exists(js: JetStreamContext, name: str) -> bool:
    try:
        await js.stream_info(name)
    except NotFoundError:
        return False
    return True


async def test_create_builds_the_children_and_turns_ready_once_they_are(
    apiserver: Api, start_operator: OperatorStarter, nats_server: NatsServer
) -> None:
    emulator, _ = apiserver
    async with start_operator():
        await create(emulator, fleet_doc(nats={"external": {"url": nats_server.url}}, gateway={"replicas": 2}))
        await create(emulator, pipeline_doc())
        gateway = await wait_until(lambda: emulator.get("apps/v1", "statefulsets", "ns1", "cold-gateway"),
                                   what="the gateway Deployment")  # fmt: skip
        assert gateway["spec"]["replicas"] == 2
        await wait_until(lambda: emulator.get("apps/v1", "deployments", "ns1", "store-writer"), what="the writer")
        processor = emulator.get("apps/v1", "statefulsets", "ns1", "store-processor")
        assert processor is not None and processor["spec"]["replicas"] == 1

        await wait_until(lambda: emulator.get("policy/v1", "poddisruptionbudgets", "ns1", "cold-gateway"), what="PDB")
        await wait_until(lambda: emulator.get("v1", "configmaps", "ns1", "store-writer-config"), what="writer config")
        fleet_uid = cr(emulator, "devicefleets", "cold")["metadata"]["uid"]
        pipeline_uid = cr(emulator, "pipelines", "store")["metadata"]["uid"]
        fleet_children = [("v1", "configmaps", "cold-gateway-config"), ("v1", "secrets", "cold-device-secret"),
                          ("v1", "services", "cold-gateway"), ("policy/v1", "poddisruptionbudgets", "cold-gateway")]  # fmt: skip
        for api_version, plural, name in fleet_children:
            child = emulator.get(api_version, plural, "ns1", name)
            assert child is not None, f"{plural} {name} missing"
            assert child["metadata"]["ownerReferences"][0]["uid"] == fleet_uid
        assert emulator.get("apps/v1", "statefulsets", "ns1", "cold-nats") is None, "external NATS: none managed"
        for api_version, plural, name in [("v1", "configmaps", "store-processor-config"),
                                          ("v1", "configmaps", "store-writer-config"),
                                          ("apps/v1", "statefulsets", "store-processor")]:  # fmt: skip
            child = emulator.get(api_version, plural, "ns1", name)
            assert child is not None and child["metadata"]["ownerReferences"][0]["uid"] == pipeline_uid

        waiting = await wait_until(lambda: has_condition(emulator, "devicefleets", "cold", "Ready", "False"))
        assert waiting["reason"] == "ComponentsNotReady" and "gateway: 0/2 replicas ready" in waiting["message"]
        async with jetstream(nats_server) as js:
            for name in FLEET_STREAMS:
                assert await stream_exists(js, name), f"stream {name} was not provisioned"

            async def consumer_max_deliver() -> int | None:
                try:
                    return (await js.consumer_info("ff-cold-telemetry", "processor-store-0")).config.max_deliver
                except NotFoundError:
                    return None

            assert await wait_until(consumer_max_deliver, what="the processor's durable consumer") == 5

        await mark_ready(emulator, "apps/v1", "statefulsets", "cold-gateway")
        await wait_until(lambda: emulator.get("apps/v1", "deployments", "ns1", "cold-api"), what="the API Deployment")
        await mark_ready(emulator, "apps/v1", "deployments", "cold-api")
        ready = await wait_until(lambda: has_condition(emulator, "devicefleets", "cold", "Ready", "True"), what="Ready")
        assert ready["reason"] == "AllComponentsReady"
        status = cr(emulator, "devicefleets", "cold")["status"]
        assert status["observedGeneration"] == 1
        assert status["gateway"]["readyReplicas"] == 2
        assert status["gateway"]["endpoints"]["http"] == "http://cold-gateway.ns1.svc:8080"
        assert {s["name"]: s["state"] for s in status["streams"]} == dict.fromkeys(FLEET_STREAMS, "Ready")
        assert {c["name"]: c["ready"] for c in status["components"]} == {"streams": True, "gateway": True,
                                                                         "appapi": True}  # fmt: skip
        assert status["gateway"]["endpoints"]["api"] == "http://cold-api.ns1.svc:8090"
        for api_version, plural, name in [("v1", "configmaps", "cold-api-config"), ("v1", "secrets", "cold-api-keys"),
                                          ("v1", "services", "cold-api")]:  # fmt: skip
            child = emulator.get(api_version, plural, "ns1", name)
            assert child is not None and child["metadata"]["ownerReferences"][0]["uid"] == fleet_uid, name

        await mark_ready(emulator, "apps/v1", "statefulsets", "store-processor")
        await mark_ready(emulator, "apps/v1", "deployments", "store-writer")
        await wait_until(lambda: has_condition(emulator, "pipelines", "store", "Ready", "True"), what="pipeline Ready")
        assert cr(emulator, "pipelines", "store")["status"]["observedGeneration"] == 1


async def test_updates_to_replicas_retention_and_steps_reach_the_children(
    apiserver: Api, start_operator: OperatorStarter, nats_server: NatsServer
) -> None:
    emulator, _ = apiserver
    async with start_operator():
        await create(emulator, fleet_doc(nats={"external": {"url": nats_server.url}}, streams={"partitions": 2}))
        await create(emulator, pipeline_doc())
        await wait_until(lambda: emulator.get("apps/v1", "statefulsets", "ns1", "store-processor"), what="processor")
        config_before = emulator.get("v1", "configmaps", "ns1", "store-processor-config")

        await patch(
            emulator, "devicefleets", "cold", {"spec": {"gateway": {"replicas": 3}, "streams": {"maxAge": "1d"}}}
        )
        step = {"name": "warm", "filter": {"condition": "metrics.temperature_c > 0.0"}}
        await patch(emulator, "pipelines", "store", {"spec": {"steps": [step], "processor": {"replicas": 2}}})

        def gateway_replicas() -> Any:
            return (
                (emulator.get("apps/v1", "statefulsets", "ns1", "cold-gateway") or {}).get("spec", {}).get("replicas")
            )

        await wait_until(lambda: gateway_replicas() == 3, what="3 gateway replicas")
        await wait_until(lambda: emulator.get("apps/v1", "statefulsets", "ns1", "store-processor")["spec"]["replicas"] == 2,
                         what="2 processor replicas")  # fmt: skip
        config_after = emulator.get("v1", "configmaps", "ns1", "store-processor-config")
        assert config_before is not None and config_after is not None
        assert "metrics.temperature_c > 0.0" in config_after["data"]["config.yaml"]
        assert config_after["data"] != config_before["data"]
        await wait_until(lambda: cr(emulator, "devicefleets", "cold")["status"]["observedGeneration"] == 2,
                         what="observedGeneration 2")  # fmt: skip

        async with jetstream(nats_server) as js:

            async def followed() -> bool:
                info = await js.stream_info("ff-cold-telemetry")
                try:
                    await js.consumer_info("ff-cold-telemetry", "processor-store-1")
                except NotFoundError:
                    return False
                return info.config.max_age == 86400

            await wait_until(followed, what="the stream's new max age and the second processor consumer")


async def test_a_deleted_or_edited_child_comes_back(apiserver: Api, start_operator: OperatorStarter) -> None:
    emulator, _ = apiserver
    async with start_operator():
        await create(emulator, fleet_doc())
        original = await wait_until(lambda: emulator.get("v1", "configmaps", "ns1", "cold-gateway-config"),
                                    what="the gateway ConfigMap")  # fmt: skip
        await wait_until(lambda: emulator.get("apps/v1", "statefulsets", "ns1", "cold-gateway"), what="the Deployment")

        await delete(emulator, "/apis/apps/v1/namespaces/ns1/statefulsets/cold-gateway")
        await emulator.write("v1", "configmaps", "ns1", "cold-gateway-config", {"data": {"config.yaml": "edited"}})
        await emulator.write("apps/v1", "statefulsets", "ns1", "cold-nats", {"spec": {"replicas": 7}})

        await wait_until(lambda: emulator.get("apps/v1", "statefulsets", "ns1", "cold-gateway"), what="it to return")
        await wait_until(lambda: emulator.get("v1", "configmaps", "ns1", "cold-gateway-config")["data"] == original["data"],
                         what="the ConfigMap's data to return")  # fmt: skip
        await wait_until(lambda: emulator.get("apps/v1", "statefulsets", "ns1", "cold-nats")["spec"]["replicas"] == 1,
                         what="NATS back to 1 replica")  # fmt: skip

        def described() -> list[str]:
            return [e.get("message", "") for e in emulator.items("v1", "events", "ns1")
                    if e.get("reason") == "Reconciled"]  # fmt: skip

        await wait_until(lambda: any("created StatefulSet cold-gateway" in m for m in described()),
                         what="an Event saying the gateway StatefulSet was re-created")  # fmt: skip


async def test_a_paused_resource_is_left_alone_and_says_so(apiserver: Api, start_operator: OperatorStarter) -> None:
    emulator, _ = apiserver
    async with start_operator():
        await create(emulator, fleet_doc())
        await wait_until(lambda: has_condition(emulator, "devicefleets", "cold", "Paused", "False"))
        await patch(emulator, "devicefleets", "cold", {"metadata": {"annotations": {"fleetflow.io/paused": "true"}}})
        paused = await wait_until(lambda: has_condition(emulator, "devicefleets", "cold", "Paused", "True"))
        assert paused["reason"] == "PausedByAnnotation"
        assert 'fleetflow.io/paused is "true"' in paused["message"]

        await patch(emulator, "devicefleets", "cold", {"spec": {"gateway": {"replicas": 4}}})
        await delete(emulator, "/apis/apps/v1/namespaces/ns1/statefulsets/cold-gateway")
        await asyncio.sleep(1.5)  # three resync periods: long enough for the timer to have acted
        assert emulator.get("apps/v1", "statefulsets", "ns1", "cold-gateway") is None
        assert has_condition(emulator, "devicefleets", "cold", "Paused", "True")

        await patch(emulator, "devicefleets", "cold", {"metadata": {"annotations": {"fleetflow.io/paused": None}}})
        back = await wait_until(lambda: emulator.get("apps/v1", "statefulsets", "ns1", "cold-gateway"), what="resume")
        assert back["spec"]["replicas"] == 4
        await wait_until(lambda: has_condition(emulator, "devicefleets", "cold", "Paused", "False"))


async def test_invalid_specs_are_reported_in_a_condition_naming_the_field(
    apiserver: Api, start_operator: OperatorStarter
) -> None:
    emulator, _ = apiserver
    async with start_operator(compile_pipeline=compile_pipeline):
        await create(emulator, fleet_doc(gateway={"replicas": 500}))
        ready = await wait_until(lambda: has_condition(emulator, "devicefleets", "cold", "Ready", "False"))
        assert ready["reason"] == "InvalidSpec"
        assert "spec.gateway.replicas = 500" in ready["message"] and "100" in ready["message"]
        assert has_condition(emulator, "devicefleets", "cold", "Degraded", "True")
        assert emulator.get("apps/v1", "statefulsets", "ns1", "cold-gateway") is None

        await patch(emulator, "devicefleets", "cold", {"spec": {"gateway": {"replicas": 2}}})
        await wait_until(lambda: emulator.get("apps/v1", "statefulsets", "ns1", "cold-gateway"), what="the fix applied")

        await create(emulator, pipeline_doc(steps=[{"name": "bad", "filter": {"condition": "metrics.x >"}}]))
        cel = await wait_until(lambda: has_condition(emulator, "pipelines", "store", "Ready", "False"))
        assert cel["reason"] == "InvalidSpec" and "spec.steps[0]" in cel["message"]

        await create(emulator, pipeline_doc(name="orphan", fleet="missing"))
        orphan = await wait_until(lambda: has_condition(emulator, "pipelines", "orphan", "Ready", "False"))
        assert orphan["reason"] == "FleetNotFound"
        assert "spec.fleetRef.name = 'missing'" in orphan["message"]


async def test_deleting_keeps_the_streams_unless_the_spec_asks(
    apiserver: Api, start_operator: OperatorStarter, nats_server: NatsServer
) -> None:
    emulator, _ = apiserver
    external = {"external": {"url": nats_server.url}}
    async with start_operator(), jetstream(nats_server) as js:
        await create(emulator, fleet_doc(nats=external))
        await create(emulator, fleet_doc(name="hot", nats=external, streams={"deleteOnRemoval": True}))
        await create(emulator, pipeline_doc(fleet="hot", delivery={"deleteOnRemoval": True}))
        await wait_until(lambda: stream_exists(js, "ff-cold-telemetry"), what="cold's streams")
        await wait_until(lambda: stream_exists(js, "ff-hot-store-out"), what="the pipeline's stream")

        await delete(emulator, f"/apis/{CR}/namespaces/ns1/pipelines/store")
        await wait_until(lambda: not cr(emulator, "pipelines", "store"), what="the pipeline to go")
        assert not await stream_exists(js, "ff-hot-store-out")
        assert [c.name async for c in _consumers(js, "ff-hot-telemetry")] == []

        await delete(emulator, f"/apis/{CR}/namespaces/ns1/devicefleets/cold")
        await delete(emulator, f"/apis/{CR}/namespaces/ns1/devicefleets/hot")
        await wait_until(lambda: not cr(emulator, "devicefleets", "cold") and not cr(emulator, "devicefleets", "hot"),
                         what="both fleets to go")  # fmt: skip
        assert await stream_exists(js, "ff-cold-telemetry"), "deleteOnRemoval is false: the data stays"
        for name in ["ff-hot-telemetry", "ff-hot-commands", "ff-hot-alerts", "ff-hot-deadletter"]:
            assert not await stream_exists(js, name)


async def _consumers(js: JetStreamContext, stream: str) -> AsyncIterator[Any]:
    for info in await js.consumers_info(stream):
        yield info


async def test_a_stream_deleted_behind_the_operators_back_is_recreated(
    apiserver: Api, start_operator: OperatorStarter, nats_server: NatsServer
) -> None:
    emulator, _ = apiserver
    async with start_operator(), jetstream(nats_server) as js:
        await create(emulator, fleet_doc(nats={"external": {"url": nats_server.url}}))
        for name in FLEET_STREAMS:
            await wait_until(lambda name=name: stream_exists(js, name), what=f"stream {name}")
        await js.delete_stream("ff-cold-telemetry")
        await js.delete_stream("ff-cold-alerts")
        await wait_until(lambda: stream_exists(js, "ff-cold-telemetry"), what="it to be re-created")
        await wait_until(lambda: stream_exists(js, "ff-cold-alerts"), what="the alerts stream to be re-created")
        info = await js.stream_info("ff-cold-telemetry")
        assert info.config.subject_transform is not None, "re-created with its full configuration"


async def test_an_existing_child_is_adopted_and_corrected(apiserver: Api, start_operator: OperatorStarter) -> None:
    emulator, _ = apiserver
    stray = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cold-gateway-config"}, "data": {"x": "y"}}
    async with emulator.post("/api/v1/namespaces/ns1/configmaps", json=stray) as response:
        assert response.status == 201
    async with start_operator():
        await create(emulator, fleet_doc())

        def adopted() -> bool:
            found = emulator.get("v1", "configmaps", "ns1", "cold-gateway-config") or {}
            return bool(found.get("metadata", {}).get("ownerReferences")) and "config.yaml" in found["data"]

        await wait_until(adopted, what="the stray ConfigMap to be patched and owned")


@pytest.mark.parametrize("watched", [["ns1"], None], ids=["one-namespace", "all-namespaces"])
async def test_the_operator_watches_the_namespaces_it_is_given(
    apiserver: Api, start_operator: OperatorStarter, watched: list[str] | None
) -> None:
    emulator, _ = apiserver
    async with start_operator(namespaces=watched or []):
        await create(emulator, fleet_doc(namespace="ns1"))
        await create(emulator, fleet_doc(namespace="ns2"))
        await wait_until(lambda: emulator.get("apps/v1", "statefulsets", "ns1", "cold-gateway"), what="ns1's gateway")
        if watched is None:
            await wait_until(lambda: emulator.get("apps/v1", "statefulsets", "ns2", "cold-gateway"), what="ns2's")
        else:
            await asyncio.sleep(1.0)  # two resync periods
            assert emulator.get("apps/v1", "statefulsets", "ns2", "cold-gateway") is None


async def test_transient_api_errors_are_retried_until_the_children_exist(
    apiserver: Api, start_operator: OperatorStarter
) -> None:
    emulator, _ = apiserver
    emulator.failures[("POST", "statefulsets")] = 5  # more than one reconcile's retries: kopf's backoff takes over
    emulator.failures[("PATCH", "devicefleets")] = 1
    async with start_operator():
        await create(emulator, fleet_doc())
        await wait_until(lambda: emulator.get("apps/v1", "statefulsets", "ns1", "cold-gateway"), timeout=10,
                         what="the gateway despite the failures")  # fmt: skip
        assert emulator.failed.count(("POST", "statefulsets")) == 5
        await wait_until(lambda: has_condition(emulator, "devicefleets", "cold", "Degraded", "False"),
                         what="no lingering problem")  # fmt: skip
