"""Service settings: the rendered config file, overridden by FLEETFLOW_* variables, with clear errors."""

from pathlib import Path

import pytest
import yaml

from fleetflow.api import DeviceFleet
from fleetflow.runtime import config
from fleetflow.runtime.settings import GatewaySettings, SettingsError

FLEET = DeviceFleet.model_validate({"metadata": {"name": "demo", "resourceVersion": "7"}, "status": {}})


def write_config(tmp_path: Path) -> Path:
    rendered = config.gateway_config(FLEET, nats_url="nats://nats:4222", secret_file=Path("/secrets/key"))
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(rendered))
    return path


def test_rendered_config_loads_and_carries_only_the_spec(tmp_path: Path) -> None:
    settings = GatewaySettings.load(write_config(tmp_path))
    assert settings.nats_url == "nats://nats:4222"
    assert settings.fleet.name == "demo" and settings.fleet.status is None
    assert settings.secret_file == Path("/secrets/key")


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETFLOW_NATS_URL", "nats://elsewhere:4222")
    monkeypatch.setenv("FLEETFLOW_LISTEN_PORT", "9999")
    settings = GatewaySettings.load(write_config(tmp_path))
    assert (settings.nats_url, settings.listen_port) == ("nats://elsewhere:4222", 9999)


def test_bad_values_name_the_field(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETFLOW_LOG_LEVEL", "loud")
    with pytest.raises(SettingsError, match="log_level = 'loud': Input should be 'debug', 'info'"):
        GatewaySettings.load(write_config(tmp_path))


@pytest.mark.parametrize(("content", "detail"), [("- a list", "must hold a mapping"), ("a: [", "is not valid")])
def test_bad_files_are_named(tmp_path: Path, content: str, detail: str) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(content)
    with pytest.raises(SettingsError, match=detail):
        GatewaySettings.load(path)
    with pytest.raises(SettingsError, match="cannot read config file"):
        GatewaySettings.load(tmp_path / "missing.yaml")
