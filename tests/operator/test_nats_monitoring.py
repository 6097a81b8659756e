"""A managed NATS's monitoring endpoint stays inside its pod; its metrics leave only through the exporter."""

from fleetflow.operator.builders import nats
from tests.operator.variants import fleet, fleet_doc

LOOPBACK_MONITOR = f"http://127.0.0.1:{nats.MONITOR_PORT}"


def test_monitoring_listens_on_the_loopback_only_and_no_service_or_port_exposes_it() -> None:
    f = fleet(fleet_doc(nats={"managed": {"replicas": 3}}))
    assert f"http: 127.0.0.1:{nats.MONITOR_PORT}\n" in nats.server_config(f)
    assert "0.0.0.0:8222" not in nats.server_config(f)
    statefulset = nats.nats_statefulset(f, "nats:x", "IfNotPresent", {})
    declared = [p["containerPort"] for c in statefulset["spec"]["template"]["spec"]["containers"] for p in c["ports"]]
    assert nats.MONITOR_PORT not in declared
    for service in (nats.nats_headless_service(f), nats.nats_client_service(f)):
        assert nats.MONITOR_PORT not in [p["port"] for p in service["spec"]["ports"]], service["metadata"]["name"]


def test_probes_ask_the_loopback_from_inside_the_pod() -> None:
    server = nats.nats_statefulset(fleet(fleet_doc()), "nats:x", "IfNotPresent", {})["spec"]["template"]["spec"]
    main = server["containers"][0]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        command = main[probe]["exec"]["command"]
        assert command[0] == "wget" and command[-1].startswith(LOOPBACK_MONITOR + "/healthz"), probe
        assert "httpGet" not in main[probe]
    assert main["readinessProbe"]["exec"]["command"][-1].endswith("?js-enabled-only=true")


def test_the_exporter_reads_the_loopback_and_serves_the_port_the_monitors_scrape() -> None:
    f = fleet(fleet_doc())
    containers = nats.nats_statefulset(f, "nats:x", "Always", {}, exporter_image="exporter:1")["spec"]["template"][
        "spec"
    ]["containers"]
    (exporter,) = [c for c in containers if c["name"] == "metrics"]
    assert exporter["image"] == "exporter:1" and exporter["imagePullPolicy"] == "Always"
    assert exporter["args"][-1] == LOOPBACK_MONITOR
    assert {"-varz", "-connz", "-jsz=all", "-healthz", "-use_internal_server_name"} <= set(exporter["args"])
    assert exporter["ports"] == [{"name": "nats-metrics", "containerPort": nats.EXPORTER_PORT, "protocol": "TCP"}]
    assert exporter["securityContext"]["readOnlyRootFilesystem"] is True
    assert "env" not in exporter and "volumeMounts" not in exporter, "the exporter gets no secret and no volume"
    headless = {p["name"]: p["port"] for p in nats.nats_headless_service(f)["spec"]["ports"]}
    assert headless["nats-metrics"] == nats.EXPORTER_PORT
