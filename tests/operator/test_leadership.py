"""Two operator replicas, one Lease: exactly one reconciles, and the other takes over when it goes.

Which replica acted is visible in what it writes: each runs the services with its own image, so a gateway
Deployment that ever carried the standby's image would mean the standby reconciled."""

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest
from kubernetes import client as k8s_client

from fleetflow.operator.kube import KubeApi
from fleetflow.operator.leadership import Leadership, LeadershipLost, LeaseSettings
from fleetflow.operator.main import lead, operate
from fleetflow.operator.options import OperatorOptions
from tests.operator.apiserver import ApiServerEmulator
from tests.operator.conftest import OperatorStarter, wait_until
from tests.operator.test_operator_reconcile import Api, create
from tests.operator.test_reaction import reconciles
from tests.operator.variants import fleet_doc

LEASE_NS, LEASE_NAME = "default", "fleetflow-operator"
WITHIN = 5.0


def lease(identity: str) -> LeaseSettings:
    return LeaseSettings(LEASE_NS, LEASE_NAME, identity, duration=2.0, renew_deadline=1.0, renew_every=0.1)


def replica(image: str) -> OperatorOptions:
    return OperatorOptions(image=image, resync_seconds=0.5)


def holder(emulator: ApiServerEmulator) -> str | None:
    found = emulator.get("coordination.k8s.io/v1", "leases", LEASE_NS, LEASE_NAME)
    return (found or {}).get("spec", {}).get("holderIdentity")


def gateway_images(emulator: ApiServerEmulator) -> set[str]:
    """Every image the gateway Deployment ever had, from the API server's history of writes."""
    return {
        container["image"]
        for _, rkey, event in emulator.history
        if rkey == ("apps", "v1", "statefulsets") and event["object"]["metadata"]["name"] == "cold-gateway"
        for container in event["object"]["spec"]["template"]["spec"]["containers"]
    }


def gateway_image(emulator: ApiServerEmulator) -> str | None:
    found = emulator.get("apps/v1", "statefulsets", "ns1", "cold-gateway")
    return found["spec"]["template"]["spec"]["containers"][0]["image"] if found else None


@contextlib.asynccontextmanager
async def kube(url: str) -> AsyncIterator[KubeApi]:
    api = KubeApi(k8s_client.Configuration(host=url))
    try:
        yield api
    finally:
        await api.close()


async def test_of_two_operators_only_the_lease_holder_reconciles_and_the_other_takes_over_when_it_stops(
    apiserver: Api, start_operator: OperatorStarter
) -> None:
    emulator, _ = apiserver
    async with contextlib.AsyncExitStack() as first:
        await first.enter_async_context(start_operator(options=replica("fleetflow:a"), lease=lease("a")))
        assert holder(emulator) == "a"
        async with start_operator(options=replica("fleetflow:b"), lease=lease("b"), wait_ready=False):
            await create(emulator, fleet_doc())
            await wait_until(lambda: gateway_image(emulator) == "fleetflow:a", what="the leader's gateway")
            seen = reconciles(emulator)
            await wait_until(lambda: reconciles(emulator) >= seen + 4, what="four resyncs")  # 0.5 s each
            assert holder(emulator) == "a"
            assert gateway_images(emulator) == {"fleetflow:a"}, "the standby must not have reconciled"

            started = time.monotonic()
            await first.aclose()  # the leader stops and hands the Lease back
            await wait_until(lambda: holder(emulator) == "b", timeout=WITHIN, what="the standby to take the Lease")
            await wait_until(lambda: gateway_image(emulator) == "fleetflow:b", timeout=WITHIN,
                             what="the new leader to reconcile")  # fmt: skip
            assert time.monotonic() - started < WITHIN


async def test_a_leader_that_died_holding_the_lease_is_replaced_once_the_lease_expires(
    apiserver: Api, start_operator: OperatorStarter
) -> None:
    emulator, url = apiserver
    async with kube(url) as api:
        await api.create({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                          "metadata": {"name": LEASE_NAME, "namespace": LEASE_NS},
                          "spec": {"holderIdentity": "crashed", "leaseDurationSeconds": 1,
                                   "renewTime": "2026-01-01T00:00:00.000000Z", "leaseTransitions": 3}})  # fmt: skip
    await create(emulator, fleet_doc())
    started = time.monotonic()
    async with start_operator(options=replica("fleetflow:b"), lease=lease("b"), wait_ready=False):
        await wait_until(lambda: gateway_image(emulator) == "fleetflow:b", timeout=WITHIN, what="the new leader")
        waited = time.monotonic() - started
        spec = emulator.get("coordination.k8s.io/v1", "leases", LEASE_NS, LEASE_NAME)["spec"]  # type: ignore[index]
    # The dead holder's renewTime means nothing to another node's clock: the candidate waits the lease's
    # duration from when it first saw the record, then takes it.
    assert waited >= 1.0, f"took over after {waited:.2f} s, before the 1 s lease had expired"
    assert spec["holderIdentity"] == "b"
    assert spec["leaseTransitions"] == 4


async def test_of_two_candidates_racing_for_a_free_lease_exactly_one_wins(apiserver: Api) -> None:
    _, url = apiserver
    async with kube(url) as api:
        candidates = [Leadership(api, lease(name)) for name in ("a", "b")]
        results = await asyncio.gather(*(asyncio.wait_for(c.acquire(), 1.0) for c in candidates),
                                       return_exceptions=True)  # fmt: skip
    winners = [c.settings.identity for c, r in zip(candidates, results, strict=True) if r is None]
    assert len(winners) == 1, f"winners: {winners}; results: {results}"
    assert [c.leading for c in candidates].count(True) == 1


async def test_a_leader_whose_lease_was_taken_stops_acting(apiserver: Api) -> None:
    emulator, url = apiserver
    acting_cancelled = asyncio.Event()

    async def acting() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            acting_cancelled.set()

    async with kube(url) as api:
        leadership = Leadership(api, lease("a"))
        await leadership.acquire()
        leading = asyncio.create_task(lead(leadership, acting))
        await asyncio.sleep(0.3)
        assert not leading.done()
        await emulator.write("coordination.k8s.io/v1", "leases", LEASE_NS, LEASE_NAME,
                             {"spec": {"holderIdentity": "usurper"}})  # fmt: skip
        with pytest.raises(LeadershipLost, match="held by usurper"):
            await asyncio.wait_for(leading, WITHIN)
    assert acting_cancelled.is_set(), "kopf must be stopped when leadership is lost"
    assert not leadership.leading


async def test_a_leader_that_cannot_renew_stops_acting_before_the_lease_expires(apiserver: Api) -> None:
    emulator, url = apiserver
    settings = lease("a")
    async with kube(url) as api:
        leadership = Leadership(api, settings)
        await leadership.acquire()
        emulator.failures[("GET", "leases")] = 1000  # the API server stops answering this replica
        started = time.monotonic()
        with pytest.raises(LeadershipLost, match="not renewed"):
            await asyncio.wait_for(leadership.hold(), WITHIN)
        stopped_after = time.monotonic() - started
    assert settings.renew_deadline <= stopped_after < settings.duration, stopped_after


@pytest.mark.parametrize("value", ["fleetflow", "/lease", "ns/", "a/b/c"])
def test_a_malformed_lease_setting_names_the_value_and_the_form(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("FLEETFLOW_OPERATOR_LEASE", value)
    with pytest.raises(ValueError, match=r"FLEETFLOW_OPERATOR_LEASE = .*expected <namespace>/<lease name>"):
        LeaseSettings.from_environment()


def test_without_a_lease_setting_the_operator_acts_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLEETFLOW_OPERATOR_LEASE", raising=False)
    assert LeaseSettings.from_environment() is None
    monkeypatch.setenv("FLEETFLOW_OPERATOR_LEASE", "fleetflow/ff-operator")
    monkeypatch.setenv("FLEETFLOW_OPERATOR_POD_NAME", "ff-operator-7d9-x2")
    found = LeaseSettings.from_environment()
    assert found is not None and (found.namespace, found.name) == ("fleetflow", "ff-operator")
    assert found.identity.startswith("ff-operator-7d9-x2_")


def test_lease_timings_that_would_let_two_lead_are_refused() -> None:
    with pytest.raises(ValueError, match="expected 0 < renew_every < renew_deadline < duration"):
        LeaseSettings("ns", "l", "a", duration=5, renew_deadline=10, renew_every=1)


async def test_a_standby_stops_when_asked_like_a_leader(apiserver: Api) -> None:
    _, url = apiserver
    async with kube(url) as api:
        holder_of_it = Leadership(api, LeaseSettings(LEASE_NS, LEASE_NAME, "a", duration=60, renew_deadline=30))
        await holder_of_it.acquire()
    stop = asyncio.Event()
    standing_by = asyncio.create_task(
        operate(
            ["ns1"],
            options=replica("fleetflow:b"),
            configuration=k8s_client.Configuration(host=url),
            lease=lease("b"),
            stop_flag=stop,
        )
    )
    await asyncio.sleep(0.3)
    assert not standing_by.done(), "standing by while another holds the Lease"
    stop.set()
    await asyncio.wait_for(standing_by, WITHIN)
