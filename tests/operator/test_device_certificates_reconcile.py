"""The real operator against the emulated API server, for a fleet whose devices may present X.509 certificates
(spec.gateway.tls.clientAuth): a missing device CA is a condition naming the field, the gateway gets the CA's one
key mounted, and a new device CA rolls the gateways, which read it at start."""

from typing import Any

from tests.operator.conftest import OperatorStarter, wait_until
from tests.operator.test_cluster_reconcile import b64, create_secret
from tests.operator.test_operator_reconcile import Api, create, has_condition
from tests.operator.variants import DEVICE_CERTIFICATES_GATEWAY, fleet_doc
from tests.support.certificates import new_authority


async def test_the_device_ca_is_checked_mounted_and_rolls_the_gateways(
    apiserver: Api, start_operator: OperatorStarter
) -> None:
    emulator, _ = apiserver
    server = new_authority("gateway CA")
    async with start_operator():
        secret = server.tls_secret("cold-gateway-tls", "ns1", ["cold-gateway.ns1.svc"])
        async with emulator.post("/api/v1/namespaces/ns1/secrets", json=secret) as response:
            assert response.status == 201, await response.text()
        await create(emulator, fleet_doc(gateway=DEVICE_CERTIFICATES_GATEWAY))

        def reported() -> Any:
            found = has_condition(emulator, "devicefleets", "cold", "Ready", "False")
            return found if found and found["reason"] == "TlsSecretInvalid" else None

        problem = await wait_until(reported, what="Ready False, reason TlsSecretInvalid")
        assert "spec.gateway.tls.clientAuth.caSecretRef.name = 'cold-device-ca': no such Secret" in problem["message"]

        await create_secret(emulator, "cold-device-ca", {"ca.crt": new_authority("device CA").pem, "tls.key": b"k"})

        def gateway_hash() -> str | None:
            workload = emulator.get("apps/v1", "statefulsets", "ns1", "cold-gateway") or {}
            annotations = workload.get("spec", {}).get("template", {}).get("metadata", {}).get("annotations", {})
            return annotations.get("fleetflow.io/tls-hash")

        first = await wait_until(gateway_hash, what="the gateway, stamped with what it reads")
        gateway = emulator.get("apps/v1", "statefulsets", "ns1", "cold-gateway")
        volumes = {v["name"]: v for v in gateway["spec"]["template"]["spec"]["volumes"]}
        assert volumes["device-ca"]["secret"] == {"secretName": "cold-device-ca",
                                                  "items": [{"key": "ca.crt", "path": "ca.crt"}]}  # fmt: skip

        await emulator.write("v1", "secrets", "ns1", "cold-device-ca",
                             {"data": {"ca.crt": b64(new_authority("a new device CA").pem)}})  # fmt: skip
        await wait_until(lambda: (h := gateway_hash()) != first and h, what="the gateways to roll for the new CA")
