"""The device Secret on day 2: every device token derives from it, so once a fleet has run it is never silently
replaced; a rotation is explicit, keeps the old key accepted until it is retired, and rolls the gateways.

The resync is a minute here: what happens within seconds is the operator's reaction to the change itself."""

import base64
from typing import Any

from fleetflow.operator.device_secret import HASH_ANNOTATION, RETIRE_ANNOTATION, ROTATE_ANNOTATION, ROTATION_ANNOTATION
from fleetflow.operator.options import OperatorOptions
from tests.operator.apiserver import ApiServerEmulator
from tests.operator.conftest import OperatorStarter, wait_until
from tests.operator.test_operator_reconcile import Api, cr, create, delete, has_condition, patch
from tests.operator.test_reaction import reconciles, settled
from tests.operator.variants import fleet_doc

SLOW_RESYNC = OperatorOptions(image="fleetflow:test", resync_seconds=60)
FAST_RESYNC = OperatorOptions(image="fleetflow:test", resync_seconds=0.3)
WITHIN = 5.0
SECRET = "cold-device-secret"


def secret(emulator: ApiServerEmulator, name: str = SECRET) -> dict[str, Any] | None:
    return emulator.get("v1", "secrets", "ns1", name)


def keys(emulator: ApiServerEmulator, name: str = SECRET) -> dict[str, str]:
    return dict((secret(emulator, name) or {}).get("data") or {})


def gateway_hash(emulator: ApiServerEmulator) -> str | None:
    found = emulator.get("apps/v1", "statefulsets", "ns1", "cold-gateway") or {}
    return found.get("spec", {}).get("template", {}).get("metadata", {}).get("annotations", {}).get(HASH_ANNOTATION)


def recorded(emulator: ApiServerEmulator) -> dict[str, Any]:
    return dict((cr(emulator, "devicefleets", "cold").get("status") or {}).get("deviceSecret") or {})


def warnings(emulator: ApiServerEmulator, reason: str) -> list[dict[str, Any]]:
    return [e for e in emulator.items("v1", "events", "ns1") if e.get("type") == "Warning" and e["reason"] == reason]


async def create_secret(emulator: ApiServerEmulator, name: str, data: dict[str, str], **meta: Any) -> None:
    doc = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": "ns1", **meta}, "data": data}
    async with emulator.post("/api/v1/namespaces/ns1/secrets", json=doc) as response:
        assert response.status == 201, await response.text()


async def annotate(emulator: ApiServerEmulator, key: str, value: str | None) -> None:
    await patch(emulator, "devicefleets", "cold", {"metadata": {"annotations": {key: value}}})


async def running_fleet(emulator: ApiServerEmulator) -> dict[str, str]:
    await create(emulator, fleet_doc())
    await wait_until(lambda: recorded(emulator) and gateway_hash(emulator), what="the fleet's first reconcile")
    return keys(emulator)


async def test_a_lost_device_secret_is_a_warning_and_a_condition_never_a_new_value(
    apiserver: Api, start_operator: OperatorStarter
) -> None:
    emulator, _ = apiserver
    async with start_operator(options=FAST_RESYNC):
        issued = await running_fleet(emulator)
        stored = secret(emulator)
        rolled_with = gateway_hash(emulator)
        await delete(emulator, f"/api/v1/namespaces/ns1/secrets/{SECRET}")

        missing = await wait_until(lambda: has_condition(emulator, "devicefleets", "cold", "Degraded", "True"),
                                   timeout=WITHIN, what="the loss in the conditions")  # fmt: skip
        assert missing["reason"] == "DeviceSecretMissing"
        assert f"Secret {SECRET!r} is gone" in missing["message"]
        assert f"kubectl annotate devicefleet/cold {ROTATE_ANNOTATION}=" in missing["message"], "the way out"
        (warning,) = await wait_until(lambda: warnings(emulator, "DeviceSecretMissing"), what="a Warning Event")
        assert warning["involvedObject"]["name"] == "cold"
        seen = reconciles(emulator)
        await wait_until(lambda: reconciles(emulator) >= seen + 4, what="four more reconciles")
        assert secret(emulator) is None, "re-created with a new value: every device's token would be refused"
        assert gateway_hash(emulator) == rolled_with, "the running gateways keep the key they have"
        assert len(warnings(emulator, "DeviceSecretMissing")) == 1

        # The admin restores the copy: the fleet is healthy again, and the gateways never restarted.
        assert stored is not None
        await create_secret(emulator, SECRET, stored["data"], labels=stored["metadata"]["labels"])
        await wait_until(lambda: has_condition(emulator, "devicefleets", "cold", "Degraded", "False"),
                         timeout=WITHIN, what="the restored Secret to clear the problem")  # fmt: skip
        assert keys(emulator) == issued
        assert gateway_hash(emulator) == rolled_with


async def test_a_rotation_keeps_the_old_key_accepted_until_it_is_retired_and_rolls_the_gateways(
    apiserver: Api, start_operator: OperatorStarter
) -> None:
    emulator, _ = apiserver
    async with start_operator(options=SLOW_RESYNC):
        old = (await running_fleet(emulator))["secret"]
        before = gateway_hash(emulator)
        await settled(emulator)

        await annotate(emulator, ROTATE_ANNOTATION, "2026-12")
        await wait_until(lambda: "secret.previous" in keys(emulator), timeout=WITHIN, what="the rotation")
        rotated = keys(emulator)
        assert rotated["secret.previous"] == old
        assert rotated["secret"] != old and len(base64.b64decode(base64.b64decode(rotated["secret"]))) == 32
        assert secret(emulator)["metadata"]["annotations"][ROTATION_ANNOTATION] == "2026-12"  # type: ignore[index]
        await wait_until(lambda: gateway_hash(emulator) not in (None, before), timeout=WITHIN, what="a gateway roll")
        await wait_until(lambda: recorded(emulator).get("previousKeyAccepted") is True, what="the overlap reported")
        assert recorded(emulator)["rotation"] == "2026-12"

        # Level-triggered, yet done once: more reconciles leave the rotated keys alone.
        seen = reconciles(emulator)
        await patch(emulator, "devicefleets", "cold", {"spec": {"gateway": {"replicas": 2}}})
        await wait_until(lambda: reconciles(emulator) > seen, what="another reconcile")
        await settled(emulator)
        assert keys(emulator) == rotated, "rotated twice: the old key would be lost during its overlap"

        # A retire annotation naming another rotation does nothing; naming this one ends the overlap.
        await annotate(emulator, RETIRE_ANNOTATION, "2025-01")
        await settled(emulator)
        assert "secret.previous" in keys(emulator)
        overlap_hash = gateway_hash(emulator)
        await annotate(emulator, RETIRE_ANNOTATION, "2026-12")
        await wait_until(lambda: "secret.previous" not in keys(emulator), timeout=WITHIN, what="the retirement")
        assert keys(emulator)["secret"] == rotated["secret"]
        await wait_until(lambda: gateway_hash(emulator) != overlap_hash, timeout=WITHIN, what="the gateways to roll")
        await wait_until(lambda: recorded(emulator).get("previousKeyAccepted") is False, what="the end reported")


async def test_an_explicit_rotation_replaces_a_lost_secret(apiserver: Api, start_operator: OperatorStarter) -> None:
    emulator, _ = apiserver
    async with start_operator(options=SLOW_RESYNC):
        old = (await running_fleet(emulator))["secret"]
        await delete(emulator, f"/api/v1/namespaces/ns1/secrets/{SECRET}")
        await wait_until(lambda: has_condition(emulator, "devicefleets", "cold", "Degraded", "True"), timeout=WITHIN,
                         what="the loss reported")  # fmt: skip

        await annotate(emulator, ROTATE_ANNOTATION, "after-loss")
        await wait_until(lambda: secret(emulator), timeout=WITHIN, what="a new Secret")
        assert keys(emulator)["secret"] != old and "secret.previous" not in keys(emulator), "nothing to overlap with"
        await wait_until(lambda: has_condition(emulator, "devicefleets", "cold", "Degraded", "False"), timeout=WITHIN,
                         what="the problem cleared")  # fmt: skip


async def test_a_named_secret_edited_by_its_owner_rolls_the_gateways_and_is_never_rotated_by_the_operator(
    apiserver: Api, start_operator: OperatorStarter
) -> None:
    emulator, _ = apiserver
    value = base64.b64encode(b"a fleet secret of the admin's own").decode()
    await create_secret(emulator, "tokens", {"key": value})
    async with start_operator(options=SLOW_RESYNC):
        await create(emulator, fleet_doc(auth={"secretRef": {"name": "tokens", "key": "key"}}))
        await wait_until(lambda: gateway_hash(emulator), what="the gateway")
        before = gateway_hash(emulator)

        new = base64.b64encode(b"the admin's next fleet secret").decode()
        await emulator.write("v1", "secrets", "ns1", "tokens", {"data": {"key": new, "key.previous": value}})
        await wait_until(lambda: gateway_hash(emulator) != before, timeout=WITHIN, what="the gateways to roll")

        await annotate(emulator, ROTATE_ANNOTATION, "x")
        refused = await wait_until(lambda: has_condition(emulator, "devicefleets", "cold", "Degraded", "True"),
                                   timeout=WITHIN, what="the annotation refused")  # fmt: skip
        assert refused["reason"] == "RotationNotApplicable"
        assert "spec.auth.secretRef.name = 'tokens'" in refused["message"]
        assert keys(emulator, "tokens") == {"key": new, "key.previous": value}
