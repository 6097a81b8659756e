"""What an operator deployment can tune: images, resync interval, timeouts. Read from FLEETFLOW_OPERATOR_*."""

import os
from dataclasses import dataclass, field

from fleetflow.operator.builders.resources import DEFAULT_RESOURCES, ResourceRequirements

DEFAULT_IMAGE = "ghcr.io/fleetflow/fleetflow:0.1.0"
DEFAULT_NATS_IMAGE = "nats:2.15.1-alpine"


@dataclass(frozen=True)
class OperatorOptions:
    """`image` runs the gateway, processor and writer; `nats_image` the managed NATS servers."""

    image: str = DEFAULT_IMAGE
    image_pull_policy: str = "IfNotPresent"
    nats_image: str = DEFAULT_NATS_IMAGE
    resync_seconds: float = 30.0
    nats_timeout_seconds: float = 3.0
    resources: dict[str, ResourceRequirements] = field(default_factory=lambda: dict(DEFAULT_RESOURCES))
    log_level: str = "info"
    otlp_endpoint: str | None = None

    def service_env(self) -> list[dict[str, str]]:
        """What the operator passes on to every gateway, processor and writer: its log level and OTLP endpoint."""
        env = [{"name": "FLEETFLOW_LOG_LEVEL", "value": self.log_level}]
        if self.otlp_endpoint:
            env.append({"name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": self.otlp_endpoint})
        return env

    @classmethod
    def from_environment(cls) -> "OperatorOptions":
        """FLEETFLOW_OPERATOR_IMAGE, _NATS_IMAGE, _IMAGE_PULL_POLICY and _RESYNC_SECONDS override the defaults;
        FLEETFLOW_LOG_LEVEL and OTEL_EXPORTER_OTLP_ENDPOINT are passed on to the services."""
        env = os.environ
        resync = env.get("FLEETFLOW_OPERATOR_RESYNC_SECONDS", str(cls.resync_seconds))
        try:
            resync_seconds = float(resync)
        except ValueError:
            raise ValueError(f"FLEETFLOW_OPERATOR_RESYNC_SECONDS = {resync!r}: expected seconds, e.g. 30") from None
        if resync_seconds <= 0:
            raise ValueError(f"FLEETFLOW_OPERATOR_RESYNC_SECONDS = {resync!r}: must be greater than 0")
        return cls(
            image=env.get("FLEETFLOW_OPERATOR_IMAGE", DEFAULT_IMAGE),
            nats_image=env.get("FLEETFLOW_OPERATOR_NATS_IMAGE", DEFAULT_NATS_IMAGE),
            image_pull_policy=env.get("FLEETFLOW_OPERATOR_IMAGE_PULL_POLICY", "IfNotPresent"),
            resync_seconds=resync_seconds,
            log_level=env.get("FLEETFLOW_LOG_LEVEL", "info"),
            otlp_endpoint=env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or None,
        )
