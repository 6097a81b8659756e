"""The Prometheus scrape configuration `fleetflow up` writes into its data dir, next to endpoints.json.

`<data-dir>/prometheus/targets.json` lists every service's /metrics in Prometheus's file-based service discovery
format (rewritten on every start, since the ports change); `<data-dir>/prometheus/prometheus.yml` is a complete
configuration that watches it, so that `prometheus --config.file=<data-dir>/prometheus/prometheus.yml` scrapes a
running platform, and the chart's dashboards and rules work on it unchanged. The target labels are the ones each
service puts on its series itself (telemetry.series_labels), so a scrape config of your own needs none.

A hub (`fleetflow up --leafnode-listen`) also serves its edge sites' series on an operations port of its own
(sitemetrics.py); that endpoint is a target too, labelled `component="hub"`, so the edge-sites dashboard has data.
Its series carry `fleet` and `site` themselves (one hub serves every fleet with sites)."""

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from fleetflow.local import private
from fleetflow.local.processes import ServiceProcess
from fleetflow.runtime import telemetry

SCRAPE_DIR = "prometheus"
JOB = "fleetflow"
HUB = "hub"  # the component and service label of a hub's edge-site metrics


def service_labels(service: ServiceProcess) -> dict[str, str]:
    """The labels of a service's series: its component, and the fleet and pipeline it serves."""
    fleet = service.config.get("fleet", {}).get("metadata", {}).get("name")
    pipeline = service.config.get("pipeline", {}).get("metadata", {}).get("name")
    return {**telemetry.series_labels(service.kind, fleet, pipeline), "service": service.name}


def targets(services: Iterable[ServiceProcess], hub_address: str | None = None) -> list[dict[str, Any]]:
    """One file_sd target group per service: its ops port on the loopback, labelled; and the hub's edge-site
    metrics at `hub_address` (HOST:PORT) when this platform is a hub."""
    groups = [
        {"targets": [f"127.0.0.1:{service.status['ops_port']}"], "labels": service_labels(service)}
        for service in services
    ]
    if hub_address is not None:
        groups.append({"targets": [hub_address], "labels": {"component": HUB, "service": HUB}})
    return groups


def prometheus_config(targets_file: Path, interval: str = "5s") -> dict[str, Any]:
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "scrape_configs": [
            {
                "job_name": JOB,
                "metrics_path": "/metrics",
                # The services' own fleet/pipeline/component labels are the truth; the same ones on the target
                # must not turn them into exported_fleet etc.
                "honor_labels": True,
                "file_sd_configs": [{"files": [str(targets_file)], "refresh_interval": "10s"}],
            }
        ],
    }


def config_path(data_dir: Path) -> Path:
    return data_dir / SCRAPE_DIR / "prometheus.yml"


def targets_path(data_dir: Path) -> Path:
    return data_dir / SCRAPE_DIR / "targets.json"


def write(data_dir: Path, services: Iterable[ServiceProcess], hub_address: str | None = None) -> None:
    """Write targets.json and prometheus.yml under `data_dir`; `hub_address`: where a hub serves its edge-site
    metrics (HOST:PORT)."""
    private.make_dirs(data_dir / SCRAPE_DIR)
    private.write_private(targets_path(data_dir), json.dumps(targets(services, hub_address), indent=2) + "\n")
    config = prometheus_config(targets_path(data_dir))
    private.write_private(config_path(data_dir), yaml.safe_dump(config, sort_keys=False))


def clear(data_dir: Path) -> None:
    """No targets once the platform stopped (the ports are gone); a Prometheus watching the file drops them."""
    if targets_path(data_dir).exists():
        private.write_private(targets_path(data_dir), "[]\n")
