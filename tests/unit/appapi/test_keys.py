"""API keys: stored hashed, scoped, revocable; the service sees a change of the file at once."""

import stat
from pathlib import Path

import pytest

from fleetflow.appapi import keys
from fleetflow.runtime.httpserver import HttpRefusal


def test_a_key_is_stored_only_as_its_hash_in_a_private_file(tmp_path: Path) -> None:
    path = keys.keys_file(tmp_path, "demo")
    key, text = keys.create_key(path, "demo", "command", "dashboard")

    stored = path.read_text()
    assert text.startswith(f"ffk_{key.id}_") and text.split("_", 2)[2] not in stored
    assert key.sha256 in stored
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [k.summary()["name"] for k in keys.read_keys(path)] == ["dashboard"]


def test_scopes_include_the_ones_before_them(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    api = keys.ApiKeys(path, "demo")
    texts = {scope: keys.create_key(path, "demo", scope)[1] for scope in keys.SCOPES}
    for held in keys.SCOPES:
        for needed in keys.SCOPES:
            allowed = keys.SCOPES.index(held) >= keys.SCOPES.index(needed)
            if allowed:
                assert api.authenticate(f"Bearer {texts[held]}", needed).scope == held
            else:
                with pytest.raises(HttpRefusal) as refused:
                    api.authenticate(f"Bearer {texts[held]}", needed)
                assert refused.value.status == 403


def test_a_wrong_secret_an_unknown_scope_and_an_unknown_id(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    _, text = keys.create_key(path, "demo", "read")
    with pytest.raises(HttpRefusal, match="not a key of fleet 'demo'"):
        keys.ApiKeys(path, "demo").authenticate(f"Bearer {text[:-1]}x", "read")
    with pytest.raises(keys.KeyRequestError, match="scope 'write' is not one of read, command, admin"):
        keys.create_key(path, "demo", "write")
    with pytest.raises(keys.KeyRequestError, match="no API key with id 'nope'"):
        keys.revoke_key(path, "nope")


def test_revocation_is_seen_by_a_running_service_without_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    key, text = keys.create_key(path, "demo", "read")
    api = keys.ApiKeys(path, "demo")
    assert api.authenticate(f"Bearer {text}", "read").id == key.id

    assert keys.revoke_key(path, key.id).revoked_ms is not None
    with pytest.raises(HttpRefusal, match="revoked"):
        api.authenticate(f"Bearer {text}", "read")


def test_a_damaged_key_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match=f"API key file {path} is not valid"):
        keys.read_keys(path)
