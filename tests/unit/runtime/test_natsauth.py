"""nats.conf's authentication from one function for local mode and the operator, and the login services read
from their settings."""

from pathlib import Path

import pytest

from fleetflow.api import DeviceFleet
from fleetflow.runtime import natsauth
from fleetflow.runtime.settings import GatewaySettings, SettingsError

FLEET = DeviceFleet.model_validate({"metadata": {"name": "demo"}})
SEED = natsauth.new_issuer_seed()


def test_local_mode_inlines_the_values_and_lets_loopback_services_in_without_credentials() -> None:
    conf = natsauth.server_config(natsauth.ServerAuth.local("127.0.0.1", 41883, SEED, "pw"))
    assert "  listen: 127.0.0.1:41883\n  no_auth_user: mqtt-anonymous\n" in conf
    assert "\nno_auth_user: fleetflow\n" in conf
    assert f'issuer: "{natsauth.issuer_public_key(SEED)}"' in conf
    assert '{ user: fleetflow, password: "pw", allowed_connection_types: [STANDARD] }' in conf
    assert "$" not in conf


def test_environment_references_and_no_default_user_for_the_operator() -> None:
    auth = natsauth.ServerAuth(
        mqtt_listen="0.0.0.0:1883",
        issuer=natsauth.from_environment("ISSUER"),
        services_password=natsauth.from_environment("SERVICES"),
        anonymous_password=natsauth.from_environment("ANONYMOUS"),
        services_without_credentials=False,
    )
    conf = natsauth.server_config(auth)
    assert "no_auth_user: fleetflow" not in conf
    assert "issuer: $ISSUER" in conf and "password: $SERVICES," in conf and "password: $ANONYMOUS," in conf
    assert "allowed_connection_types: [MQTT]" in conf and "auth_users: [ fleetflow ]" in conf


def test_new_passwords_are_letters_and_digits_starting_with_a_letter() -> None:
    passwords = {natsauth.new_password() for _ in range(50)}
    assert len(passwords) == 50
    for password in passwords:
        assert password[0].isalpha() and password.isalnum() and password.isascii()


def settings(**login: object) -> GatewaySettings:
    return GatewaySettings(fleet=FLEET, secret_file=Path("/secret"), **login)


def test_a_service_logs_in_with_the_password_file_it_is_given(tmp_path: Path) -> None:
    assert settings().nats_login() is None, "local mode: no login"
    password_file = tmp_path / "services-password"
    password_file.write_text("Secret123\n")
    login = settings(nats_user="fleetflow", nats_password_file=password_file).nats_login()
    assert login == natsauth.NatsLogin("fleetflow", "Secret123")


def test_a_half_login_or_an_unreadable_password_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="nats_user is 'fleetflow': set both"):
        settings(nats_user="fleetflow")
    missing = tmp_path / "missing"
    with pytest.raises(SettingsError, match=f"nats_password_file = '{missing}': cannot read it"):
        settings(nats_user="fleetflow", nats_password_file=missing).nats_login()
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(SettingsError, match="is empty"):
        settings(nats_user="fleetflow", nats_password_file=empty).nats_login()
