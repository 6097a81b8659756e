"""The real operator against the emulated API server: an admin's pod and Service overrides and the operator's
pull secrets reach the children, a published MQTT listener comes and goes with the spec, and a patch that does
not apply is a condition, not a crash."""

import asyncio
import base64
import secrets
import ssl
from pathlib import Path
from typing import Any

import nats
import nats.js.errors
import yaml
from cryptography import x509

from fleetflow.operator.options import OperatorOptions
from tests.operator.conftest import OperatorStarter, wait_until
from tests.operator.test_operator_reconcile import Api, cr, create, has_condition, patch
from tests.operator.variants import fleet_doc, pipeline_doc
from tests.support.certificates import new_authority
from tests.support.natsserver import running_nats

OPTIONS = OperatorOptions(image="fleetflow:test", resync_seconds=0.5, image_pull_secrets=("regcred",),
                          nats_exporter_image="mirror.example/prometheus-nats-exporter:test")  # fmt: skip


def pull_secrets(obj: dict[str, Any] | None) -> list[str]:
    return [
        s["name"] for s in (obj or {}).get("spec", {}).get("template", {}).get("spec", {}).get("imagePullSecrets", [])
    ]


async def test_pull_secrets_and_overrides_reach_every_workload_and_mqtt_follows_the_spec(
    apiserver: Api, start_operator: OperatorStarter
) -> None:
    emulator, _ = apiserver
    fleet = fleet_doc(
        gateway={"service": {"type": "LoadBalancer"}, "pod": {"priorityClassName": "iot"}},
        nats={"managed": {"mqttService": {"type": "NodePort"}}},
    )
    async with start_operator(options=OPTIONS):
        await create(emulator, fleet)
        await create(emulator, pipeline_doc())
        for api_version, plural, name in [("apps/v1", "statefulsets", "cold-gateway"),
                                          ("apps/v1", "statefulsets", "cold-nats"),
                                          ("apps/v1", "statefulsets", "store-processor"),
                                          ("apps/v1", "deployments", "store-writer"),
                                          ("apps/v1", "deployments", "cold-api")]:  # fmt: skip
            workload = await wait_until(lambda v=api_version, p=plural, n=name: emulator.get(v, p, "ns1", n), what=name)
            assert pull_secrets(workload) == ["regcred"], name
        gateway = emulator.get("apps/v1", "statefulsets", "ns1", "cold-gateway")
        assert gateway is not None and gateway["spec"]["template"]["spec"]["priorityClassName"] == "iot"
        servers = emulator.get("apps/v1", "statefulsets", "ns1", "cold-nats")
        assert servers is not None
        images = {c["name"]: c["image"] for c in servers["spec"]["template"]["spec"]["containers"]}
        assert images["metrics"] == OPTIONS.nats_exporter_image
        assert (emulator.get("v1", "services", "ns1", "cold-gateway") or {})["spec"]["type"] == "LoadBalancer"
        mqtt = await wait_until(lambda: emulator.get("v1", "services", "ns1", "cold-mqtt"), what="the MQTT Service")
        assert mqtt["spec"]["type"] == "NodePort"
        for name in ("cold-nats", "store-processor", "store-writer", "cold-api"):
            await wait_until(
                lambda n=name: emulator.get("policy/v1", "poddisruptionbudgets", "ns1", n), what=f"PDB {name}"
            )

        await patch(emulator, "devicefleets", "cold", {"spec": {"nats": {"managed": {"mqttService": None}}}})
        await wait_until(lambda: emulator.get("v1", "services", "ns1", "cold-mqtt") is None, what="MQTT unpublished")


async def test_a_patch_that_does_not_apply_stops_the_reconcile_with_a_condition_naming_it(
    apiserver: Api, start_operator: OperatorStarter
) -> None:
    emulator, _ = apiserver
    bad = [{"op": "replace", "path": "/spec/template/spec/nothingHere", "value": 1}]
    async with start_operator():
        await create(emulator, fleet_doc(gateway={"pod": {"patches": bad}}))

        def patch_failed() -> Any:
            found = has_condition(emulator, "devicefleets", "cold", "Ready", "False")
            return found if found and found["reason"] == "PatchFailed" else None

        failed = await wait_until(patch_failed, what="Ready False, reason PatchFailed")
        assert "spec.gateway.pod.patches" in failed["message"] and "nothingHere" in failed["message"]
        assert emulator.get("apps/v1", "statefulsets", "ns1", "cold-gateway") is None

        fixed = [{"op": "add", "path": "/spec/template/spec/terminationGracePeriodSeconds", "value": 90}]
        await patch(emulator, "devicefleets", "cold", {"spec": {"gateway": {"pod": {"patches": fixed}}}})
        gateway = await wait_until(lambda: emulator.get("apps/v1", "statefulsets", "ns1", "cold-gateway"),
                                   what="the gateway once the patch applies")  # fmt: skip
        assert gateway["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 90


async def test_network_policies_follow_the_spec(apiserver: Api, start_operator: OperatorStarter) -> None:
    emulator, _ = apiserver
    options = OperatorOptions(image="fleetflow:test", resync_seconds=0.5, operator_namespace="fleetflow-system")

    def policy(name: str) -> Any:
        return emulator.get("networking.k8s.io/v1", "networkpolicies", "ns1", name)

    async with start_operator(options=options):
        await create(emulator, fleet_doc(networkPolicy={"enabled": True, "metricsNamespace": "monitoring"}))
        deny = await wait_until(lambda: policy("cold-default-deny"), what="the default deny")
        assert deny["spec"]["podSelector"] == {"matchLabels": {"fleetflow.io/fleet": "cold"}}
        clients = policy("cold-nats-clients")
        assert clients is not None
        assert {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "fleetflow-system"}}} in clients[
            "spec"
        ]["ingress"][0]["from"]
        assert policy("cold-metrics") is not None

        await patch(emulator, "devicefleets", "cold", {"spec": {"networkPolicy": {"metricsNamespace": None}}})
        await wait_until(lambda: policy("cold-metrics") is None, what="the metrics policy gone")
        assert policy("cold-default-deny") is not None
        await patch(emulator, "devicefleets", "cold", {"spec": {"networkPolicy": {"enabled": False}}})
        for name in ("cold-default-deny", "cold-devices", "cold-nats-clients", "cold-mqtt-devices"):
            await wait_until(lambda n=name: policy(n) is None, what=f"{name} gone")


async def test_published_endpoints_reach_the_status_once_assigned(
    apiserver: Api, start_operator: OperatorStarter
) -> None:
    emulator, _ = apiserver
    ingress = {"className": "nginx", "http": {"host": "telemetry.example.com", "tlsSecretName": "telemetry-tls"}}
    async with start_operator():
        await create(emulator, fleet_doc(gateway={"service": {"type": "LoadBalancer"}, "ingress": ingress}))
        found = await wait_until(lambda: emulator.get("networking.k8s.io/v1", "ingresses", "ns1", "cold-gateway-http"),
                                 what="the HTTP Ingress")  # fmt: skip
        assert found["spec"]["rules"][0]["host"] == "telemetry.example.com"
        assert emulator.get("networking.k8s.io/v1", "ingresses", "ns1", "cold-gateway-grpc") is None

        def endpoints() -> dict[str, str]:
            status = cr(emulator, "devicefleets", "cold").get("status") or {}
            return dict((status.get("gateway") or {}).get("endpoints") or {})

        await wait_until(
            lambda: endpoints().get("httpExternal") == "https://telemetry.example.com", what="httpExternal"
        )
        assert "grpcExternal" not in endpoints(), "no load balancer address yet"
        service = emulator.get("v1", "services", "ns1", "cold-gateway")
        assert service is not None
        await emulator.write("v1", "services", "ns1", "cold-gateway",
                             {"status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.10"}]}}})  # fmt: skip
        await wait_until(lambda: endpoints().get("grpcExternal") == "203.0.113.10:9090", what="grpcExternal")
        assert endpoints()["http"] == "http://cold-gateway.ns1.svc:8080", "the in-cluster endpoints stay"
        assert (endpoints()["ws"], endpoints()["coap"]) == ("ws://cold-gateway.ns1.svc:8080",
                                                            "coap://cold-gateway.ns1.svc:5683")  # fmt: skip
        assert endpoints()["coapExternal"] == "coap://203.0.113.10:5683"
        assert endpoints()["wsExternal"] == "wss://telemetry.example.com"  # on the HTTP Ingress

        await patch(emulator, "devicefleets", "cold", {"spec": {"gateway": {"ingress": None}}})
        await wait_until(lambda: emulator.get("networking.k8s.io/v1", "ingresses", "ns1", "cold-gateway-http") is None,
                         what="the Ingress gone")  # fmt: skip


def b64(value: bytes) -> str:
    return base64.b64encode(value).decode()


async def create_secret(emulator: Any, name: str, data: dict[str, bytes]) -> None:
    body = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": "ns1"},
            "data": {key: b64(value) for key, value in data.items()}}  # fmt: skip
    async with emulator.post("/api/v1/namespaces/ns1/secrets", json=body) as response:
        assert response.status == 201, await response.text()


async def test_an_external_nats_is_reached_with_its_user_password_and_ca(
    apiserver: Api, start_operator: OperatorStarter, tmp_path: Path
) -> None:
    """The operator provisions the streams of a TLS-only NATS that asks for a user, and hands the services the same
    user, password file and CA (on main, such a NATS answered `Authorization Violation`)."""
    emulator, _ = apiserver
    authority = new_authority()
    files = authority.tls_secret_files(tmp_path / "tls", ["nats.shared.svc"])
    password = "pw-" + secrets.token_hex(12)
    args = ["--tls", "--tlscert", str(files / "tls.crt"), "--tlskey", str(files / "tls.key"),
            "--user", "fleetflow", "--pass", password]  # fmt: skip
    with running_nats(tmp_path / "jetstream", args=args) as server:
        url = server.url.replace("nats://", "tls://")
        external = {"url": url, "user": "fleetflow", "passwordSecretRef": {"name": "shared-nats-login", "key": "pw"},
                    "caSecretRef": {"name": "shared-nats-ca"}}  # fmt: skip
        async with start_operator():
            await create_secret(emulator, "shared-nats-ca", {"ca.crt": authority.pem})
            await create_secret(emulator, "shared-nats-login", {"pw": password.encode()})
            await create(emulator, fleet_doc(nats={"external": external}))
            trusted = ssl.create_default_context(cadata=authority.pem.decode())

            async def provisioned() -> bool:
                nc = await nats.connect(url, user="fleetflow", password=password, tls=trusted, allow_reconnect=False)
                try:
                    return (await nc.jetstream().stream_info("ff-cold-telemetry")) is not None
                except nats.js.errors.NotFoundError:
                    return False
                finally:
                    await nc.close()

            await wait_until(provisioned, timeout=15, what="the fleet's streams on the external NATS")
            gateway = await wait_until(lambda: emulator.get("apps/v1", "statefulsets", "ns1", "cold-gateway"),
                                       what="the gateway")  # fmt: skip
            volumes = {v["name"]: v["secret"] for v in gateway["spec"]["template"]["spec"]["volumes"] if "secret" in v}
            assert volumes["nats-tls-ca"]["secretName"] == "shared-nats-ca"
            assert volumes["nats-login"]["items"] == [{"key": "pw", "path": "password"}]
            config_map = emulator.get("v1", "configmaps", "ns1", "cold-gateway-config")
            assert config_map is not None
            config = yaml.safe_load(config_map["data"]["config.yaml"])
            assert config["nats_user"] == "fleetflow"
            assert config["nats_password_file"].endswith("/password") and config["nats_tls_ca_file"].endswith("ca.crt")
            assert "tls-hash" in str(gateway["spec"]["template"]["metadata"]["annotations"])


async def test_a_missing_ca_secret_is_reported_naming_the_field(
    apiserver: Api, start_operator: OperatorStarter
) -> None:
    emulator, _ = apiserver
    external = {"url": "tls://nats.shared.svc:4222", "caSecretRef": {"name": "nowhere"}}
    async with start_operator():
        await create(emulator, fleet_doc(nats={"external": external}))

        def reported() -> Any:
            found = has_condition(emulator, "devicefleets", "cold", "Ready", "False")
            return found if found and found["reason"] == "TlsSecretInvalid" else None

        problem = await wait_until(reported, what="Ready False, reason TlsSecretInvalid")
        assert "spec.nats.external.caSecretRef.name = 'nowhere': no such Secret" in problem["message"]


async def test_a_renewed_certificate_rolls_the_pods_that_read_it_and_only_those(
    apiserver: Api, start_operator: OperatorStarter
) -> None:
    emulator, _ = apiserver
    authority = new_authority()
    names = ["cold-nats.ns1.svc"]

    def hashes() -> dict[str, str | None]:
        found = {}
        for api_version, plural, name in [("apps/v1", "statefulsets", "cold-nats"),
                                          ("apps/v1", "statefulsets", "cold-gateway"),
                                          ("apps/v1", "statefulsets", "store-processor")]:  # fmt: skip
            workload = emulator.get(api_version, plural, "ns1", name) or {}
            annotations = workload.get("spec", {}).get("template", {}).get("metadata", {}).get("annotations", {})
            found[name] = annotations.get("fleetflow.io/tls-hash")
        return found

    async def put(secret: dict[str, Any]) -> None:
        await emulator.write("v1", "secrets", "ns1", "cold-nats-tls", {"data": secret["data"]})

    async with start_operator():
        secret = authority.tls_secret("cold-nats-tls", "ns1", names)
        async with emulator.post("/api/v1/namespaces/ns1/secrets", json=secret) as response:
            assert response.status == 201, await response.text()
        await create(emulator, fleet_doc(nats={"managed": {"tls": {"secretName": "cold-nats-tls"}}}))
        await create(emulator, pipeline_doc())

        def complete() -> dict[str, str | None] | None:
            found = hashes()
            return found if all(found.values()) else None

        def rolled(name: str, before: dict[str, str | None]) -> dict[str, str | None] | None:
            found = hashes()
            return found if found[name] != before[name] else None

        first = await wait_until(complete, what="every workload's hash")

        await put(authority.tls_secret("cold-nats-tls", "ns1", names))  # renewed by the same CA
        renewed = await wait_until(lambda: rolled("cold-nats", first), what="the NATS servers to roll")
        await asyncio.sleep(1.5)  # three resyncs of both resources: time for a wrong roll to show
        for name in ("cold-gateway", "store-processor"):
            assert hashes()[name] == first[name], f"{name}: a renewed leaf certificate changes nothing it reads"

        await put(new_authority("a new CA").tls_secret("cold-nats-tls", "ns1", names))
        await wait_until(lambda: rolled("store-processor", renewed), what="the processors to roll for the new CA")
        await wait_until(lambda: rolled("cold-gateway", renewed), what="the gateways to roll for the new CA")


async def test_gateway_api_routes_follow_the_spec_and_their_gateways_listener_reaches_the_status(
    apiserver: Api, start_operator: OperatorStarter
) -> None:
    emulator, _ = apiserver
    routes = {"parentRefs": [{"name": "public", "namespace": "ns2", "sectionName": "https"}],
              "http": {"hostnames": ["telemetry.example.com"]}, "grpc": {"hostnames": ["grpc.example.com"]}}  # fmt: skip
    public = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
              "metadata": {"name": "public", "namespace": "ns2"},
              "spec": {"gatewayClassName": "eg", "listeners": [{"name": "https", "protocol": "HTTPS", "port": 443}]}}  # fmt: skip

    def route(plural: str) -> Any:
        return emulator.get("gateway.networking.k8s.io/v1", plural, "ns1", f"cold-gateway-{plural[:-6]}")

    def endpoints() -> dict[str, str]:
        status = cr(emulator, "devicefleets", "cold").get("status") or {}
        return dict((status.get("gateway") or {}).get("endpoints") or {})

    def certificate_names() -> set[str]:
        stored = emulator.get("v1", "secrets", "ns1", "cold-gateway-tls") or {"data": {}}
        if "tls.crt" not in stored["data"]:
            return set()
        certificate = x509.load_pem_x509_certificate(base64.b64decode(stored["data"]["tls.crt"]))
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        return set(names.get_values_for_type(x509.DNSName))

    async with start_operator():
        await create(emulator, fleet_doc(gateway={"routes": routes, "tls": {"generate": True}}))
        http = await wait_until(lambda: route("httproutes"), what="the HTTPRoute")
        grpc = await wait_until(lambda: route("grpcroutes"), what="the GRPCRoute")
        assert http["spec"]["hostnames"] == ["telemetry.example.com"] and grpc["spec"]["hostnames"] == [
            "grpc.example.com"
        ]
        assert http["spec"]["parentRefs"][0]["namespace"] == "ns2"
        await wait_until(lambda: {"telemetry.example.com", "grpc.example.com"} <= certificate_names(),
                         what="the generated certificate to hold the routes' hostnames")  # fmt: skip
        assert "httpExternal" not in endpoints(), "no Gateway yet: nothing to say where devices connect"

        async with emulator.post("/apis/gateway.networking.k8s.io/v1/namespaces/ns2/gateways", json=public) as response:
            assert response.status == 201, await response.text()
        await wait_until(
            lambda: endpoints().get("httpExternal") == "https://telemetry.example.com", what="httpExternal"
        )
        assert endpoints()["grpcExternal"] == "grpc.example.com:443"

        moved = {**routes, "grpc": {"hostnames": ["devices.example.com"]}}
        await patch(emulator, "devicefleets", "cold", {"spec": {"gateway": {"routes": moved}}})
        await wait_until(lambda: "devices.example.com" in certificate_names() and "grpc.example.com" not in
                         certificate_names(), what="the certificate reissued for the new hostname")  # fmt: skip
        await patch(emulator, "devicefleets", "cold", {"spec": {"gateway": {"routes": None}}})
        await wait_until(lambda: route("httproutes") is None and route("grpcroutes") is None, what="the routes gone")


async def test_routes_on_a_cluster_without_the_gateway_api_are_a_condition_and_the_rest_is_reconciled(
    apiserver: Api, start_operator: OperatorStarter
) -> None:
    emulator, _ = apiserver
    emulator.absent_groups.add("gateway.networking.k8s.io")
    routes = {"parentRefs": [{"name": "public"}], "http": {"hostnames": ["telemetry.example.com"]}}
    async with start_operator():
        await create(emulator, fleet_doc(gateway={"routes": routes}))

        def missing() -> Any:
            found = has_condition(emulator, "devicefleets", "cold", "Ready", "False")
            return found if found and found["reason"] == "GatewayApiMissing" else None

        problem = await wait_until(missing, what="Ready False, reason GatewayApiMissing")
        assert "does not serve gateway.networking.k8s.io/v1 HTTPRoute" in problem["message"]
        await wait_until(lambda: emulator.get("apps/v1", "deployments", "ns1", "cold-api"), what="the steps after it")
        await patch(emulator, "devicefleets", "cold", {"spec": {"gateway": {"routes": None}}})
        await wait_until(lambda: not missing(), what="the condition gone with the routes")
