"""The real operator against the emulated API server with `tls: {generate: true}`: it makes the fleet's CA once,
issues the NATS and gateway certificates into Secrets the pods mount, reissues one that is due (and only the
pods that read it roll), and never writes into a Secret that is not its own."""

import asyncio
import base64
import datetime
from typing import Any

from cryptography import x509

from fleetflow.api.tls import CA_KEY, CERT_KEY, KEY_KEY
from fleetflow.operator import fleet_ca
from tests.operator.conftest import OperatorStarter, wait_until
from tests.operator.test_operator_reconcile import Api, create, has_condition
from tests.operator.variants import fleet, fleet_doc

GENERATE = {"tls": {"generate": True}}
DOC = fleet_doc(gateway=GENERATE, nats={"managed": GENERATE})
WORKLOADS = ("cold-nats", "cold-gateway")


def secret(emulator: Any, name: str, ns: str = "ns1") -> dict[str, Any] | None:
    found: dict[str, Any] | None = emulator.get("v1", "secrets", ns, name)
    return found


def tls_hashes(emulator: Any) -> dict[str, str | None]:
    found = {}
    for name in WORKLOADS:
        template = (emulator.get("apps/v1", "statefulsets", "ns1", name) or {}).get("spec", {}).get("template", {})
        found[name] = template.get("metadata", {}).get("annotations", {}).get("fleetflow.io/tls-hash")
    return found


def mounted_secret(emulator: Any, workload: str, volume: str) -> str:
    spec = emulator.get("apps/v1", "statefulsets", "ns1", workload)["spec"]["template"]["spec"]
    (found,) = [v["secret"]["secretName"] for v in spec["volumes"] if v["name"] == volume]
    return str(found)


def not_after(stored: dict[str, Any]) -> datetime.datetime:
    return x509.load_pem_x509_certificate(base64.b64decode(stored["data"][CERT_KEY])).not_valid_after_utc


async def test_the_operator_makes_its_ca_once_and_issues_what_the_pods_mount(
    apiserver: Api, start_operator: OperatorStarter
) -> None:
    emulator, _ = apiserver
    async with start_operator():
        await create(emulator, DOC)
        first = await wait_until(lambda: all(tls_hashes(emulator).values()) and tls_hashes(emulator),
                                 what="both workloads stamped with their certificate")  # fmt: skip
        ca = secret(emulator, "cold-ca")
        assert ca is not None and ca["type"] == "kubernetes.io/tls"
        uid = emulator.get("fleetflow.io/v1alpha1", "devicefleets", "ns1", "cold")["metadata"]["uid"]
        for name in ("cold-ca", "cold-nats-tls", "cold-gateway-tls"):
            stored = secret(emulator, name)
            assert stored is not None and stored["type"] == "kubernetes.io/tls", name
            assert {CERT_KEY, KEY_KEY, CA_KEY} <= set(stored["data"]), name
            assert [o["uid"] for o in stored["metadata"]["ownerReferences"]] == [uid], name
            assert stored["data"][CA_KEY] == ca["data"][CA_KEY], f"{name}: the fleet's CA is what clients verify with"
        assert mounted_secret(emulator, "cold-nats", "nats-tls") == "cold-nats-tls"
        assert mounted_secret(emulator, "cold-gateway", "gateway-tls") == "cold-gateway-tls"

        # A certificate past two thirds of its lifetime, as the Secret would hold it 61 days on.
        authority = fleet_ca.load_authority(ca)
        (nats_want, _) = fleet_ca.wanted(fleet(DOC))
        aged = fleet_ca.issue(
            authority, nats_want.dns_names, datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=61)
        )
        old_gateway = secret(emulator, "cold-gateway-tls")
        await emulator.write("v1", "secrets", "ns1", "cold-nats-tls",
                             {"data": {k: base64.b64encode(v).decode() for k, v in aged.items()}})  # fmt: skip
        renewed = await wait_until(
            lambda: (s := secret(emulator, "cold-nats-tls")) and not_after(s) > datetime.datetime.now(datetime.UTC)
            + datetime.timedelta(days=60) and s, what="the aged certificate reissued")  # fmt: skip
        assert renewed["data"][CA_KEY] == ca["data"][CA_KEY]
        await wait_until(
            lambda: tls_hashes(emulator)["cold-nats"] != first["cold-nats"], what="the NATS servers to roll"
        )
        await asyncio.sleep(1.5)  # three resyncs: time for a wrong reissue or roll to show
        assert tls_hashes(emulator)["cold-gateway"] == first["cold-gateway"], "the gateway's certificate was not due"
        assert secret(emulator, "cold-gateway-tls") == old_gateway
        assert secret(emulator, "cold-ca")["data"] == ca["data"], "the CA is never rewritten"


async def test_a_secret_that_is_not_the_fleets_is_never_written_and_the_condition_names_it(
    apiserver: Api, start_operator: OperatorStarter
) -> None:
    emulator, _ = apiserver
    foreign = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "cold-gateway-tls", "namespace": "ns1"},
               "type": "Opaque", "data": {"note": base64.b64encode(b"an admin's").decode()}}  # fmt: skip
    async with emulator.post("/api/v1/namespaces/ns1/secrets", json=foreign) as response:
        assert response.status == 201, await response.text()
    async with start_operator():
        await create(emulator, fleet_doc(gateway=GENERATE))

        def refused() -> Any:
            found = has_condition(emulator, "devicefleets", "cold", "Ready", "False")
            return found if found and found["reason"] == "TlsSecretInvalid" else None

        problem = await wait_until(refused, what="Ready False, reason TlsSecretInvalid")
        assert (
            "spec.gateway.tls.generate: Secret 'cold-gateway-tls' exists and is not this fleet's" in problem["message"]
        )
        assert secret(emulator, "cold-gateway-tls")["data"] == foreign["data"]
