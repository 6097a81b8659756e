"""A real Prometheus scraping `fleetflow up --gateway-tls` under load from devices over HTTPS, gRPC with TLS and MQTT
over TLS, through the scrape configuration `fleetflow up` writes, with the chart's alerting rules loaded: every
dashboard query returns data, every rule is healthy and asks for series that exist with the labels it groups by, the
certificate rule goes pending on the test's one-day certificate, and docs/observability.md names every series and
label scraped.

Needs the `prometheus` binary (Debian's package; `make observability-tools`); reported as skipped without it."""

import asyncio
import json
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from fleetflow.device.grpc_client import GrpcDevice
from fleetflow.device.mqtt_client import MqttDevice
from fleetflow.device.simulator import SensorModel, initial_seq
from fleetflow.runtime import credentials
from tests.e2e.localplatform import RunningPlatform, fleetflow_up
from tests.e2e.test_observability import send_traffic
from tests.support.certificates import new_authority
from tests.support.prometheus import PROMETHEUS, PrometheusApi, prometheus
from tests.support.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
COLD_CHAIN = ROOT / "examples" / "cold-chain"
RULES = ROOT / "charts" / "fleetflow" / "rules" / "fleetflow.rules.yaml"
DOCS = ROOT / "docs" / "observability.md"
# Fed by what does not run under `fleetflow up` without edge sites: the operator (its dashboard and rule are held to
# its metrics in tests/operator), the NATS exporter sidecar of a managed NATS, and a hub (tests/e2e/test_edge_*).
NOT_LOCAL = {"operator.json", "nats.json", "edge-sites.json"}
DASHBOARDS = sorted(p for p in (ROOT / "charts" / "fleetflow" / "dashboards").glob("*.json") if p.name not in NOT_LOCAL)
# The operator's series cannot exist here.
LOCAL_SERIES = re.compile(r"\b(?!fleetflow_operator_)(fleetflow_\w+|up)(\{[^}]*\})?")
# Labels only the operator's series carry (`kind` of a resource, the `namespace` of a fleet's Secret).
OPERATOR_LABELS = {"kind", "namespace"}
CERTIFICATE_ALERT = "FleetflowCertificateExpiresSoon"
# Prometheus's own labels, and the histograms' bucket bound.
PROMETHEUS_LABELS = {"__name__", "instance", "job", "le"}
DEVICES = 3
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(PROMETHEUS is None, reason="prometheus is not installed: make observability-tools"),
]


def simulate_https(platform: RunningPlatform, ca: Path, seconds: float) -> subprocess.Popen[str]:
    """`fleetflow simulate` over HTTPS, trusting the test CA as a device's system store would."""
    command = [sys.executable, "-m", "fleetflow.cli", "simulate", "--fleet", "coldchain", "--protocol", "http",
               "--devices", str(DEVICES), "--batch", "5", "--interval", "0.2", "--duration", str(seconds),
               "--data-dir", str(platform.data_dir)]  # fmt: skip
    env = {**os.environ, "SSL_CERT_FILE": str(ca)}
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


async def tls_devices(platform: RunningPlatform, ca_file: Path, ca: bytes, seconds: float) -> dict[str, int]:
    """gRPC and MQTT devices over TLS (`fleetflow simulate` dials both in the clear), each sending a batch of 5
    every 0.2 s for `seconds`; returns the batches acknowledged per protocol."""
    fleet = platform.endpoints["fleets"]["coldchain"]
    secret = credentials.read_secret(Path(fleet["secretFile"]))
    assert fleet["mqtt"].startswith("mqtts://"), fleet
    host, port = fleet["mqtt"].removeprefix("mqtts://").rsplit(":", 1)

    def token(device: str) -> str:
        return credentials.device_token(secret, "coldchain", device)

    grpc = [GrpcDevice(fleet["grpc"], "coldchain", f"tls-grpc-{i}", token(f"tls-grpc-{i}"), ca)
            for i in range(DEVICES)]  # fmt: skip
    mqtt = [MqttDevice(host, int(port), "coldchain", f"tls-mqtt-{i}", token(f"tls-mqtt-{i}"), tls_ca_file=str(ca_file))
            for i in range(DEVICES)]  # fmt: skip
    devices: list[GrpcDevice | MqttDevice] = [*grpc, *mqtt]
    await asyncio.gather(*(device.connect() for device in devices))
    try:
        sent = await asyncio.gather(*(send_for(device, seconds) for device in devices))
    finally:
        await asyncio.gather(*(device.close() for device in devices))
    return {"grpc": sum(sent[:DEVICES]), "mqtt": sum(sent[DEVICES:])}


async def send_for(device: GrpcDevice | MqttDevice, seconds: float) -> int:
    model, seq, batches = SensorModel(random.Random()), initial_seq(), 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        now = int(time.time() * 1000)
        await device.send([{"seq": seq + i, "ts": now - (4 - i) * 10, "metrics": model.metrics(now)} for i in range(5)])
        seq, batches = seq + 5, batches + 1
        await asyncio.sleep(0.2)
    return batches


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, expression) of every panel target, with Grafana's variables as a user with "All" sees them."""
    found = []
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        for panel in [p for top in dashboard["panels"] for p in (top, *top.get("panels", []))]:
            for target in panel.get("targets", []):
                expr = target["expr"].replace("$__rate_interval", "30s").replace("$fleet", ".*")
                found.append((f"{path.name} / {panel['title']}", expr.replace("$pipeline", ".*")))
    return found


def grouping_labels(expr: str) -> set[str]:
    return {label.strip() for group in re.findall(r"\bby \(([^)]*)\)", expr) for label in group.split(",")} - {"le"}


def test_every_dashboard_query_and_rule_has_data_from_a_prometheus_scraping_fleetflow_up(tmp_path: Path) -> None:
    data_dir, tls = tmp_path / "data", new_authority("fleetflow test CA").tls_secret_files(tmp_path / "tls", [])
    gateway_tls = ("--gateway-tls", str(tls / "tls.crt"), str(tls / "tls.key"))
    with (
        fleetflow_up(data_dir, COLD_CHAIN, extra=gateway_tls) as platform,
        prometheus(data_dir, tmp_path, RULES) as api,
    ):
        targets = json.loads((data_dir / "prometheus" / "targets.json").read_text())
        assert {t["labels"]["component"] for t in targets} == {"gateway", "processor", "writer", "appapi"}
        https = simulate_https(platform, tls / "ca.crt", 8)
        send_traffic(platform, tls / "ca.crt")  # a retry (duplicates), a dropped reading, a refused token
        acknowledged = asyncio.run(tls_devices(platform, tls / "ca.crt", (tls / "ca.crt").read_bytes(), 6))
        output, _ = https.communicate(timeout=60)
        assert https.returncode == 0, output
        assert acknowledged["grpc"] > 0 and acknowledged["mqtt"] > 0, acknowledged
        wait_for(lambda: len(api.query("up == 1")) == len(targets), "every service scraped")
        for protocol in ("http", "grpc", "mqtt"):
            received = f'sum(fleetflow_gateway_readings_received_total{{fleet="coldchain", protocol="{protocol}"}}) > 0'
            wait_for(lambda q=received: api.query(q), f"{protocol} readings counted")  # type: ignore[misc]
        wait_for(lambda: api.query("sum(rate(fleetflow_writer_readings_stored_total[30s])) > 0"), "readings stored")

        empty = [f"{where}: {expr}" for where, expr in dashboard_queries() if not api.query(expr)]
        assert not empty, "panels without data:\n" + "\n".join(empty)
        assert_every_rule_can_fire(api)
        assert_the_certificate_alert_is_pending(api)
        assert_the_docs_name_every_series_and_label(api)
        platform.stop()


def assert_every_rule_can_fire(api: PrometheusApi) -> None:
    """Each rule evaluates, and each series it asks for exists here with the labels it groups by."""
    rules = wait_for(lambda: [r for g in api.get("/api/v1/rules")["groups"] for r in g["rules"]], "rules loaded")
    alerts = {rule["alert"] for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]}
    assert {r["name"] for r in rules} == alerts
    for rule in rules:
        assert rule["health"] == "ok", f"{rule['name']}: {rule.get('lastError')}"
        for selector in (m.group(0) for m in LOCAL_SERIES.finditer(rule["query"])):
            series = api.series(selector)
            assert series, f"{rule['name']}: no series match {selector}"
            wanted = grouping_labels(rule["query"]) - OPERATOR_LABELS
            assert any(wanted <= set(s) for s in series), f"{rule['name']}: {selector} lacks one of {wanted}"


def assert_the_certificate_alert_is_pending(api: PrometheusApi) -> None:
    """The test's gateway certificate lapses within a day: both severities' conditions hold (for 10 minutes they
    are pending, then they would fire)."""

    def pending() -> set[str]:
        return {a["labels"]["severity"] for a in api.alerts() if a["labels"]["alertname"] == CERTIFICATE_ALERT
                and a["labels"].get("certificate") == "gateway" and a["labels"].get("fleet") == "coldchain"
                and a["labels"].get("component") == "gateway" and a["state"] == "pending"}  # fmt: skip

    wait_for(lambda: pending() == {"warning", "critical"}, f"{CERTIFICATE_ALERT} pending for the gateway's certificate")


def labels_on_every_series() -> set[str]:
    """The labels of docs/observability.md's "Labels on every series" table, and `service`, which a local
    Prometheus gets from the scrape configuration."""
    table = DOCS.read_text().split("**Labels on every series.**", 1)[1].split("\n\n", 2)[1]
    return {*re.findall(r"^\| `(\w+)` \|", table, re.MULTILINE), "service"}


def documented_labels() -> dict[str, set[str]]:
    """Per metric of docs/observability.md's metrics table, the words of its labels column."""
    found: dict[str, set[str]] = {}
    for row in re.findall(r"^\| (`fleetflow_.*)$", DOCS.read_text(), re.MULTILINE):
        names, _, labels = row.split(" | ")[:3]
        found.update({key: set(re.findall(r"[a-z_]+", labels)) for key in re.findall(r"`(fleetflow_\w+)`", names)})
    return found


def assert_the_docs_name_every_series_and_label(api: PrometheusApi) -> None:
    """docs/observability.md's metrics table names every fleetflow series Prometheus scraped (a histogram by its
    base name) and every label each one has."""
    documented, everywhere = documented_labels(), labels_on_every_series()
    assert {"component", "fleet", "pipeline"} <= everywhere, everywhere
    undocumented: dict[str, set[str]] = {}
    scraped = api.series('{__name__=~"fleetflow_.+"}')
    assert scraped, "no fleetflow series scraped"
    for series in scraped:
        name = series["__name__"]
        name = name if name in documented else re.sub(r"_(bucket|sum|count)$", "", name)
        labels = set(series) - PROMETHEUS_LABELS - everywhere - documented.get(name, set())
        if name not in documented or labels:
            undocumented.setdefault(name, set()).update(labels)
    assert not undocumented, f"scraped, not in {DOCS.name} (metric: labels missing): {undocumented}"
