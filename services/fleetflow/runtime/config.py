"""Pure functions from custom resources to service configuration.

The operator renders these into ConfigMaps and local mode into files, so a service behaves the same in both."""

from pathlib import Path
from typing import Any

from fleetflow.api import DeviceFleet, Pipeline
from fleetflow.api.overrides import without_cluster_fields
from fleetflow.runtime.natsauth import CALLOUT_USER, SERVICE_USER


def _resource(resource: DeviceFleet | Pipeline) -> dict[str, Any]:
    """The resource's spec and identity; status, server-managed metadata and the fields that only shape
    Kubernetes objects (pod placement, Service publishing) stay out of service config."""
    data = resource.to_k8s()
    data.pop("status", None)
    data["spec"] = without_cluster_fields(resource.kind, data["spec"])
    data["metadata"] = {"name": resource.metadata.name}
    if resource.metadata.namespace:
        data["metadata"]["namespace"] = resource.metadata.namespace
    return data


def _common(nats_url: str, ops_port: int, nats_password_file: Path | None, nats_user: str,
            site: str | None = None) -> dict[str, Any]:  # fmt: skip
    """`nats_password_file` set: the service logs in as `nats_user` (a NATS without a default user). `site`: the
    service runs at that edge site of the fleet (docs/edge.md)."""
    common: dict[str, Any] = {"nats_url": nats_url, "ops_port": ops_port, **({"site": site} if site else {})}
    if nats_password_file is not None:
        common.update(nats_user=nats_user, nats_password_file=str(nats_password_file))
    return common


def gateway_config(
    fleet: DeviceFleet,
    *,
    nats_url: str,
    secret_file: Path,
    listen_port: int = 8080,
    ops_port: int = 8081,
    coap_port: int | None = None,
    nats_password_file: Path | None = None,
    sole_consumer: bool = False,
    nats_user: str = SERVICE_USER,
    nats_callout_password_file: Path | None = None,
    site: str | None = None,
    device_ca_file: Path | None = None,
) -> dict[str, Any]:
    """`sole_consumer`: this gateway is the only reader of the fleet's MQTT intake. Not so on a cluster, where
    the replicas (a number the HPA may change) share it; locally one gateway runs per fleet.
    `nats_callout_password_file` set: the gateway answers the MQTT auth callout as the user of the callout's
    own account (local mode), on a second connection. `coap_port`: the UDP port of the CoAP listener (None: no
    CoAP). `device_ca_file`: the CA (PEM) of the devices' client certificates, which the gateway then asks for,
    as spec.gateway.tls.clientAuth.mode says (Optional when the fleet does not say)."""
    config = {
        **_common(nats_url, ops_port, nats_password_file, nats_user, site),
        "fleet": _resource(fleet),
        "listen_port": listen_port,
        "secret_file": str(secret_file),
        "sole_consumer": sole_consumer,
    }
    if coap_port is not None:
        config["coap_port"] = coap_port
    if nats_callout_password_file is not None:
        config.update(nats_callout_user=CALLOUT_USER, nats_callout_password_file=str(nats_callout_password_file))
    if device_ca_file is not None:
        config.update(tls_client_ca_file=str(device_ca_file), tls_client_auth=device_certificate_mode(fleet))
    return config


def device_certificate_mode(fleet: DeviceFleet) -> str:
    client_auth = fleet.spec.gateway.client_auth
    return client_auth.mode if client_auth is not None else "Optional"


def processor_config(
    fleet: DeviceFleet,
    pipeline: Pipeline,
    *,
    nats_url: str,
    replica: int = 0,
    ops_port: int = 8081,
    nats_password_file: Path | None = None,
    nats_user: str = SERVICE_USER,
    site: str | None = None,
) -> dict[str, Any]:
    return {
        **_common(nats_url, ops_port, nats_password_file, nats_user, site),
        "fleet": _resource(fleet),
        "pipeline": _resource(pipeline),
        "replica": replica,
    }


def writer_config(
    fleet: DeviceFleet,
    pipeline: Pipeline,
    *,
    nats_url: str,
    sqlite_path: Path | None = None,
    ops_port: int = 8081,
    nats_password_file: Path | None = None,
    sole_consumer: bool | None = None,
    nats_user: str = SERVICE_USER,
    site: str | None = None,
) -> dict[str, Any]:
    """`sole_consumer`: this writer reads the pipeline's consumer alone, so after a crash it resumes from the ack
    floor at once; by default, when the pipeline has one writer replica."""
    config = {
        **_common(nats_url, ops_port, nats_password_file, nats_user, site),
        "fleet": _resource(fleet),
        "pipeline": _resource(pipeline),
        "sole_consumer": pipeline.spec.writer.replicas == 1 if sole_consumer is None else sole_consumer,
    }
    if sqlite_path is not None:
        config["sqlite_path"] = str(sqlite_path)
    return config


def appapi_config(
    fleet: DeviceFleet,
    pipelines: list[Pipeline],
    *,
    nats_url: str,
    keys_file: Path,
    listen_port: int = 8090,
    ops_port: int = 8081,
    sqlite_paths: dict[str, Path] | None = None,
    nats_password_file: Path | None = None,
    nats_user: str = SERVICE_USER,
) -> dict[str, Any]:
    """The application API of `fleet`, reading the stores of `pipelines` (the fleet's)."""
    return {
        **_common(nats_url, ops_port, nats_password_file, nats_user),
        "fleet": _resource(fleet),
        "pipelines": [_resource(p) for p in pipelines],
        "listen_port": listen_port,
        "keys_file": str(keys_file),
        "sqlite_paths": {name: str(path) for name, path in (sqlite_paths or {}).items()},
    }
