"""nats.conf's authentication from one function for local mode and the operator, and the login services read
from their settings."""

from pathlib import Path

import pytest

from fleetflow.api import DeviceFleet
from fleetflow.runtime import natsauth
from fleetflow.runtime.settings import GatewaySettings, SettingsError

FLEET = DeviceFleet.model_validate({"metadata": {"name": "demo"}})
SEED = natsauth.new_issuer_seed()


def test_local_mode_inlines_the_values_and_gives_the_callout_an_account_of_its_own() -> None:
    users = (natsauth.ServiceUser("gateway", '"gw"'), natsauth.ServiceUser("writer", '"wr"'))
    callout = natsauth.ServiceUser("auth", '"au"')
    conf = natsauth.server_config(natsauth.ServerAuth.local("127.0.0.1", 41883, SEED, users, callout))
    assert "  listen: 127.0.0.1:41883\n  no_auth_user: mqtt-anonymous\n" in conf
    assert "\nno_auth_user" not in conf, "no plain-NATS connection without credentials"
    assert f'issuer: "{natsauth.issuer_public_key(SEED)}"' in conf
    assert '      { user: writer, password: "wr", allowed_connection_types: [STANDARD] },\n' in conf
    assert '  AUTH { users: [ { user: auth, password: "au", allowed_connection_types: [STANDARD] } ] }\n' in conf
    assert "auth_users: [ gateway, writer, auth ]\n    account: AUTH\n" in conf
    assert "$" not in conf


def test_environment_references_and_one_services_user_that_serves_the_callout_for_the_operator() -> None:
    auth = natsauth.ServerAuth(
        mqtt_listen="0.0.0.0:1883",
        issuer=natsauth.from_environment("ISSUER"),
        users=(natsauth.ServiceUser("fleetflow", natsauth.from_environment("SERVICES")),),
        anonymous_password=natsauth.from_environment("ANONYMOUS"),
    )
    conf = natsauth.server_config(auth)
    assert "no_auth_user: fleetflow" not in conf and "AUTH" not in conf
    assert "issuer: $ISSUER" in conf and "password: $SERVICES," in conf and "password: $ANONYMOUS," in conf
    assert "allowed_connection_types: [MQTT]" in conf
    assert "auth_users: [ fleetflow ]\n    account: FLEETFLOW\n" in conf


def test_new_passwords_are_letters_and_digits_starting_with_a_letter() -> None:
    passwords = {natsauth.new_password() for _ in range(50)}
    assert len(passwords) == 50
    for password in passwords:
        assert password[0].isalpha() and password.isalnum() and password.isascii()


def settings(**login: object) -> GatewaySettings:
    return GatewaySettings(fleet=FLEET, secret_file=Path("/secret"), **login)


def test_a_service_logs_in_with_the_password_file_it_is_given(tmp_path: Path) -> None:
    assert settings().nats_login() is None, "a bare nats-server (tests): no login"
    password_file = tmp_path / "services-password"
    password_file.write_text("Secret123\n")
    login = settings(nats_user="fleetflow", nats_password_file=password_file).nats_login()
    assert login == natsauth.NatsLogin("fleetflow", "Secret123")


def test_the_gateway_answers_the_callout_as_its_user_where_the_callout_has_its_own_account(tmp_path: Path) -> None:
    assert settings().nats_callout_login() is None, "answered on the gateway's one connection"
    password_file = tmp_path / "auth.password"
    password_file.write_text("Callout123\n")
    login = settings(nats_callout_user="auth", nats_callout_password_file=password_file).nats_callout_login()
    assert login == natsauth.NatsLogin("auth", "Callout123")
    with pytest.raises(ValueError, match="nats_callout_user is 'auth': set both"):
        settings(nats_callout_user="auth")


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
