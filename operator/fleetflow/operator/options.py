"""What an operator deployment can tune: images, resync interval, timeouts. Read from FLEETFLOW_OPERATOR_*."""

import os
import re
from dataclasses import dataclass, field

from fleetflow.operator.builders.nats import DEFAULT_EXPORTER_IMAGE
from fleetflow.operator.builders.resources import DEFAULT_RESOURCES, ResourceRequirements

DEFAULT_IMAGE = "ghcr.io/fleetflow/fleetflow:0.1.0"
DEFAULT_NATS_IMAGE = "nats:2.15.1-alpine"
SECRET_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


def parse_pull_secrets(text: str) -> tuple[str, ...]:
    """FLEETFLOW_OPERATOR_IMAGE_PULL_SECRETS: Secret names separated by commas (the chart's imagePullSecrets)."""
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    for name in names:
        if not SECRET_NAME.fullmatch(name):
            raise ValueError(
                f"FLEETFLOW_OPERATOR_IMAGE_PULL_SECRETS: {name!r} is not a Secret name: use lowercase letters, "
                "digits, '-' and '.', separated by commas, e.g. regcred,mirror-cred"
            )
    return names


@dataclass(frozen=True)
class OperatorOptions:
    """`image` runs the gateway, processor and writer; `nats_image` the managed NATS servers."""

    image: str = DEFAULT_IMAGE
    image_pull_policy: str = "IfNotPresent"
    # In every pod the operator creates, so a private registry serves the services and NATS alike.
    image_pull_secrets: tuple[str, ...] = ()
    nats_image: str = DEFAULT_NATS_IMAGE
    nats_exporter_image: str = DEFAULT_EXPORTER_IMAGE
    # Where the operator runs: fleets' NetworkPolicies let it (and only it, of other namespaces) reach NATS.
    operator_namespace: str | None = None
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
        """FLEETFLOW_OPERATOR_IMAGE, _NATS_IMAGE, _NATS_EXPORTER_IMAGE, _IMAGE_PULL_POLICY, _IMAGE_PULL_SECRETS,
        _RESYNC_SECONDS and _NAMESPACE override the defaults;
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
            nats_exporter_image=env.get("FLEETFLOW_OPERATOR_NATS_EXPORTER_IMAGE", DEFAULT_EXPORTER_IMAGE),
            operator_namespace=env.get("FLEETFLOW_OPERATOR_NAMESPACE") or None,
            image_pull_policy=env.get("FLEETFLOW_OPERATOR_IMAGE_PULL_POLICY", "IfNotPresent"),
            image_pull_secrets=parse_pull_secrets(env.get("FLEETFLOW_OPERATOR_IMAGE_PULL_SECRETS", "")),
            resync_seconds=resync_seconds,
            log_level=env.get("FLEETFLOW_LOG_LEVEL", "info"),
            otlp_endpoint=env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or None,
        )
