"""A pipeline's processor (a StatefulSet: each pod's ordinal picks its partitions) and writer (a Deployment)."""

from collections.abc import Sequence
from pathlib import Path

from fleetflow.api import DeviceFleet, Pipeline
from fleetflow.operator import nats_credentials
from fleetflow.operator.builders import nats, shaping
from fleetflow.operator.builders.common import (
    CONFIG_KEY,
    OPS_PORT,
    JsonObject,
    component_hash,
    config_map,
    metadata,
    namespace_of,
    pdb,
    pipeline_labels,
    pod_template,
    render_config,
    selector_labels,
    service_container,
    service_volumes,
)
from fleetflow.runtime.config import processor_config, writer_config

# Kubernetes 1.28+ labels every StatefulSet pod with its ordinal; the processor reads it as its replica number.
POD_INDEX_LABEL = "apps.kubernetes.io/pod-index"
STORE_DIR = "/var/lib/fleetflow"
CASSANDRA_CREDENTIALS_DIR = "/var/run/fleetflow/cassandra"


def processor_name(pipeline: Pipeline) -> str:
    return f"{pipeline.name}-processor"


def processor_config_map_name(pipeline: Pipeline) -> str:
    return f"{pipeline.name}-processor-config"


def writer_name(pipeline: Pipeline) -> str:
    return f"{pipeline.name}-writer"


def writer_config_map_name(pipeline: Pipeline) -> str:
    return f"{pipeline.name}-writer-config"


# What each component never reads, so a change there does not restart it: the gateway's scale, the device auth
# and the managed NATS's servers and volume (both reach NATS through its Service); and the other component's part
# of the pipeline. The writer provisions the streams and consumers once at start, from whatever its ConfigMap
# then says, so the processors' share of it need not restart it.
FLEET_UNREAD = [("fleet", "spec", "gateway"), ("fleet", "spec", "auth"), ("fleet", "spec", "nats")]
PROCESSOR_UNREAD = [*FLEET_UNREAD, ("pipeline", "spec", "sink"), ("pipeline", "spec", "writer")]
WRITER_UNREAD = [
    *FLEET_UNREAD,
    ("fleet", "spec", "devices"),
    ("pipeline", "spec", "steps"),
    ("pipeline", "spec", "processor"),
]


def processor_service_config(fleet: DeviceFleet, pipeline: Pipeline) -> JsonObject:
    config = processor_config(
        fleet, pipeline, nats_url=nats.nats_url(fleet), nats_password_file=nats.services_password_file(fleet)
    )
    return {**config, **nats.client_settings(fleet)}


def processor_rendered_config(fleet: DeviceFleet, pipeline: Pipeline) -> str:
    return render_config(processor_service_config(fleet, pipeline))


def processor_hash(fleet: DeviceFleet, pipeline: Pipeline) -> str:
    return component_hash(processor_service_config(fleet, pipeline), PROCESSOR_UNREAD)


def sqlite_path(pipeline: Pipeline) -> Path | None:
    """On a cluster a SQLite sink lives in the writer pod's own volume: for trying things out, not for keeps."""
    if pipeline.spec.sink.kind != "sqlite":
        return None
    configured = pipeline.spec.sink.sqlite.path if pipeline.spec.sink.sqlite else None
    return Path(configured) if configured else Path(STORE_DIR) / "store.sqlite3"


def writer_service_config(fleet: DeviceFleet, pipeline: Pipeline) -> JsonObject:
    config = writer_config(
        fleet,
        pipeline,
        nats_url=nats.nats_url(fleet),
        sqlite_path=sqlite_path(pipeline),
        nats_password_file=nats.services_password_file(fleet),
    )
    if pipeline.spec.sink.cassandra and pipeline.spec.sink.cassandra.credentials_secret_ref:
        config["cassandra_credentials_dir"] = CASSANDRA_CREDENTIALS_DIR
    return {**config, **nats.client_settings(fleet)}


def writer_rendered_config(fleet: DeviceFleet, pipeline: Pipeline) -> str:
    return render_config(writer_service_config(fleet, pipeline))


def writer_hash(fleet: DeviceFleet, pipeline: Pipeline) -> str:
    return component_hash(writer_service_config(fleet, pipeline), WRITER_UNREAD)


def processor_config_map(fleet: DeviceFleet, pipeline: Pipeline) -> JsonObject:
    data = {CONFIG_KEY: processor_rendered_config(fleet, pipeline)}
    return config_map(
        processor_config_map_name(pipeline), namespace_of(pipeline), pipeline_labels(pipeline, "processor"), data
    )


def writer_config_map(fleet: DeviceFleet, pipeline: Pipeline) -> JsonObject:
    data = {CONFIG_KEY: writer_rendered_config(fleet, pipeline)}
    return config_map(
        writer_config_map_name(pipeline), namespace_of(pipeline), pipeline_labels(pipeline, "writer"), data
    )


def processor_service(pipeline: Pipeline) -> JsonObject:
    """The headless Service a StatefulSet requires; it also gives each replica's metrics a stable name."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(processor_name(pipeline), namespace_of(pipeline), pipeline_labels(pipeline, "processor")),
        "spec": {
            "clusterIP": "None",
            "selector": selector_labels(pipeline.name, "processor"),
            "ports": [{"name": "ops", "port": OPS_PORT, "targetPort": "ops", "protocol": "TCP"}],
        },
    }


def writer_service(pipeline: Pipeline) -> JsonObject:
    """A headless Service over the writer pods: nothing calls the writer, but a ServiceMonitor scrapes its ops port."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(writer_name(pipeline), namespace_of(pipeline), pipeline_labels(pipeline, "writer")),
        "spec": {
            "clusterIP": "None",
            "selector": selector_labels(pipeline.name, "writer"),
            "ports": [{"name": "ops", "port": OPS_PORT, "targetPort": "ops", "protocol": "TCP"}],
        },
    }


def processor_statefulset(
    fleet: DeviceFleet,
    pipeline: Pipeline,
    image: str,
    pull_policy: str,
    resources: JsonObject,
    env: Sequence[JsonObject] = (),
    pull_secrets: Sequence[str] = (),
) -> JsonObject:
    """One pod per partition share; pod N consumes the partitions p with p % replicas == N."""
    replica_env = {
        "name": "FLEETFLOW_REPLICA",
        "valueFrom": {"fieldRef": {"fieldPath": f"metadata.labels['{POD_INDEX_LABEL}']"}},
    }
    container = service_container("processor", image, pull_policy, resources, ports=[], env=[replica_env, *env])
    volumes, mounts = _nats_login_volumes(fleet)
    container["volumeMounts"].extend(mounts)
    statefulset = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": metadata(processor_name(pipeline), namespace_of(pipeline), pipeline_labels(pipeline, "processor")),
        "spec": {
            "replicas": pipeline.spec.processor.replicas,
            "serviceName": processor_name(pipeline),
            # Replicas share nothing but the stream, so they need not start one after another.
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": selector_labels(pipeline.name, "processor")},
            "template": pod_template(
                pipeline_labels(pipeline, "processor"),
                [container],
                [*service_volumes(processor_config_map_name(pipeline)), *volumes],
                processor_hash(fleet, pipeline),
                terminationGracePeriodSeconds=30,
            ),
        },
    }
    selector = selector_labels(pipeline.name, "processor")
    return shaping.shaped(statefulset, "processor", pipeline.spec.processor.pod, selector, pull_secrets)


def _nats_login_volumes(fleet: DeviceFleet) -> tuple[list[JsonObject], list[JsonObject]]:
    """(volumes, mounts) with what the services log in to NATS with: a managed NATS's services password (it has
    no default user), or an external NATS's password; and the CA they verify the server with."""
    volumes, mounts = nats.client_volumes(fleet)
    if not nats.managed(fleet):
        return volumes, mounts
    password = nats_credentials.volume(fleet, [nats_credentials.SERVICES_PASSWORD_KEY])
    return [password, *volumes], [nats_credentials.mount(), *mounts]


def _writer_volumes(pipeline: Pipeline) -> tuple[list[JsonObject], list[JsonObject]]:
    """Extra (volumes, mounts) of the writer: a SQLite directory or the Cassandra credentials."""
    sink = pipeline.spec.sink
    if sink.kind == "sqlite":
        path = sqlite_path(pipeline)
        assert path is not None
        return [{"name": "store", "emptyDir": {}}], [{"name": "store", "mountPath": str(path.parent)}]
    if sink.cassandra and sink.cassandra.credentials_secret_ref:
        ref = sink.cassandra.credentials_secret_ref
        volume = {"name": "cassandra-credentials", "secret": {"secretName": ref.name}}
        return [volume], [{"name": "cassandra-credentials", "mountPath": CASSANDRA_CREDENTIALS_DIR, "readOnly": True}]
    return [], []


def writer_deployment(
    fleet: DeviceFleet,
    pipeline: Pipeline,
    image: str,
    pull_policy: str,
    resources: JsonObject,
    env: Sequence[JsonObject] = (),
    pull_secrets: Sequence[str] = (),
) -> JsonObject:
    """The writer migrates its store's schema at start, then persists the pipeline's records."""
    container = service_container("writer", image, pull_policy, resources, ports=[], env=list(env))
    store_volumes, store_mounts = _writer_volumes(pipeline)
    login_volumes, login_mounts = _nats_login_volumes(fleet)
    volumes = [*store_volumes, *login_volumes]
    container["volumeMounts"].extend([*store_mounts, *login_mounts])
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(writer_name(pipeline), namespace_of(pipeline), pipeline_labels(pipeline, "writer")),
        "spec": {
            "replicas": pipeline.spec.writer.replicas,
            "selector": {"matchLabels": selector_labels(pipeline.name, "writer")},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": pod_template(
                pipeline_labels(pipeline, "writer"),
                [container],
                [*service_volumes(writer_config_map_name(pipeline)), *volumes],
                writer_hash(fleet, pipeline),
                terminationGracePeriodSeconds=30,
            ),
        },
    }
    selector = selector_labels(pipeline.name, "writer")
    return shaping.shaped(deployment, "writer", pipeline.spec.writer.pod, selector, pull_secrets)


def processor_pdb(pipeline: Pipeline) -> JsonObject:
    """At most one processor is evicted at a time: its partitions wait for it (and only for it) to come back."""
    return pdb(processor_name(pipeline), namespace_of(pipeline), pipeline_labels(pipeline, "processor"),
               selector_labels(pipeline.name, "processor"))  # fmt: skip


def writer_pdb(pipeline: Pipeline) -> JsonObject:
    """At most one writer is evicted at a time; what it had fetched and not acknowledged is redelivered."""
    return pdb(writer_name(pipeline), namespace_of(pipeline), pipeline_labels(pipeline, "writer"),
               selector_labels(pipeline.name, "writer"))  # fmt: skip


def pipeline_objects(
    fleet: DeviceFleet,
    pipeline: Pipeline,
    image: str,
    pull_policy: str,
    resources: dict[str, JsonObject],
    env: Sequence[JsonObject] = (),
    pull_secrets: Sequence[str] = (),
) -> list[JsonObject]:
    """The processor's and the writer's objects in apply order."""
    return [
        processor_config_map(fleet, pipeline),
        processor_service(pipeline),
        processor_statefulset(fleet, pipeline, image, pull_policy, resources["processor"], env, pull_secrets),
        processor_pdb(pipeline),
        writer_config_map(fleet, pipeline),
        writer_service(pipeline),
        writer_deployment(fleet, pipeline, image, pull_policy, resources["writer"], env, pull_secrets),
        writer_pdb(pipeline),
    ]
