"""The NATS StatefulSet the operator renders for a fleet, run as real nats-server processes on this machine.

Each pod gets the operator's nats.conf with only what a test machine needs changed: its listen addresses move
to free ports on 127.0.0.1, its store and pid file into a temporary folder. Its environment is
what the kubelet would give the container: the StatefulSet's env, with `secretKeyRef`s read from the Secret,
the pod's name from `fieldRef`, and `$(VAR)` references expanded; the other pods' DNS names in the route URLs
point at their local cluster ports."""

import base64
import json
import re
import subprocess
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleetflow.api import DeviceFleet
from fleetflow.local.natsserver import nats_server_binary
from fleetflow.local.ports import PortChoice
from fleetflow.operator.builders import nats, sites
from fleetflow.operator.builders.common import namespace_of

CONTAINER_PORTS = (nats.CLIENT_PORT, nats.MONITOR_PORT, nats.MQTT_PORT, nats.CLUSTER_PORT, sites.LEAFNODE_PORT)


@dataclass
class Pod:
    name: str
    ports: dict[int, int]  # container port -> the local port standing in for it
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.ports[nats.CLIENT_PORT]}"

    @property
    def leafnode_port(self) -> int:
        return self.ports[sites.LEAFNODE_PORT]

    @property
    def mqtt_port(self) -> int:
        return self.ports[nats.MQTT_PORT]

    def monitor(self, path: str) -> Any:
        """A monitoring endpoint's JSON, or None while the server does not answer."""
        url = f"http://127.0.0.1:{self.ports[nats.MONITOR_PORT]}{path}"
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                return json.loads(response.read())
        except OSError:
            return None


def secret_value(secret: dict[str, Any], key: str) -> str:
    return base64.b64decode(secret["data"][key]).decode()


def local_config(fleet: DeviceFleet, pod: Pod, folder: Path, tls_dir: Path | None = None) -> str:
    """`tls_dir` holds the files of the fleet's TLS Secret (spec.nats.managed.tls), as the pod mounts them, and in
    `device-ca/` the CA of devices' certificates (spec.gateway.tls.clientAuth), where MQTT requires them."""
    conf = nats.server_config(fleet)
    if tls_dir is not None:
        conf = conf.replace(nats.DEVICE_CA_DIR, str(tls_dir / "device-ca")).replace(nats.TLS_DIR, str(tls_dir))
    for port, local in pod.ports.items():  # monitoring already listens on the pod's loopback only
        conf = conf.replace(f"0.0.0.0:{port}", f"127.0.0.1:{local}").replace(f"127.0.0.1:{port}", f"127.0.0.1:{local}")
    return conf.replace(nats.STORE_DIR, str(folder / "jetstream")).replace(nats.PID_FILE, str(folder / "nats.pid"))


def pod_environment(
    fleet: DeviceFleet, secret: dict[str, Any], pod: Pod, pods: list[Pod], site_secrets: Sequence[dict[str, Any]] = ()
) -> dict[str, str]:
    """What the kubelet gives the NATS container of `pod`; `site_secrets`: the edge sites' Secrets."""
    by_name = {s["metadata"]["name"]: s for s in (secret, *site_secrets)}
    statefulset = nats.nats_statefulset(fleet, "nats", "IfNotPresent", {})
    container = statefulset["spec"]["template"]["spec"]["containers"][0]  # nats-server; [1] is its exporter
    env: dict[str, str] = {}
    for item in container["env"]:
        if "value" in item:
            env[item["name"]] = re.sub(r"\$\(([A-Za-z_]+)\)", lambda m: env[m.group(1)], item["value"])
        elif "secretKeyRef" in item["valueFrom"]:
            ref = item["valueFrom"]["secretKeyRef"]
            assert ref["name"] in by_name, f"the pod needs Secret {ref['name']!r}"
            env[item["name"]] = secret_value(by_name[ref["name"]], ref["key"])
        else:
            assert item["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
            env[item["name"]] = pod.name
    if nats.ROUTES_ENV in env:
        headless = f"{nats.headless_service_name(fleet)}.{namespace_of(fleet)}.svc"
        for other in pods:
            local = f"127.0.0.1:{other.ports[nats.CLUSTER_PORT]}"
            env[nats.ROUTES_ENV] = env[nats.ROUTES_ENV].replace(f"{other.name}.{headless}:{nats.CLUSTER_PORT}", local)
    return env


def wait_ready(pod: Pod, timeout: float = 30) -> None:
    """Until the StatefulSet's readiness probe would pass."""
    deadline = time.monotonic() + timeout
    while pod.monitor("/healthz?js-enabled-only=true") != {"status": "ok"}:
        assert pod.process is not None and pod.process.poll() is None, f"nats-server {pod.name} exited"
        assert time.monotonic() < deadline, f"nats-server {pod.name} not ready after {timeout}s"
        time.sleep(0.05)


@contextmanager
def running_pod(
    fleet: DeviceFleet,
    secret: dict[str, Any],
    pod: Pod,
    pods: list[Pod],
    folder: Path,
    tls_dir: Path | None = None,
    site_secrets: Sequence[dict[str, Any]] = (),
) -> Iterator[Pod]:
    folder.mkdir(parents=True)
    conf = folder / "nats.conf"
    conf.write_text(local_config(fleet, pod, folder, tls_dir))
    with (folder / "nats.log").open("wb") as log:
        pod.process = subprocess.Popen([str(nats_server_binary()), "-c", str(conf)], stdout=log,
                                       stderr=subprocess.STDOUT, env=pod_environment(fleet, secret, pod, pods, site_secrets))  # fmt: skip
    try:
        yield pod
    finally:
        pod.process.terminate()
        pod.process.wait(timeout=15)


@contextmanager
def managed_nats(
    fleet: DeviceFleet,
    secret: dict[str, Any],
    folder: Path,
    tls_dir: Path | None = None,
    site_secrets: Sequence[dict[str, Any]] = (),
) -> Iterator[list[Pod]]:
    """Every pod of the fleet's NATS StatefulSet, started together (its podManagementPolicy is Parallel)."""
    replicas = fleet.spec.nats.managed_or_default.replicas
    choice = PortChoice()  # distinct: two free_port() calls can return the same port, and a pod then cannot start
    pods = [
        Pod(f"{nats.statefulset_name(fleet)}-{i}", {port: choice.take() for port in CONTAINER_PORTS})
        for i in range(replicas)
    ]
    with ExitStack() as stack:
        for pod in pods:
            stack.enter_context(running_pod(fleet, secret, pod, pods, folder / pod.name, tls_dir, site_secrets))
        for pod in pods:
            wait_ready(pod)
        yield pods
