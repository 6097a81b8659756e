"""A new user's mistakes get one line on stderr that says what to do, and an exit code; never a traceback.

These need no running platform: a data dir that is missing, empty, or left behind by a platform that was
killed (endpoints.json naming ports nobody listens on)."""

import json
import time
from pathlib import Path

import pytest

from fleetflow.local import natslogins
from fleetflow.local.natsserver import free_port
from fleetflow.runtime import credentials
from tests.support.cli import fleetflow, one_line_error


@pytest.fixture
def fleet_ran_here(tmp_path: Path) -> Path:
    """A data dir where fleet `demo` ran (its secret is kept) and which nothing runs any more."""
    data_dir = tmp_path / "data"
    credentials.ensure_local_secret(data_dir, "demo")
    return data_dir


@pytest.fixture
def killed_platform(fleet_ran_here: Path) -> Path:
    """endpoints.json as a `fleetflow up` that was killed -9 leaves it: every port in it is dead."""
    dead = f"127.0.0.1:{free_port()}"
    endpoints = {"nats": {"url": f"nats://{dead}"}, "services": {},
                 "fleets": {"demo": {"http": f"http://{dead}", "grpc": dead, "mqtt": f"mqtt://{dead}"}}}  # fmt: skip
    (fleet_ran_here / "endpoints.json").write_text(json.dumps(endpoints))
    natslogins.ensure_passwords(fleet_ran_here)  # as the killed `fleetflow up` left them
    return fleet_ran_here


def test_version() -> None:
    result = fleetflow("--version")
    assert result.returncode == 0 and result.stdout.startswith("fleetflow 0."), result


def test_token_of_an_unknown_fleet_is_refused_instead_of_inventing_a_secret(fleet_ran_here: Path) -> None:
    one_line_error(fleetflow("token", "dmeo", "truck-7", "--data-dir", fleet_ran_here), 2,
                   "no secret for fleet 'dmeo'", "fleets known there: demo", "--create")  # fmt: skip
    assert not credentials.local_secret_path(fleet_ran_here, "dmeo").exists()


def test_token_with_a_wrong_data_dir_is_refused(tmp_path: Path) -> None:
    one_line_error(fleetflow("token", "demo", "truck-7", "--data-dir", tmp_path / "nope"), 2,
                   f"data dir {tmp_path / 'nope'}", "does not exist", "--data-dir")  # fmt: skip
    assert not (tmp_path / "nope").exists()


def test_token_of_a_known_fleet_and_create_for_a_new_one(fleet_ran_here: Path) -> None:
    secret = credentials.read_secret(credentials.local_secret_path(fleet_ran_here, "demo"))
    known = fleetflow("token", "demo", "truck-7", "--data-dir", fleet_ran_here)
    assert known.stdout.strip() == credentials.device_token(secret, "demo", "truck-7")
    created = fleetflow("token", "new-fleet", "truck-7", "--create", "--data-dir", fleet_ran_here)
    assert created.returncode == 0 and created.stdout.strip(), created.stderr
    again = fleetflow("token", "new-fleet", "truck-7", "--data-dir", fleet_ran_here)
    assert again.stdout == created.stdout


@pytest.mark.parametrize(
    "argv",
    [("command", "send", "demo", "pump-1", "set"), ("command", "list", "demo"), ("command", "show", "demo", "x"),
     ("status",), ("query", "demo", "--commands")],
    ids=lambda a: " ".join(a[:2]),
)  # fmt: skip
def test_commands_that_need_the_platform_say_it_is_not_running(fleet_ran_here: Path, argv: tuple[str, ...]) -> None:
    one_line_error(fleetflow(*argv, "--data-dir", fleet_ran_here), 1,
                   "not running with data dir", "fleetflow up")  # fmt: skip


@pytest.mark.parametrize(
    "argv", [("command", "list", "demo"), ("status",), ("query", "demo", "--commands")], ids=lambda a: a[0]
)
def test_unreachable_nats_is_one_line(killed_platform: Path, argv: tuple[str, ...]) -> None:
    one_line_error(fleetflow(*argv, "--data-dir", killed_platform), 1, "does not answer", "fleetflow status")


def test_a_mistyped_fleet_in_command_names_the_running_ones(killed_platform: Path) -> None:
    for argv in (("send", "dmeo", "pump-1", "set"), ("list", "dmeo"), ("show", "dmeo", "x")):
        one_line_error(fleetflow("command", *argv, "--data-dir", killed_platform), 2,
                       "no fleet 'dmeo' runs with data dir", "running: demo")  # fmt: skip


def test_query_of_a_data_dir_where_nothing_ran(tmp_path: Path) -> None:
    one_line_error(fleetflow("query", "demo", "truck-7", "--data-dir", tmp_path), 2, "no pipeline has run")
    one_line_error(fleetflow("query", "demo", "--data-dir", tmp_path), 2, "give FLEET DEVICE", "--aggregates")
    one_line_error(fleetflow("query", "demo", "d", "--since", "yesterday", "--data-dir", tmp_path), 2,
                   "--since 'yesterday'", "RFC 3339")  # fmt: skip


def test_operator_without_a_kubeconfig(tmp_path: Path) -> None:
    env = {"KUBECONFIG": str(tmp_path / "missing"), "HOME": str(tmp_path), "KUBERNETES_SERVICE_HOST": ""}
    one_line_error(fleetflow("operator", env=env), 1, "no Kubernetes cluster", "KUBECONFIG")


def test_simulate_refuses_a_url_of_the_wrong_form_and_names_the_endpoint_to_use(killed_platform: Path) -> None:
    grpc = json.loads((killed_platform / "endpoints.json").read_text())["fleets"]["demo"]["grpc"]
    line = one_line_error(fleetflow("simulate", "--fleet", "demo", "--protocol", "grpc", "--url", "http://x:1",
                                    "--data-dir", killed_platform), 2, "--protocol grpc takes HOST:PORT")  # fmt: skip
    assert f"grpc endpoint is {grpc}" in line


@pytest.mark.parametrize("protocol", ["http", "grpc", "mqtt"])
def test_simulate_against_nothing_fails_fast(killed_platform: Path, protocol: str) -> None:
    started = time.monotonic()
    result = fleetflow("simulate", "--fleet", "demo", "--protocol", protocol, "--duration", "30",
                       "--data-dir", killed_platform)  # fmt: skip
    one_line_error(result, 1, f"no fleetflow {protocol} gateway at")
    assert time.monotonic() - started < 15, "it should fail before the 30 s run, not after"


def test_simulate_without_a_url_or_a_running_platform(fleet_ran_here: Path) -> None:
    one_line_error(fleetflow("simulate", "--fleet", "demo", "--data-dir", fleet_ran_here), 2, "give --url")


def test_a_bad_option_value_is_a_usage_error() -> None:
    result = fleetflow("simulate", "--fleet", "demo", "--devices", "0")
    assert result.returncode == 2 and "--devices: '0' must be 1 or more" in result.stderr
    assert "Traceback" not in result.stderr
