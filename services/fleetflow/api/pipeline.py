"""The Pipeline resource: what happens to one fleet's telemetry and where the results are stored."""

from typing import Literal, Self

from pydantic import ConfigDict, Field, model_validator

from fleetflow.api import quantities
from fleetflow.api.common import Condition, Duration, Metadata, Model, ObjectRef, SecretKeyRef, TableName
from fleetflow.api.devicefleet import ComponentStatus
from fleetflow.api.overrides import PodOverrides
from fleetflow.api.steps import Step, check_steps


class Tables(Model):
    readings: TableName = "readings"
    aggregates: TableName = "window_aggregates"
    alerts: TableName = "alerts"
    latest: TableName = "device_latest"
    commands: TableName = "command_log"


class SqliteSink(Model):
    path: str | None = Field(default=None, description="Database file; default <data-dir>/store.sqlite3.")


class CassandraSink(Model):
    contact_points: list[str] = Field(min_length=1)
    port: int = Field(default=9042, ge=1, le=65535)
    local_dc: str = Field(min_length=1)
    keyspace: TableName = "fleetflow"
    replication: dict[str, int] = Field(
        default_factory=dict, description="Replicas per datacenter (NetworkTopologyStrategy)."
    )
    consistency: Literal["ONE", "LOCAL_ONE", "LOCAL_QUORUM", "QUORUM", "EACH_QUORUM", "ALL"] = "LOCAL_QUORUM"
    credentials_secret_ref: SecretKeyRef | None = None
    bucket: Duration = Field(default="1d", description="Time bucket of the readings partitions.")


class SinkSpec(Model):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.kind != 'cassandra' || has(self.cassandra)",
                    "message": "sink.kind is 'cassandra' but sink.cassandra is missing",
                },
                {
                    "rule": "self.kind == 'cassandra' || !has(self.cassandra)",
                    "message": "sink.cassandra is set but sink.kind is 'sqlite'",
                },
            ]
        }
    )

    kind: Literal["sqlite", "cassandra"] = "sqlite"
    ttl: Duration = Field(default="30d", description="How long stored rows live.")
    tables: Tables = Field(default_factory=Tables)
    sqlite: SqliteSink | None = None
    cassandra: CassandraSink | None = None

    @model_validator(mode="after")
    def _settings_match_kind(self) -> Self:
        if self.kind == "cassandra" and self.cassandra is None:
            raise ValueError("sink.kind is 'cassandra' but sink.cassandra is missing")
        if self.kind == "sqlite" and self.cassandra is not None:
            raise ValueError("sink.cassandra is set but sink.kind is 'sqlite'; set kind: cassandra to use it")
        return self

    @property
    def ttl_seconds(self) -> float:
        return quantities.parse_duration(self.ttl)


class ProcessorSpec(Model):
    replicas: int = Field(default=1, ge=1, le=64, description="Each replica takes a share of the partitions.")
    pod: PodOverrides = Field(default_factory=PodOverrides, description="Shape the processor pods (cluster only).")


class WriterSpec(Model):
    replicas: int = Field(default=1, ge=1, le=64)
    batch_messages: int = Field(default=256, ge=1, le=10000, description="Messages fetched per write.")
    pod: PodOverrides = Field(default_factory=PodOverrides, description="Shape the writer pods (cluster only).")


class DeliverySpec(Model):
    """How the pipeline's durable consumers redeliver; after `maxDeliver` a message is dead-lettered."""

    max_deliver: int = Field(default=5, ge=1, le=1000)
    ack_wait: Duration = "30s"
    max_ack_pending: int = Field(default=4096, ge=1, le=1000000)
    delete_on_removal: bool = Field(
        default=False,
        description="Delete the pipeline's stream and durable consumers when the Pipeline is deleted.",
    )

    @property
    def ack_wait_seconds(self) -> float:
        return quantities.parse_duration(self.ack_wait)


class PipelineSpec(Model):
    fleet_ref: ObjectRef
    steps: list[Step] = Field(default_factory=list, description="What happens to each reading, in order.")
    sink: SinkSpec = Field(default_factory=SinkSpec)
    processor: ProcessorSpec = Field(default_factory=ProcessorSpec)
    writer: WriterSpec = Field(default_factory=WriterSpec)
    delivery: DeliverySpec = Field(default_factory=DeliverySpec)

    @model_validator(mode="after")
    def _steps_fit(self) -> Self:
        check_steps(self.steps, self.processor.replicas)
        return self


class PipelineStatus(Model):
    observed_generation: int | None = None
    conditions: list[Condition] = Field(default_factory=list)
    components: list[ComponentStatus] = Field(default_factory=list)
    edge_sites: list[str] = Field(
        default_factory=list,
        description="The fleet's edge sites that run this pipeline's processors instead of the centre (its "
        "components say what runs here); empty: it runs in the centre.",
    )


class Pipeline(Model):
    api_version: Literal["fleetflow.io/v1alpha1"] = "fleetflow.io/v1alpha1"
    kind: Literal["Pipeline"] = "Pipeline"
    metadata: Metadata
    spec: PipelineSpec
    status: PipelineStatus | None = None

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def fleet(self) -> str:
        return self.spec.fleet_ref.name
