"""A real Prometheus scraping `fleetflow up` under load from HTTP, gRPC and MQTT devices, through the scrape
configuration `fleetflow up` writes, with the chart's alerting rules loaded: every dashboard query returns data,
and every rule is healthy and asks for series that exist, with the labels it groups by.

Needs the `prometheus` binary (Debian's package; `make observability-tools`); reported as skipped without it."""

import json
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from fleetflow.local.ports import free_port
from tests.e2e.localplatform import RunningPlatform, fleetflow_up
from tests.e2e.test_observability import send_traffic

ROOT = Path(__file__).resolve().parents[2]
COLD_CHAIN = ROOT / "examples" / "cold-chain"
RULES = ROOT / "charts" / "fleetflow" / "rules" / "fleetflow.rules.yaml"
# The operator does not run locally; its dashboard and rule are held to its metrics in tests/operator.
# Fed by what does not run under a plain `fleetflow up`: the operator, the NATS exporter sidecar of a managed NATS,
# and a hub with edge sites.
NOT_LOCAL = {"operator.json", "nats.json", "edge-sites.json"}
DASHBOARDS = sorted(p for p in (ROOT / "charts" / "fleetflow" / "dashboards").glob("*.json") if p.name not in NOT_LOCAL)
# Series that cannot exist here: the operator's, and certificate expiries (`fleetflow up` serves no TLS; they are
# scraped in tests/integration/connectivity/test_cluster_tls.py and tests/operator/test_operator_metrics.py).
LOCAL_SERIES = re.compile(r"\b(?!fleetflow_operator_|fleetflow_tls_)(fleetflow_\w+|up)(\{[^}]*\})?")
CERTIFICATES = "fleetflow_tls_certificate_expiry_timestamp_seconds"
PROMETHEUS = shutil.which("prometheus")
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(PROMETHEUS is None, reason="prometheus is not installed: make observability-tools"),
]


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.25)
    raise AssertionError(f"not within {timeout}s: {what}")


class PrometheusApi:
    def __init__(self, url: str):
        self.url = url

    def get(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=10) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return list(self.get("/api/v1/query", query=expr)["result"])

    def series(self, selector: str) -> list[dict[str, str]]:
        return list(self.get("/api/v1/series", **{"match[]": selector}))


@contextmanager
def prometheus(data_dir: Path, work: Path) -> Iterator[PrometheusApi]:
    """Prometheus with the scrape config `fleetflow up` wrote (faster intervals, for a test) and the rules."""
    config = yaml.safe_load((data_dir / "prometheus" / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(RULES)]
    config_file = work / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config))
    port = free_port()
    assert PROMETHEUS is not None
    command = [PROMETHEUS, f"--config.file={config_file}", f"--storage.tsdb.path={work / 'tsdb'}",
               f"--web.listen-address=127.0.0.1:{port}"]  # fmt: skip
    log = (work / "prometheus.log").open("w")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    api = PrometheusApi(f"http://127.0.0.1:{port}")
    try:
        wait_for(lambda: _ready(api, process), "Prometheus ready", timeout=30)
        yield api
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def _ready(api: PrometheusApi, process: subprocess.Popen[bytes]) -> bool:
    assert process.poll() is None, "prometheus exited; see prometheus.log"
    try:
        with urllib.request.urlopen(f"{api.url}/-/ready", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def simulate(platform: RunningPlatform, protocol: str, seconds: float) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "fleetflow.cli", "simulate", "--fleet", "coldchain", "--protocol", protocol,
               "--devices", "3", "--batch", "5", "--interval", "0.2", "--duration", str(seconds),
               "--data-dir", str(platform.data_dir)]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


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
    data_dir = tmp_path / "data"
    with fleetflow_up(data_dir, COLD_CHAIN) as platform, prometheus(data_dir, tmp_path) as api:
        targets = json.loads((data_dir / "prometheus" / "targets.json").read_text())
        assert {t["labels"]["component"] for t in targets} == {"gateway", "processor", "writer", "appapi"}
        devices = [simulate(platform, protocol, 8) for protocol in ("http", "grpc", "mqtt")]
        send_traffic(platform)  # a retry (duplicates), a dropped reading, a refused token
        for device in devices:
            output, _ = device.communicate(timeout=60)
            assert device.returncode == 0, output
        wait_for(lambda: len(api.query("up == 1")) == len(targets), "every service scraped")
        for protocol in ("http", "grpc", "mqtt"):
            received = f'sum(fleetflow_gateway_readings_received_total{{fleet="coldchain", protocol="{protocol}"}}) > 0'
            wait_for(lambda q=received: api.query(q), f"{protocol} readings counted")  # type: ignore[misc]
        wait_for(lambda: api.query("sum(rate(fleetflow_writer_readings_stored_total[30s])) > 0"), "readings stored")

        # Every query must evaluate; the certificates' may be empty: `fleetflow up` serves no TLS (see LOCAL_SERIES).
        empty = [f"{where}: {expr}" for where, expr in dashboard_queries() if not api.query(expr)
                 and CERTIFICATES not in expr]  # fmt: skip
        assert not empty, "panels without data:\n" + "\n".join(empty)

        rules = wait_for(lambda: [r for g in api.get("/api/v1/rules")["groups"] for r in g["rules"]], "rules loaded")
        alerts = {rule["alert"] for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]}
        assert {r["name"] for r in rules} == alerts
        for rule in rules:
            assert rule["health"] == "ok", f"{rule['name']}: {rule.get('lastError')}"
            for selector in (m.group(0) for m in LOCAL_SERIES.finditer(rule["query"])):
                series = api.series(selector)
                assert series, f"{rule['name']}: no series match {selector}"
                wanted = grouping_labels(rule["query"]) - {"kind"}
                assert any(wanted <= set(s) for s in series), f"{rule['name']}: {selector} lacks one of {wanted}"
        platform.stop()
