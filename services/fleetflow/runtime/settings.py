"""Service settings: a config file rendered from the custom resources, overridden by FLEETFLOW_* variables."""

import json
import ssl
from pathlib import Path
from typing import Any, Literal, Self

import pydantic
import yaml
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from fleetflow.api import DeviceFleet, Pipeline
from fleetflow.api.errors import describe
from fleetflow.runtime import certificates
from fleetflow.runtime.natsauth import NatsLogin


class SettingsError(ValueError):
    pass


class ServiceSettings(BaseSettings):
    """What every service reads. `FLEETFLOW_CONFIG` names the rendered config file (YAML or JSON)."""

    model_config = SettingsConfigDict(env_prefix="FLEETFLOW_", extra="forbid", env_nested_delimiter="__")

    nats_url: str = "nats://127.0.0.1:4222"
    # A NATS with authentication (the operator's, local mode's) needs a login; a test's bare nats-server does not.
    nats_user: str | None = None
    nats_password_file: Path | None = pydantic.Field(default=None, validate_default=True)
    # Set: the NATS connection is TLS, and the server's certificate must chain to this CA (PEM).
    nats_tls_ca_file: Path | None = None
    ops_host: str = "127.0.0.1"
    ops_port: int = pydantic.Field(default=8081, ge=0, le=65535)
    status_file: Path | None = None
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "console", "auto"] = "json"
    drain_timeout: float = pydantic.Field(default=20.0, gt=0)
    # The edge site of the fleet this service runs at (docs/edge.md): its streams are the site's. None: the centre.
    site: str | None = None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment overrides the rendered file, as a pod's env overrides its ConfigMap.
        return env_settings, init_settings

    @pydantic.field_validator("nats_password_file")
    @classmethod
    def _login_is_whole(cls, password_file: Path | None, info: pydantic.ValidationInfo) -> Path | None:
        if (info.data.get("nats_user") is None) != (password_file is None):
            raise ValueError(f"nats_user is {info.data.get('nats_user')!r}: set both (to log in to NATS) or neither")
        return password_file

    def nats_login(self) -> NatsLogin | None:
        """The user and password to connect with (the password read from its file now), or None."""
        return _login(self.nats_user, self.nats_password_file)

    def nats_tls(self) -> ssl.SSLContext | None:
        """The TLS context the NATS connection verifies the server with, or None for plain NATS. The CA's expiry
        is exported from here on (certificate="ca"): every service that verifies NATS loads it through this."""
        if self.nats_tls_ca_file is None:
            return None
        try:
            context = ssl.create_default_context(cafile=str(self.nats_tls_ca_file))
            certificates.record_file("ca", self.nats_tls_ca_file)
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise SettingsError(
                f"nats_tls_ca_file = {str(self.nats_tls_ca_file)!r}: cannot read a PEM CA from it ({exc})"
            ) from None
        return context

    @classmethod
    def load(cls, path: Path | None) -> Self:
        """Settings from `path` (or $FLEETFLOW_CONFIG) plus the environment; SettingsError names the problem."""
        values = read_config_file(path) if path else {}
        try:
            return cls(**values)
        except pydantic.ValidationError as exc:
            raise SettingsError(f"{path or 'environment'}: " + "; ".join(describe(exc))) from None


def _login(user: str | None, password_file: Path | None) -> NatsLogin | None:
    if user is None or password_file is None:
        return None
    try:
        return NatsLogin.from_file(user, password_file)
    except ValueError as exc:
        raise SettingsError(str(exc)) from None


def read_config_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise SettingsError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise SettingsError(f"config file {path} is not valid {path.suffix.lstrip('.') or 'YAML'}: {exc}") from None
    if not isinstance(data, dict):
        raise SettingsError(f"config file {path} must hold a mapping, not {type(data).__name__}")
    return data


class GatewaySettings(ServiceSettings):
    fleet: DeviceFleet
    listen_host: str = "127.0.0.1"
    listen_port: int = pydantic.Field(default=8080, ge=0, le=65535)
    secret_file: Path
    max_publishes_in_flight: int = pydantic.Field(default=1024, ge=1)
    # Device connectivity beyond HTTP (see docs/devices.md): None turns a listener or the buffer off.
    grpc_port: int | None = pydantic.Field(default=None, ge=0, le=65535)
    coap_port: int | None = pydantic.Field(default=None, ge=0, le=65535)  # UDP
    # WebSocket sessions (on listen_port) get a ping this often; one that answers none within half of it is closed.
    ws_heartbeat: float = pydantic.Field(default=20.0, ge=0.1, le=3600)
    tls_cert_file: Path | None = None  # with tls_key_file: HTTP and gRPC over TLS only
    tls_key_file: Path | None = None
    # Set (with the files above): devices may identify themselves with an X.509 certificate this CA (PEM) signed,
    # its subject CN being the device id (spec.gateway.tls.clientAuth). "Required": HTTP, WebSocket and gRPC
    # refuse a TLS handshake without one; "Optional": devices without one present their token.
    tls_client_ca_file: Path | None = None
    tls_client_auth: Literal["Optional", "Required"] = "Optional"
    buffer_dir: Path | None = None  # store-and-forward while NATS is unreachable
    buffer_max_bytes: int = pydantic.Field(default=256 * 1024 * 1024, ge=4096)
    mqtt_issuer_seed_file: Path | None = None  # set: serve MQTT devices (auth callout + intake + commands)
    sole_consumer: bool = False  # the only gateway reading the MQTT intake (see jetstream.resume_from_ack_floor)
    # Where the callout has an account of its own (local mode), the gateway answers it on a second connection,
    # as this user; unset, on its one connection.
    nats_callout_user: str | None = None
    nats_callout_password_file: Path | None = pydantic.Field(default=None, validate_default=True)

    @pydantic.field_validator("nats_callout_password_file")
    @classmethod
    def _callout_login_is_whole(cls, password_file: Path | None, info: pydantic.ValidationInfo) -> Path | None:
        if (info.data.get("nats_callout_user") is None) != (password_file is None):
            user = info.data.get("nats_callout_user")
            raise ValueError(f"nats_callout_user is {user!r}: set both (to answer the callout as it) or neither")
        return password_file

    def nats_callout_login(self) -> NatsLogin | None:
        """The login of the connection that answers the MQTT auth callout, or None to answer on the main one."""
        return _login(self.nats_callout_user, self.nats_callout_password_file)

    @pydantic.model_validator(mode="after")
    def _client_auth_needs_tls(self) -> Self:
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError(f"tls_client_ca_file = {str(self.tls_client_ca_file)!r} asks devices for certificates, "
                             "which needs TLS: set tls_cert_file and tls_key_file too")  # fmt: skip
        return self

    @property
    def device_certificates_required(self) -> bool:
        return self.tls_client_ca_file is not None and self.tls_client_auth == "Required"


class ProcessorSettings(ServiceSettings):
    fleet: DeviceFleet
    pipeline: Pipeline
    replica: int = pydantic.Field(default=0, ge=0)
    fetch_batch: int = pydantic.Field(default=256, ge=1)
    # Seconds between state checkpoints: a crash replays at most this much input; bigger state, longer interval.
    checkpoint_interval: float = pydantic.Field(default=2.0, gt=0, le=3600)


class WriterSettings(ServiceSettings):
    fleet: DeviceFleet
    pipeline: Pipeline
    sqlite_path: Path | None = None
    cassandra_credentials_dir: Path | None = None
    sole_consumer: bool = False  # the only writer of its pipeline (see jetstream.resume_from_ack_floor)


class AppApiSettings(ServiceSettings):
    """The application API of one fleet, reading the stores of its pipelines."""

    fleet: DeviceFleet
    pipelines: list[Pipeline] = []
    listen_host: str = "127.0.0.1"
    listen_port: int = pydantic.Field(default=8090, ge=0, le=65535)
    keys_file: Path  # the fleet's API keys, hashed (a mounted Secret on a cluster)
    sqlite_paths: dict[str, Path] = {}  # per pipeline name, where its SQLite sink has no path of its own
    cassandra_credentials_dir: Path | None = None
    # A device whose latest reading arrived longer ago than this is reported offline.
    offline_after_seconds: float = pydantic.Field(default=300.0, gt=0)
    # Live updates (Server-Sent Events): connections at once, events waiting per connection, how long a full queue
    # waits for its client before the connection ends (the client resumes from its last id), and how often an
    # idle connection gets a keep-alive.
    max_event_streams: int = pydantic.Field(default=256, ge=1)
    event_queue: int = pydantic.Field(default=1024, ge=1)
    event_patience_seconds: float = pydantic.Field(default=10.0, gt=0, le=600)
    event_keepalive_seconds: float = pydantic.Field(default=15.0, gt=0, le=300)

    @pydantic.model_validator(mode="after")
    def _pipelines_of_the_fleet(self) -> Self:
        for pipeline in self.pipelines:
            if pipeline.fleet != self.fleet.name:
                raise ValueError(f"pipeline {pipeline.name!r} belongs to fleet {pipeline.fleet!r}, not to "
                                 f"{self.fleet.name!r} whose API this is")  # fmt: skip
        return self
