"""`fleetflow edge up` refuses what cannot run in one line naming the value and what is accepted, before it starts
anything (docs/edge.md)."""

from pathlib import Path

from tests.support.cli import fleetflow, one_line_error

ROOT = Path(__file__).resolve().parents[3]
DEPOT, QUICKSTART = ROOT / "examples" / "edge-depot", ROOT / "examples" / "quickstart"


def test_bad_hub_urls_credentials_and_fleets_are_refused_in_one_line(tmp_path: Path) -> None:
    password = tmp_path / "site.password"
    password.write_text("Abc123\n")
    data = ("--data-dir", tmp_path / "site")
    result = fleetflow("edge", "up", DEPOT, "--hub", "hub.example:7422", "--credentials", password, *data)
    one_line_error(result, 2, "--hub 'hub.example:7422'", "nats://HOST:PORT")
    result = fleetflow("edge", "up", DEPOT, "--hub", "nats://127.0.0.1:7422", "--credentials", tmp_path / "no", *data)
    one_line_error(result, 2, "--credentials", "cannot read it")
    result = fleetflow("edge", "up", DEPOT, "--hub", "nats://127.0.0.1:7422", "--credentials", password,
                       "--site", "depot-b", *data)  # fmt: skip
    one_line_error(result, 2, "--site 'depot-b'", "declares sites depot-a")
    result = fleetflow("edge", "up", QUICKSTART, "--hub", "nats://127.0.0.1:7422", "--credentials", password, *data)
    one_line_error(result, 2, "fleets with sites here are none")
    assert not (tmp_path / "site").exists(), "a refused command must not create the data dir"


def test_a_hub_ca_is_refused_without_tls_or_without_a_file(tmp_path: Path) -> None:
    password = tmp_path / "site.password"
    password.write_text("Abc123\n")
    ca = tmp_path / "ca.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    data = ("--data-dir", tmp_path / "site")
    result = fleetflow("edge", "up", DEPOT, "--hub", "nats://127.0.0.1:7422", "--hub-ca", ca, "--credentials",
                       password, *data)  # fmt: skip
    one_line_error(result, 2, f"--hub-ca '{ca}'", "only for a tls:// hub")
    result = fleetflow("edge", "up", DEPOT, "--hub", "tls://127.0.0.1:7422", "--hub-ca", tmp_path / "none.crt",
                       "--credentials", password, *data)  # fmt: skip
    one_line_error(result, 2, "--hub-ca", "no such file")
    assert not (tmp_path / "site").exists(), "a refused command must not create the data dir"


def test_revoking_a_site_forgets_its_password_and_says_how_to_readmit_it(tmp_path: Path) -> None:
    passwords = tmp_path / "hub" / "secrets" / "sites"
    passwords.mkdir(parents=True)
    (passwords / "depot-depot-a.password").write_text("Abc123\n")
    result = fleetflow("edge", "revoke", DEPOT, "--data-dir", tmp_path / "hub")
    assert result.returncode == 0, result.stderr
    assert "site depot-a of fleet depot revoked" in result.stdout and "depot-depot-a.revoked" in result.stdout
    assert not (passwords / "depot-depot-a.password").exists() and (passwords / "depot-depot-a.revoked").exists()
    result = fleetflow("edge", "revoke", DEPOT, "--site", "depot-b", "--data-dir", tmp_path / "hub")
    one_line_error(result, 2, "--site 'depot-b'", "declares sites depot-a")
