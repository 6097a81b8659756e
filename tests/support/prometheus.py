"""A real Prometheus (Debian's `prometheus` package; `make observability-tools`) scraping what `fleetflow up` lists
in the scrape configuration it writes (`<data-dir>/prometheus/`), with fast intervals for a test, and its HTTP API.

Tests that use it mark themselves skipped when `PROMETHEUS` is None, never passed."""

import json
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from fleetflow.local.ports import free_port
from tests.support.waiting import wait_for

PROMETHEUS = shutil.which("prometheus")


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

    def targets(self) -> list[dict[str, Any]]:
        return list(self.get("/api/v1/targets")["activeTargets"])

    def alerts(self) -> list[dict[str, Any]]:
        return list(self.get("/api/v1/alerts")["alerts"])


@contextmanager
def prometheus(data_dir: Path, work: Path, rules: Path | None = None) -> Iterator[PrometheusApi]:
    """Prometheus with the scrape config `fleetflow up` wrote into `data_dir` (1 s intervals) and the alerting
    `rules`, keeping its files and log (`prometheus.log`) in `work`."""
    config = yaml.safe_load((data_dir / "prometheus" / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    if rules is not None:
        config["rule_files"] = [str(rules)]
    config_file = work / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config))
    port = free_port()
    assert PROMETHEUS is not None, "prometheus is not installed: make observability-tools"
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
